"""Talks to brokers over the Kafka admin API only (confluent-kafka's AdminClient; kafka-python for
ApiVersions and the snapshot's Metadata and DescribeConfigs). Never imports the broker's code.

`Admin` is synchronous and blocking. Handlers use it through a `Session` (`session_for`): one per
broker address and identity, shared by every handler, holding one long-lived authenticated
AdminClient, running its blocking calls on a dedicated bounded thread pool (`ADMIN_WORKERS`), and
backing off (failing fast, without touching the network) after the broker could not be reached.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

TIMEOUT = float(os.environ.get("STRATA_OPERATOR_BROKER_TIMEOUT", "10"))  # seconds per admin call
# Threads for blocking admin calls, shared by all sessions: at most this many calls wait on brokers at once.
ADMIN_WORKERS = int(os.environ.get("STRATA_OPERATOR_ADMIN_WORKERS", "8"))
# After a broker could not be reached, calls through its session fail fast for 1, 2, 4... seconds, up to this.
BACKOFF_MAX = float(os.environ.get("STRATA_OPERATOR_ADMIN_BACKOFF_MAX", "16"))
API_CREATE_ACLS = 30
API_ALTER_USER_SCRAM_CREDENTIALS = 51
SECURITY_DISABLED = KafkaError.SECURITY_DISABLED  # a broker without an authorizer answers ACL calls so

# The operator's own Kafka identity, used with every broker whose first listener authenticates
# (an EventBroker listener with `authentication: scram-sha-512`); brokers without one get PLAINTEXT.
# The operator's principal is User:<username>: a managed broker gets it in super.users and in its
# credentials file (the Secret <name>-credentials); an external broker must be told by its admin.
KAFKA_SECURITY_PROTOCOL = os.environ.get("STRATA_OPERATOR_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
KAFKA_SASL_MECHANISM = os.environ.get("STRATA_OPERATOR_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
KAFKA_USERNAME = os.environ.get("STRATA_OPERATOR_KAFKA_SASL_USERNAME", "strata-operator")
KAFKA_PASSWORD = os.environ.get("STRATA_OPERATOR_KAFKA_SASL_PASSWORD", "")
KAFKA_SSL_CA_LOCATION = os.environ.get("STRATA_OPERATOR_KAFKA_SSL_CA_LOCATION", "")


class BrokerUnavailable(Exception):
    """The broker cannot be reached (retry with backoff)."""


class BrokerRejected(Exception):
    """The broker answered with an error that retrying will not fix as is (e.g. an invalid config)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class NoCredentials(BrokerRejected):
    """The broker wants SASL but the operator has no password configured."""


def operator_principal() -> str:
    return f"User:{KAFKA_USERNAME}"


def ca_file(pem: str) -> str:
    """A file holding this CA (PEM), for both client libraries; one per distinct CA, kept for the
    process' life (a renewed CA gets a new file)."""
    digest = hashlib.sha256(pem.encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"strata-operator-ca-{os.getuid()}-{digest}.pem")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(pem)
        os.replace(tmp, path)
    return path


def client_security(authenticated: bool, tls: bool = False, ca_pem: str | None = None) -> dict[str, str]:
    """librdkafka settings for the operator's admin connection to a broker's first listener: PLAINTEXT
    when it neither authenticates nor encrypts; with `tls`, SSL or SASL_SSL verified against `ca_pem`
    (the EventBroker's CA), else STRATA_OPERATOR_KAFKA_SSL_CA_LOCATION."""
    out: dict[str, str] = {}
    if authenticated:
        if not KAFKA_PASSWORD:
            raise NoCredentials("the broker requires SASL but the operator has no Kafka admin password "
                                "(set STRATA_OPERATOR_KAFKA_SASL_PASSWORD; the chart does it from a Secret)")
        out = {"security.protocol": KAFKA_SECURITY_PROTOCOL, "sasl.mechanism": KAFKA_SASL_MECHANISM,
               "sasl.username": KAFKA_USERNAME, "sasl.password": KAFKA_PASSWORD}
    if tls:
        out["security.protocol"] = "SASL_SSL" if authenticated else "SSL"
    if tls and ca_pem:
        out["ssl.ca.location"] = ca_file(ca_pem)
    elif (tls or authenticated) and KAFKA_SSL_CA_LOCATION:
        out["ssl.ca.location"] = KAFKA_SSL_CA_LOCATION
    return out


