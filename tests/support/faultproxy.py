"""A loopback TCP proxy that cuts the connection instead of forwarding chosen responses.

The broker has already applied the request when its response is dropped, so the client's
retry is a true duplicate: exactly what idempotent producers must survive.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
from collections import deque


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class ResponseDroppingProxy:
    def __init__(self, upstream_port: int, drop_api_key: int, probability: float, max_drops: int,
                 seed: int = 1) -> None:
        self.upstream_port = upstream_port
        self.drop_api_key = drop_api_key
        self.probability = probability
        self.max_drops = max_drops
        self.drops = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            in_flight: deque[int] = deque()
            threading.Thread(target=self._requests, args=(client, upstream, in_flight), daemon=True).start()
            threading.Thread(target=self._responses, args=(client, upstream, in_flight), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, in_flight: deque[int]) -> None:
        try:
            while True:
                size = _read_exact(client, 4)
                if size is None:
                    break
                body = _read_exact(client, struct.unpack(">i", size)[0])
                if body is None:
                    break
                api_key, _, _ = struct.unpack_from(">hhi", body)
                # acks=0 produce requests get no response; the tests here use acks=all.
                in_flight.append(api_key)
                upstream.sendall(size + body)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def _responses(self, client: socket.socket, upstream: socket.socket, in_flight: deque[int]) -> None:
        try:
            while True:
                size = _read_exact(upstream, 4)
                if size is None:
                    break
                body = _read_exact(upstream, struct.unpack(">i", size)[0])
                if body is None:
                    break
                api_key = in_flight.popleft() if in_flight else -1
                with self._lock:
                    drop = (api_key == self.drop_api_key and self.drops < self.max_drops
                            and self._rng.random() < self.probability)
                    if drop:
                        self.drops += 1
                if drop:
                    break
                client.sendall(size + body)
        except OSError:
            pass
        finally:
            _close(client, upstream)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()
