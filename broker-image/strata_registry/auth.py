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


class SubjectAuthorizer:
    """READ/WRITE on subjects from the broker's topic ACLs: subject `<topic>-value` / `<topic>-key`
    (TopicNameStrategy) is read by whoever may Read (or Write) the topic, written (registered, deleted,
    configured) by whoever may Write it. Other subjects and the global config and mode are the super
    users'. The ACLs are read from the broker (DescribeAcls, as the registry's own principal, which
    needs Describe on the cluster) every `refresh` seconds and evaluated by the broker's own rules
    (`strata_broker.security.acl.Authorizer`)."""

    def __init__(self, bootstrap: str, client_config: dict[str, str], super_users: str,
                 allow_if_no_acl: bool = False, refresh: float = 5.0) -> None:
        from strata_broker.security.acl import Authorizer

        self.bootstrap = bootstrap
        self.client_config = dict(client_config)
        self.super_users = super_users
        self.allow_if_no_acl = allow_if_no_acl
        self.refresh = refresh
        self.authorizer = Authorizer(True, super_users, allow_if_no_acl, None)
        self.loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def _current(self) -> object:
        async with self._lock:
            if time.monotonic() - self.loaded_at > self.refresh:
                self.authorizer = await asyncio.to_thread(self._load)
                self.loaded_at = time.monotonic()
        return self.authorizer

    def _load(self) -> object:
        from confluent_kafka.admin import (
            AclBindingFilter,
            AclOperation,
            AclPermissionType,
            ResourcePatternType,
            ResourceType,
        )
        from strata_broker.security.acl import Acl, Authorizer

        admin = AdminClient({"bootstrap.servers": self.bootstrap, **self.client_config})
        flt = AclBindingFilter(ResourceType.TOPIC, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
                               AclPermissionType.ANY)
        bindings = admin.describe_acls(flt, request_timeout=10).result(15)
        acls = [Acl(2, b.name, 3 if b.resource_pattern_type == ResourcePatternType.LITERAL else 4, b.principal,
                    b.host, int(b.operation.value), int(b.permission_type.value)) for b in bindings]
        fresh = Authorizer(True, self.super_users, self.allow_if_no_acl, None)
        fresh.add(acls)
        return fresh

    async def allowed(self, principal: str, subject: str | None, write: bool) -> bool:
        from strata_broker.security.acl import OP_READ, OP_WRITE, RES_TOPIC

        authorizer = await self._current()
        if principal in authorizer.super_users:  # type: ignore[attr-defined]
            return True
        if subject is None:
            return not write  # global config and mode: super users only
        topic = subject.removesuffix("-value") if subject.endswith("-value") else (
            subject.removesuffix("-key") if subject.endswith("-key") else None)
        if topic is None:
            return False
        ok = authorizer.authorize(principal, "*", OP_WRITE, RES_TOPIC, topic)  # type: ignore[attr-defined]
        if write or ok:
            return bool(ok)
        return bool(authorizer.authorize(principal, "*", OP_READ, RES_TOPIC, topic))  # type: ignore[attr-defined]