@dataclass
class TopicState:
    name: str
    topic_id: str
    partitions: int
    dynamic_configs: dict[str, str] = field(default_factory=dict)
    all_configs: dict[str, str] = field(default_factory=dict)


@dataclass
class Snapshot:
    """What a broker has, read in a few requests: every topic (partitions, id, and the configs named
    by `keys`), every ACL by principal, every user with a SCRAM credential. `taken` is when the read
    began (monotonic)."""

    taken: float
    topics: dict[str, TopicState]
    acls: dict[str, set[AclBinding]] | None  # None: the broker has no authorizer
    scram_users: set[str] | None  # None: the broker cannot list them
    keys: frozenset[str] = frozenset()  # the topic configs read: a TopicState here has no others


def _topic_state(name: str, desc: Any, configs: dict[str, Any]) -> TopicState:
    dynamic = {k: e.value for k, e in configs.items()
               if e.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value and e.value is not None}
    return TopicState(name=name, topic_id=str(desc.topic_id), partitions=len(desc.partitions),
                      dynamic_configs=dynamic,
                      all_configs={k: e.value for k, e in configs.items() if e.value is not None})


def kafka_uuid(value: Any) -> str:
    """A topic id as Kafka (and confluent-kafka) writes it: base64 of its 16 bytes, unpadded; from
    kafka-python's UUID text."""
    return base64.b64encode(uuid.UUID(str(value)).bytes).decode().rstrip("=")


DYNAMIC_TOPIC_CONFIG = "DYNAMIC_TOPIC_CONFIG"  # kafka-python's name of ConfigSource.DYNAMIC_TOPIC_CONFIG


def _snapshot_configs(found: dict[str, dict[str, Any]], shared: dict[tuple[tuple[str, str], ...], dict[str, str]],
                      ) -> tuple[dict[str, str], dict[str, str]]:
    """(dynamic configs, effective values of the others) of one topic from kafka-python's
    DescribeConfigs entries. The second is the same for most topics (the broker's defaults): one dict
    per distinct content (`shared`), not one per topic."""
    dynamic: dict[str, str] = {}
    other: dict[str, str] = {}
    for key, entry in found.items():
        value = entry.get("value")
        if value is None:
            continue
        (dynamic if entry.get("config_source") == DYNAMIC_TOPIC_CONFIG else other)[key] = value
    frozen = tuple(sorted(other.items()))
    return dynamic, shared.setdefault(frozen, other)


def _translate(exc: BaseException) -> Exception:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        err: KafkaError = exc.args[0]
        transport = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
                     KafkaError._RESOLVE, KafkaError.NETWORK_EXCEPTION, KafkaError.REQUEST_TIMED_OUT}
        if err.code() in transport:
            return BrokerUnavailable(err.str())
        return BrokerRejected(f"{err.name()}: {err.str()}", err.code())
    if isinstance(exc, TimeoutError | confluent_kafka.KafkaException):
        return BrokerUnavailable(str(exc))
    return exc


