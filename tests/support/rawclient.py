"""A minimal blocking Kafka connection for tests that need exact requests (codecs from kafka.protocol)."""

from __future__ import annotations

import socket
import struct
from typing import Any


class RawConnection:
    def __init__(self, bootstrap: str, timeout: float = 15.0) -> None:
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self._correlation = 0

    def request(self, request: Any) -> Any:
        self._correlation += 1
        request.with_header(correlation_id=self._correlation, client_id="raw-test")
        self.sock.sendall(bytes(request.encode(header=True, framed=True)))
        (size,) = struct.unpack(">i", self._read(4))
        payload = self._read(size)
        response_class = request.header.get_response_class()
        response = response_class.decode(payload, header=True)
        assert response.header.correlation_id == self._correlation
        return response

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by broker")
            buf += chunk
        return buf

    def close(self) -> None:
        self.sock.close()
