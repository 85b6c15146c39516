"""HTTP basic authentication for the REST API, against the broker's own SASL credentials.

A request's `Authorization: Basic user:password` is checked by logging in to a SASL listener of the
broker with those credentials (librdkafka, the configured mechanism): the registry keeps no password
store of its own, and a user the broker knows (SCRAM credentials, `sasl.credentials.file`) is a user
here, with the same principal `User:<name>`. Outcomes are cached for `ttl` seconds (keyed by a SHA-256
of the credentials); a refusal is cached too, so a flood of bad logins costs one broker login per
distinct credential and period.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import threading
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient


class BasicAuth:
    def __init__(self, bootstrap: str, mechanism: str, client_config: dict[str, str], ttl: float = 300.0,
                 login_timeout: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.mechanism = mechanism
        self.client_config = dict(client_config)
        self.ttl = ttl
        self.login_timeout = login_timeout
        self._cache: dict[str, tuple[bool, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def principal(self, header: str | None) -> str | None:
        """`User:<name>` for valid credentials in an Authorization header, else None."""
        if not header or not header.startswith("Basic "):
            return None
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep or not user:
            return None
        key = hashlib.sha256(f"{user}\0{password}".encode()).hexdigest()
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one broker login per credential at a time
            cached = self._cache.get(key)
            if cached is None or cached[1] < time.monotonic():
                ok = await asyncio.to_thread(self._login, user, password)
                if len(self._cache) > 10000:
                    self._cache.clear()
                self._cache[key] = (ok, time.monotonic() + (self.ttl if ok else min(self.ttl, 5.0)))
                cached = self._cache[key]
        self._locks.pop(key, None)
        return f"User:{user}" if cached[0] else None

    def _login(self, user: str, password: str) -> bool:
        failed = threading.Event()

        def on_error(err: KafkaError) -> None:
            if err.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
                failed.set()

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                             **self.client_config, "sasl.mechanism": self.mechanism, "sasl.username": user,
                             "sasl.password": password, "error_cb": on_error, "client.id": "strata-registry-auth"})
        deadline = time.monotonic() + self.login_timeout
        while time.monotonic() < deadline and not failed.is_set():
            try:
                admin.list_topics(timeout=0.2)
                return True
            except KafkaException:
                admin.poll(0.05)
        return False