class Admin:
    """One admin connection to one broker cluster."""

    def __init__(self, bootstrap: str, extra: dict[str, str] | None = None) -> None:
        self.bootstrap = bootstrap
        self.extra = dict(extra or {})
        self._kp: Any = None  # kafka-python's admin client, made on first use (_kafka_python)
        self._kp_lock = threading.Lock()
        self.client = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000,
                                   "socket.connection.setup.timeout.ms": 5000, "client.id": "strata-operator",
                                   # a broker that is down: a few connection attempts per call, not 10 a second
                                   "reconnect.backoff.ms": 500, "reconnect.backoff.max.ms": 10000,
                                   **self.extra})

    def _wait(self, futures: dict[Any, Any]) -> dict[Any, Any]:
        out = {}
        for key, fut in futures.items():
            try:
                out[key] = fut.result(timeout=TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - translated for the caller
                raise _translate(exc) from exc
        return out

    # -- cluster -------------------------------------------------------------------------

    def ping(self) -> int:
        """Number of brokers in the cluster (fenced ones left out); raises BrokerUnavailable. Through
        kafka-python's DescribeCluster (a Metadata request naming no topic on a broker without it): not
        librdkafka's Metadata of every topic, which it would decode and keep in its cache (about 1.5 KiB
        a topic, every EventBroker status refresh)."""
        from kafka.errors import KafkaError as KpError

        try:
            brokers = self._kafka_python().describe_cluster()["brokers"]
        except KpError as exc:
            self.close()
            raise BrokerUnavailable(str(exc)) from exc
        return sum(1 for broker in brokers if not broker.get("is_fenced"))

    def _kafka_python(self) -> Any:
        """This connection's kafka-python admin client (one connection, one login), made on first use
        and kept until close(): ApiVersions, and the snapshot's DescribeConfigs, which confluent-kafka
        cannot ask without synonyms or for some keys only."""
        from kafka.admin import KafkaAdminClient
        from kafka.errors import KafkaError as KpError

        with self._kp_lock:
            if self._kp is None:
                try:
                    # kafka-python 3 keeps retrying the bootstrap for 30 s unless told otherwise: an
                    # unreachable broker must not hold a handler (or the operator's shutdown) that long.
                    self._kp = KafkaAdminClient(bootstrap_servers=self.bootstrap,
                                                request_timeout_ms=int(TIMEOUT * 1000),
                                                bootstrap_timeout_ms=int(TIMEOUT * 1000),
                                                **_kafka_python_security(self.extra))
                except KpError as exc:
                    raise BrokerUnavailable(str(exc)) from exc
            return self._kp

    def close(self) -> None:
        """Close the kafka-python client (confluent-kafka's closes when it is collected)."""
        with self._kp_lock:
            kp, self._kp = self._kp, None
        if kp is not None:
            try:
                kp.close()
            except Exception:  # noqa: BLE001,S110 - closing a client of a failed connection
                pass

    def api_versions(self) -> dict[int, tuple[int, int]]:
        """The broker's ApiVersions table (api key -> (min, max)), through kafka-python."""
        from kafka.errors import KafkaError as KpError

        try:
            return {int(k): (int(v[0]), int(v[1])) for k, v in self._kafka_python().api_versions().items()}
        except KpError as exc:
            self.close()
            raise BrokerUnavailable(str(exc)) from exc

    def topic_configs(self, names: list[str], keys: frozenset[str]) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
        """topic -> (dynamic configs, effective values of the others), of `keys` only, in one
        DescribeConfigs without synonyms or documentation (kafka-python: about a tenth of what
        confluent-kafka's describe_configs decodes into objects, every config with its synonyms). A
        topic the broker answered with an error (deleted meanwhile) is left out."""
        from kafka.admin import ConfigResource as KpConfigResource
        from kafka.admin import ConfigResourceType
        from kafka.errors import KafkaError as KpError

        if not names or not keys:
            return {name: ({}, {}) for name in names}
        wanted = dict.fromkeys(sorted(keys))
        try:
            found = self._kafka_python().describe_configs(
                [KpConfigResource(ConfigResourceType.TOPIC, n, wanted) for n in names],
                include_synonyms=False, config_filter="all").get("topic", {})
        except KpError as exc:
            self.close()
            raise BrokerUnavailable(str(exc)) from exc
        shared: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        return {name: _snapshot_configs(entries, shared) for name, entries in found.items() if entries}

    def supports(self, api_key: int) -> bool:
        return api_key in self.api_versions()

    # -- topics --------------------------------------------------------------------------

    def describe_topic(self, name: str) -> TopicState | None:
        """One topic's partitions, id and configs (None when it does not exist): DescribeTopics (a
        missing topic answers UNKNOWN_TOPIC_OR_PART) and DescribeConfigs. Not a Metadata request for the
        topic: librdkafka keeps a handle and a cache entry of every topic named in one (about 5 KiB
        each, for the life of the client: 25 MiB at 5,000 Topics)."""
        try:
            (desc,) = self._wait(self.client.describe_topics(TopicCollection([name]),
                                                             request_timeout=TIMEOUT)).values()
        except BrokerRejected as exc:
            if exc.code == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return None
            raise
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        try:
            (configs,) = self._wait(self.client.describe_configs([resource], request_timeout=TIMEOUT)).values()
        except BrokerRejected as exc:
            if exc.code == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return None  # deleted in between
            raise
        return _topic_state(name, desc, configs)

    def snapshot(self, keys: frozenset[str] = frozenset()) -> Snapshot:
        """Every topic, ACL and SCRAM user of the cluster in four requests: Metadata of every topic
        (partitions and ids) and one DescribeConfigs of every topic, for the config `keys` only
        (none without keys), through kafka-python (plain dicts: confluent-kafka makes a Future per
        topic and an object per config and synonym); DescribeAcls and DescribeUserScramCredentials.
        A topic that vanishes between them is left out."""
        from kafka.errors import KafkaError as KpError

        taken = time.monotonic()
        try:
            found = [t for t in self._kafka_python().describe_topics() if not t.get("error_code") and t.get("name")]
        except KpError as exc:
            self.close()
            raise BrokerUnavailable(str(exc)) from exc
        configs = self.topic_configs([t["name"] for t in found], keys)
        topics = {t["name"]: TopicState(name=t["name"], topic_id=kafka_uuid(t["topic_id"]),
                                        partitions=len(t["partitions"]), dynamic_configs=configs[t["name"]][0],
                                        all_configs=configs[t["name"]][1])
                  for t in found if t["name"] in configs}
        acls: dict[str, set[AclBinding]] | None = {}
        flt = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                               AclOperation.ANY, AclPermissionType.ANY)
        try:
            for found in self.client.describe_acls(flt).result(timeout=TIMEOUT):
                acls.setdefault(found.principal, set()).add(found)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001
            err = _translate(exc)
            if not (isinstance(err, BrokerRejected) and err.code == SECURITY_DISABLED):
                raise err from exc
            acls = None
        users: set[str] | None
        try:
            users = set(self.client.describe_user_scram_credentials().result(timeout=TIMEOUT))
        except Exception as exc:  # noqa: BLE001
            err = _translate(exc)
            if isinstance(err, BrokerUnavailable):
                raise err from exc
            users = None
        return Snapshot(taken=taken, topics=topics, acls=acls, scram_users=users, keys=keys)

    def create_topic(self, name: str, partitions: int, configs: dict[str, str]) -> None:
        try:
            self._wait(self.client.create_topics([NewTopic(name, partitions, 1, config=configs)],
                                                 request_timeout=TIMEOUT))
        except BrokerRejected as exc:
            if exc.code != KafkaError.TOPIC_ALREADY_EXISTS:
                raise

    def grow_partitions(self, name: str, partitions: int) -> None:
        self._wait(self.client.create_partitions([NewPartitions(name, partitions)], request_timeout=TIMEOUT))

    def alter_configs(self, name: str, set_: dict[str, str], delete: Iterable[str] = ()) -> None:
        entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in set_.items()]
        entries += [ConfigEntry(k, None, incremental_operation=AlterConfigOpType.DELETE) for k in delete]
        if not entries:
            return
        resource = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=entries)
        self._wait(self.client.incremental_alter_configs([resource]))

    def delete_topic(self, name: str) -> bool:
        """Delete; False when it did not exist."""
        try:
            self._wait(self.client.delete_topics([name], request_timeout=TIMEOUT))
        except BrokerRejected as exc:
            if exc.code == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return False
            raise
        return True

    # -- ACLs ----------------------------------------------------------------------------

    def acls_for(self, principal: str) -> list[AclBinding]:
        flt = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, principal, None,
                               AclOperation.ANY, AclPermissionType.ANY)
        try:
            return list(self.client.describe_acls(flt).result(timeout=TIMEOUT))
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc

    def sync_acls(self, principal: str, wanted: list[tuple[str, str, str]]) -> tuple[int, int]:
        """Make `principal`'s ALLOW ACLs exactly `wanted` [(resource type, name, operation)];
        returns (created, deleted)."""
        want = {binding(principal, *w) for w in wanted}
        have = set(self.acls_for(principal))
        create = sorted(want - have, key=str)
        delete = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host,
                                   b.operation, b.permission_type) for b in have - want]
        if create:
            self._wait(self.client.create_acls(create))
        if delete:
            self._wait(self.client.delete_acls(delete))
        return len(create), len(delete)

    def delete_acls_of(self, principal: str) -> None:
        flt = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, principal, None,
                               AclOperation.ANY, AclPermissionType.ANY)
        self._wait(self.client.delete_acls([flt]))

    def upsert_scram(self, user: str, password: str, mechanism: str = "SCRAM-SHA-512") -> None:
        from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

        mech = ScramMechanism.SCRAM_SHA_512 if mechanism.endswith("512") else ScramMechanism.SCRAM_SHA_256
        upsert = UserScramCredentialUpsertion(user, ScramCredentialInfo(mech, 8192), password.encode())
        self._wait(self.client.alter_user_scram_credentials([upsert]))

    def delete_scram(self, user: str, mechanism: str = "SCRAM-SHA-512") -> bool:
        """Remove a user's admin-API credential; False when it had none."""
        from confluent_kafka.admin import ScramMechanism, UserScramCredentialDeletion

        mech = ScramMechanism.SCRAM_SHA_512 if mechanism.endswith("512") else ScramMechanism.SCRAM_SHA_256
        try:
            self._wait(self.client.alter_user_scram_credentials([UserScramCredentialDeletion(user, mech)]))
        except BrokerRejected as exc:
            if exc.code == KafkaError.RESOURCE_NOT_FOUND:
                return False
            raise
        return True


