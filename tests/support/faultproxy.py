"""The one proxy of the tests and benchmarks: a loopback TCP proxy in front of a broker that reads
the Kafka request frames passing through it, counts them by api key, and can inject a fault.

* Counting: requests counted on the wire in front of a broker (logins included), not inside the
  client that sends them (`counts`, `total()`, `connections`).
* Fault injection: `drop_api_key` set, the proxy cuts the connection instead of forwarding a response
  to that api key, with `probability`, at most `max_drops` times (`drops`). The broker has already
  applied the request when its response is dropped, so the client's retry is a true duplicate:
  exactly what idempotent producers must survive. Responses are matched to requests in order, so
  acks=0 produce requests (which get no response) must not pass a dropping proxy.

`RefusingListener` is the other fault: an address that accepts connections and closes them at once.
"""

from __future__ import annotations

import collections
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


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


class KafkaProxy:
    """A proxy on 127.0.0.1:`port` to 127.0.0.1:`upstream_port`; counts requests, optionally drops responses."""

    def __init__(self, upstream_port: int, drop_api_key: int | None = None, probability: float = 0.0,
                 max_drops: int = 0, seed: int = 1) -> None:
        self.upstream_port = upstream_port
        self.drop_api_key = drop_api_key
        self.probability = probability
        self.max_drops = max_drops
        self.drops = 0
        self.counts: collections.Counter[int] = collections.Counter()
        self.connections = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def total(self) -> int:
        """Requests forwarded so far, all api keys."""
        with self._lock:
            return sum(self.counts.values())

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
            with self._lock:
                self.connections += 1
            in_flight: deque[int] = deque()
            threading.Thread(target=self._requests, args=(client, upstream, in_flight), daemon=True).start()
            responses = self._pipe if self.drop_api_key is None else self._responses
            threading.Thread(target=responses, args=(client, upstream, in_flight), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, in_flight: deque[int]) -> None:
        try:
            while True:
                size = _read_exact(client, 4)
                if size is None:
                    break
                body = _read_exact(client, struct.unpack(">i", size)[0])
                if body is None:
                    break
                (api_key,) = struct.unpack_from(">h", body)
                with self._lock:
                    self.counts[api_key] += 1
                if self.drop_api_key is not None:
                    in_flight.append(api_key)
                upstream.sendall(size + body)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def _pipe(self, client: socket.socket, upstream: socket.socket, _in_flight: deque[int]) -> None:
        try:
            while chunk := upstream.recv(65536):
                client.sendall(chunk)
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
