"""A loopback TCP proxy that counts the Kafka requests passing through it, by api key: requests
counted on the wire in front of a broker (logins included), not inside the client that sends them."""

from __future__ import annotations

import collections
import socket
import struct
import threading


class CountingProxy:
    """A loopback TCP proxy in front of the broker that counts Kafka request frames by api key."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.counts: collections.Counter[int] = collections.Counter()
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _requests(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                head = _read_exact(src, 4)
                if head is None:
                    break
                (size,) = struct.unpack(">i", head)
                body = _read_exact(src, size)
                if body is None:
                    break
                with self._lock:
                    self.counts[struct.unpack(">h", body[:2])[0]] += 1
                dst.sendall(head + body)
        except OSError:
            pass
        _close(src, dst)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        _close(src, dst)


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


class RefusingListener:
    """A port that accepts connections and closes them at once (a broker that is down but whose
    address still answers), counting the attempts."""

    def __init__(self) -> None:
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._listener.close()
