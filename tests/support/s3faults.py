"""A loopback TCP proxy in front of the S3 endpoint that can fail at the HTTP level.

mode "ok" forwards; "error" answers each request with HTTP 503 SlowDown and closes; "hang"
accepts bytes and never answers (the client's timeouts fire).
"""

from __future__ import annotations

import socket
import threading

_SLOW_DOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
              b"Content-Length: 97\r\n\r\n"
              b"<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>injected</Message></Error>\n"
              b"\n\n\n\n\n\n\n\n")


class S3FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "ok"
        self.refused = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode != "ok":
            # Pooled keep-alive connections must feel the outage too.
            for conn in list(self._conns):
                _close(conn)
            self._conns.clear()

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self._conns.append(client)
        upstream: socket.socket | None = None
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    return
                if self.mode == "error":
                    self.refused += 1
                    client.sendall(_SLOW_DOWN)
                    return
                if self.mode == "hang":
                    self.refused += 1
                    continue
                if upstream is None:
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                    threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
                upstream.sendall(data)
        except OSError:
            return
        finally:
            _close(client)
            if upstream is not None:
                _close(upstream)

    def _pump(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(upstream)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