def binding(principal: str, restype: str, name: str, operation: str) -> AclBinding:
    """The literal ALLOW ACL the operator grants `principal` on one resource, as the broker reports it."""
    return AclBinding(ResourceType[restype.upper()], name, ResourcePatternType.LITERAL, principal, "*",
                      AclOperation[operation.upper()], AclPermissionType.ALLOW)


def _kafka_python_security(extra: dict[str, str]) -> dict[str, str]:
    out = {}
    if "security.protocol" in extra:
        out["security_protocol"] = extra["security.protocol"]
    if "sasl.mechanism" in extra:
        out["sasl_mechanism"] = extra["sasl.mechanism"]
    if "sasl.username" in extra:
        out["sasl_plain_username"] = extra["sasl.username"]
    if "sasl.password" in extra:
        out["sasl_plain_password"] = extra["sasl.password"]
    if "ssl.ca.location" in extra:
        out["ssl_cafile"] = extra["ssl.ca.location"]
    return out


# -- sessions ------------------------------------------------------------------------------

_executor: ThreadPoolExecutor | None = None
_sessions: dict[tuple[str, tuple[tuple[str, str], ...]], Session] = {}
_sessions_lock = threading.Lock()


def executor() -> ThreadPoolExecutor:
    """The bounded pool every blocking admin call runs on (not asyncio's default pool)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=ADMIN_WORKERS, thread_name_prefix="strata-admin")
    return _executor


class Session:
    """One broker's admin session: a single Admin (confluent-kafka's AdminClient, two connections, one
    SCRAM login each, and kafka-python's client, one more) created on first use and kept, its
    ApiVersions table read once per connection, and a backoff
    after a transport failure during which calls raise BrokerUnavailable at once. After the backoff
    the next call drops the old client and connects anew."""

    def __init__(self, bootstrap: str, extra: dict[str, str]) -> None:
        self.bootstrap = bootstrap
        self.extra = dict(extra)
        self._admin: Admin | None = None
        self._versions: dict[int, tuple[int, int]] | None = None
        self._lock = threading.Lock()
        self._versions_lock = threading.Lock()
        self.failures = 0
        self.retry_at = 0.0
        self.last_error = ""
        self.connects = 0
        self.snap: Snapshot | None = None
        self.keys: frozenset[str] = frozenset()  # the topic configs the last snapshot was asked for
        self.no_authorizer = False  # CreateAcls answered SECURITY_DISABLED on this connection
        self._refreshing: asyncio.Future[Any] | None = None

    def _client(self) -> Admin:
        with self._lock:
            now = time.monotonic()
            if self.failures and now < self.retry_at:
                raise BrokerUnavailable(f"{self.last_error} (retrying in {self.retry_at - now:.0f}s)")
            if self._admin is None:
                self._admin = Admin(self.bootstrap, self.extra)
                self._versions = None
                self.no_authorizer = False
                self.connects += 1
            return self._admin

    def _failed(self, admin: Admin, exc: BrokerUnavailable) -> None:
        with self._lock:
            if self._admin is admin:  # one failure per connection counts, not one per waiting call
                self._admin = None
                admin.close()
                self._versions = None
                self.failures += 1
                self.retry_at = time.monotonic() + min(BACKOFF_MAX, 2.0 ** (self.failures - 1))
                self.last_error = str(exc)

    def _succeeded(self) -> None:
        if self.failures:
            with self._lock:
                self.failures = 0

    def call_sync(self, method: str, *args: Any) -> Any:
        """Admin.<method>(*args) on this session's client (blocking; ApiVersions is cached)."""
        admin = self._client()
        try:
            if method in ("api_versions", "supports"):
                with self._versions_lock:  # one ApiVersions read (a kafka-python client) per connection
                    if self._versions is None:
                        self._versions = admin.api_versions()
                    versions = self._versions
                result: Any = versions if method == "api_versions" else args[0] in versions
            else:
                result = getattr(admin, method)(*args)
        except BrokerUnavailable as exc:
            self._failed(admin, exc)
            raise
        self._succeeded()
        return result

    async def call(self, method: str, *args: Any) -> Any:
        """Admin.<method>(*args) on the bounded admin pool."""
        return await asyncio.get_running_loop().run_in_executor(executor(), self.call_sync, method, *args)

    async def snapshot(self, max_age: float, keys: frozenset[str] | None = None) -> Snapshot:
        """The broker's state at most `max_age` seconds old, with at least the topic configs `keys`
        (None: those the last read asked for): one read (Admin.snapshot) shared by every caller,
        whatever their number; fresher reads made meanwhile are folded in (remember_*)."""
        keys = self.keys if keys is None else keys
        if self.snap is not None and time.monotonic() - self.snap.taken < max_age and keys <= self.snap.keys:
            return self.snap
        self.keys = keys
        while True:
            if self._refreshing is None or self._refreshing.done():
                self._refreshing = asyncio.ensure_future(self._refresh(keys))
            snap = await asyncio.shield(self._refreshing)
            if keys <= snap.keys:  # else a read begun before with fewer keys: read again
                return snap

    async def _refresh(self, keys: frozenset[str]) -> Snapshot:
        self.snap = await self.call("snapshot", keys)
        return self.snap

    def remember_topic(self, name: str, state: TopicState | None) -> None:
        """A fresh read (or the result of a change) of one topic, into the snapshot."""
        if self.snap is not None:
            if state is None:
                self.snap.topics.pop(name, None)
            else:
                self.snap.topics[name] = state

    def remember_acls(self, principal: str, wanted: list[tuple[str, str, str]] | None) -> None:
        """`principal` now has exactly `wanted` (None: none at all)."""
        if self.snap is not None and self.snap.acls is not None:
            self.snap.acls[principal] = {binding(principal, *w) for w in wanted or []}

    def remember_user(self, user: str, present: bool) -> None:
        if self.snap is not None and self.snap.scram_users is not None:
            (self.snap.scram_users.add if present else self.snap.scram_users.discard)(user)

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_") or not hasattr(Admin, method):
            raise AttributeError(method)

        async def bound(*args: Any) -> Any:
            return await self.call(method, *args)
        return bound


def session_for(bootstrap: str, extra: dict[str, str] | None = None) -> Session:
    """The shared session for this broker address and these client settings (made on first use)."""
    key = (bootstrap, tuple(sorted((extra or {}).items())))
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            session = _sessions[key] = Session(bootstrap, extra or {})
        return session

