"""Transaction markers in a cluster: WriteTxnMarkers between brokers (docs/kafka-compatibility.md).

The transaction coordinator of a transactional id is the broker leading its `__transaction_state`
partition; the partitions of a transaction may be led by any broker. When the coordinator ends a
transaction it hands the (producer id, epoch, commit/abort, partitions) to `ClusterMarkers.write`,
which groups the partitions by their leader in the placement and writes the control batches:
through `LocalMarkers` for the partitions this broker leads, through a WriteTxnMarkers request
(api key 27) for the others. Partitions refused (the leader moved, is taking over, or is not
reachable) are tried again, at their new leader, until every marker is durable or the deadline
passes; the coordinator then keeps the transaction prepared and its tick() tries again.

Brokers authenticate to each other with a secret every broker of the cluster reads from the
bucket (`clusters/<cluster>/security/inter-broker.json`, created by the first broker with a
conditional write; clients have no bucket access). A broker's requests carry, as their client
id, `strata-broker-<id>.<HMAC-SHA256(secret, "strata-broker-<id>")>`; the WriteTxnMarkers handler
accepts only those (or a principal granted CLUSTER_ACTION on the cluster while the authorizer is
on) and answers anyone else CLUSTER_AUTHORIZATION_FAILED. The request goes to the peer's
address on the listener `inter.broker.listener.name` names (default: this broker's first PLAINTEXT
or SASL_PLAINTEXT listener, else its first SSL or SASL_SSL one, preferring one that does not require
client certificates; brokers of a cluster share their listener configuration). Over SSL and
SASL_SSL the connection is TLS as a Kafka broker makes it with its own truststore: the peer's
certificate must chain to `ssl.ca.location` (the system's CAs when empty) and, with
`ssl.endpoint.identification.algorithm=https` (the default), name the host the peer advertises on
that listener; the broker presents its own certificate (`ssl.certificate.location`) when that
listener requires client certificates. Over SASL_PLAINTEXT and SASL_SSL the broker first
authenticates as `strata-broker` with a password derived from the same secret, with SCRAM-SHA-512
(or SCRAM-SHA-256, or PLAIN: the first the peer's `sasl.enabled.mechanisms` offers); the receiving
broker knows that user without any credentials file (security/credentials.py `builtin_users`).

Every marker carries the coordinator epoch (groups/txn_cluster.py: the `__transaction_state`
partition's leader epoch when this broker took it over); a partition leader refuses a marker from
an older coordinator epoch than the last it wrote for that producer (TRANSACTION_COORDINATOR_FENCED,
log/producer_state.py), so a coordinator that lost its partition cannot end a transaction its
successor already ended: `ClusterMarkers.write` then gives up (the client finds the new coordinator).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import ssl
import struct
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kafka.net.sasl.scram import ScramClient
from kafka.protocol.producer.transaction import WriteTxnMarkersRequest, WriteTxnMarkersResponse
from kafka.protocol.sasl import (
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)
from strata_contract.layout import security_key
from strata_contract.placement import BrokerAddress

from ..errors import ErrorCode, KafkaProtocolError
from ..groups.offsets import OFFSETS_TOPIC

if TYPE_CHECKING:
    from ..config import BrokerConfig
    from ..groups.offsets import OffsetStore
    from ..log.manager import LogManager
    from ..replica import ReplicaManager
    from ..replica.leadership import Leadership
    from ..security.listeners import Listener
    from ..tier.store import ObjectStore
    from .member import ClusterMember

log = logging.getLogger(__name__)

E = ErrorCode
BROKER_USER = "strata-broker"
_CLIENT_PREFIX = "strata-broker-"
_WRITE_TXN_MARKERS_VERSION = 1
_LEN = struct.Struct(">i")
_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")  # in order of preference
# Errors after which a marker is sent again (to whoever leads the partition then).
# UNKNOWN_TOPIC_OR_PARTITION too: a leader may not have adopted a new topic yet (a topic deleted for
# good is dropped from the markers once this broker's own log manager forgets it).
_RETRIABLE = {E.NOT_LEADER_OR_FOLLOWER, E.LEADER_NOT_AVAILABLE, E.COORDINATOR_NOT_AVAILABLE,
              E.KAFKA_STORAGE_ERROR, E.REQUEST_TIMED_OUT, E.UNKNOWN_TOPIC_OR_PARTITION}


# ---- the cluster's inter-broker secret ------------------------------------------------------------


class InterBrokerAuth:
    """The secret brokers of one cluster share, and the client ids and password derived from it."""

    def __init__(self, secret: bytes = b"") -> None:
        self.secret = secret

    @classmethod
    async def load(cls, store: ObjectStore, prefix: str, cluster: str) -> InterBrokerAuth:
        """Read the cluster's secret from the bucket, creating it if this broker is the first."""
        from ..tier.store import PreconditionFailed

        key = security_key(prefix, cluster, "inter-broker")
        for _ in range(5):
            raw = await store.get_or_none(key)
            if raw is not None:
                return cls(bytes.fromhex(json.loads(raw)["secret"]))
            body = json.dumps({"secret": os.urandom(32).hex()}).encode()
            try:
                await store.put_if(key, body, None)
            except PreconditionFailed:
                continue  # another broker created it first: read theirs
            return cls(bytes.fromhex(json.loads(body)["secret"]))
        raise RuntimeError("cannot read or create the inter-broker secret in the bucket")

    def _mac(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()

    def client_id(self, node_id: int) -> str:
        name = f"{_CLIENT_PREFIX}{node_id}"
        return f"{name}.{self._mac(name)}"

    def password(self) -> str:
        """The SASL password of `strata-broker` (never the secret itself)."""
        return self._mac("sasl-plain")

    def is_broker(self, client_id: str | None) -> bool:
        """Whether a request's client id is one a broker of this cluster made."""
        if not self.secret or not client_id or not client_id.startswith(_CLIENT_PREFIX):
            return False
        name, _, mac = client_id.partition(".")
        return hmac.compare_digest(mac, self._mac(name))

    def check_plain(self, user: str, password: str) -> bool:
        return bool(self.secret) and user == BROKER_USER and hmac.compare_digest(password, self.password())

    def users(self) -> dict[str, str]:
        """The brokers' own SASL user and password, for the credential store."""
        return {BROKER_USER: self.password()} if self.secret else {}


# ---- requests to other brokers ------------------------------------------------------------------------


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.lock = asyncio.Lock()
        self.correlation = 0

    async def call(self, request: Any, version: int, response_class: Any, client_id: str) -> Any:
        async with self.lock:
            self.correlation += 1
            request.API_VERSION = version
            request.with_header(correlation_id=self.correlation, client_id=client_id)
            self.writer.write(request.encode(version=version, header=True, framed=True))
            await self.writer.drain()
            (size,) = _LEN.unpack(await self.reader.readexactly(4))
            frame = await self.reader.readexactly(size)
            return response_class.decode(frame, version=version, header=True)

    def close(self) -> None:
        self.writer.close()


class ClientTls:
    """How this broker opens TLS to a peer's SSL or SASL_SSL listener, as a Kafka broker does with its
    own truststore and keystore: the peer's certificate must chain to `ssl.ca.location` (the system's
    CAs when empty) and, with `ssl.endpoint.identification.algorithm=https`, name the peer's host;
    this broker's certificate is presented when the listener requires client certificates. A new
    context per connection: renewed certificate files are picked up as the listeners pick them up."""

    def __init__(self, config: BrokerConfig, listener: Listener) -> None:
        self.ca_location: str = config["ssl.ca.location"]
        self.check_hostname = config["ssl.endpoint.identification.algorithm"] == "https"
        self.certificate: tuple[str, str | None, str | None] | None = None
        if requires_certificates(config, listener) and config["ssl.certificate.location"]:
            self.certificate = (config["ssl.certificate.location"], config["ssl.key.location"] or None,
                                config["ssl.key.password"] or None)

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_location or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = self.check_hostname
        if self.certificate is not None:
            context.load_cert_chain(*self.certificate)
        return context


def requires_certificates(config: BrokerConfig, listener: Listener) -> bool:
    """Whether a TLS listener requires client certificates (ssl.client.auth, or its own in
    ssl.client.auth.listener.map; brokers of a cluster share their listener configuration)."""
    from ..config import parse_client_auth_map

    modes = parse_client_auth_map(config["ssl.client.auth.listener.map"])
    return listener.tls and modes.get(listener.name, config["ssl.client.auth"]) == "required"


def inter_broker_listener(listeners: list[Listener], listener_name: str = "",
                          config: BrokerConfig | None = None) -> Listener | None:
    """The listener inter-broker requests use: the one named, else the first PLAINTEXT or
    SASL_PLAINTEXT listener, else the first SSL or SASL_SSL one (one that does not require client
    certificates first, when `config` tells)."""
    if listener_name:
        return next((lst for lst in listeners if lst.name == listener_name), None)
    plain = [lst for lst in listeners if not lst.tls]
    tls = sorted((lst for lst in listeners if lst.tls),
                 key=lambda lst: config is not None and requires_certificates(config, lst))
    return (plain or tls or [None])[0]


class InterBrokerClient:
    """One connection per peer broker (made on first use, dropped on any error)."""

    def __init__(self, node_id: int, auth: InterBrokerAuth, listeners: list[Listener], listener_name: str = "",
                 timeout_s: float = 10.0, config: BrokerConfig | None = None) -> None:
        self.node_id = node_id
        self.auth = auth
        self.listener = inter_broker_listener(listeners, listener_name, config)
        self.tls: ClientTls | None = None
        if self.listener is None:
            log.error("no listener %s for inter-broker requests (inter.broker.listener.name): transactions over "
                      "partitions other brokers lead will not complete", listener_name)
        elif self.listener.tls:
            if config is None:
                raise ValueError("inter-broker requests over TLS need the broker's configuration")
            self.tls = ClientTls(config, self.listener)
        self.timeout_s = timeout_s
        self._connections: dict[int, _Connection] = {}
        self._connecting: dict[int, asyncio.Lock] = {}
        self._mechanism = _MECHANISMS[0]  # the last one a peer accepted

    async def _open(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.tls is None:
            return await asyncio.open_connection(host, port)
        try:
            return await asyncio.open_connection(host, port, ssl=self.tls.context(), server_hostname=host)
        except ssl.SSLError as exc:
            log.warning("TLS to broker at %s:%d for inter-broker requests failed: %s", host, port, exc)
            raise

    async def _connect(self, peer: BrokerAddress) -> _Connection:
        if self.listener is None:
            raise KafkaProtocolError(E.COORDINATOR_NOT_AVAILABLE,
                                     "no listener for inter-broker requests (inter.broker.listener.name)")
        host, port = peer.on(self.listener.name)
        mechanism = self._mechanism
        for _ in range(2):  # a second time with a mechanism the peer offers, if it refused ours
            reader, writer = await self._open(host, port)
            conn = _Connection(reader, writer)
            try:
                offered = await self._authenticate(conn, mechanism)
            except BaseException:
                conn.close()
                raise
            if offered is None:
                log.info("connected to broker %d at %s:%d (%s%s) for inter-broker requests", peer.id, host, port,
                         self.listener.protocol, f" {mechanism}" if self.listener.sasl else "")
                self._mechanism = mechanism
                return conn
            conn.close()
            usable = [m for m in _MECHANISMS if m in offered]
            if not usable:
                break
            mechanism = usable[0]
        raise KafkaProtocolError(E.COORDINATOR_NOT_AVAILABLE,
                                 f"broker {peer.id} offers none of {', '.join(_MECHANISMS)} for inter-broker requests")

    async def _authenticate(self, conn: _Connection, mechanism: str) -> list[str] | None:
        """On a SASL listener, authenticate as the brokers' own user (SCRAM, or PLAIN);
        None once done, or the mechanisms the peer offers when it refused this one."""
        if self.listener is None or not self.listener.sasl:
            return None
        client_id = self.auth.client_id(self.node_id)

        async def step(token: bytes) -> bytes:
            done = await conn.call(SaslAuthenticateRequest(auth_bytes=token), 1, SaslAuthenticateResponse, client_id)
            if done.error_code:
                raise KafkaProtocolError(ErrorCode(done.error_code), f"peer broker: {done.error_message}")
            return bytes(done.auth_bytes or b"")

        shake = await conn.call(SaslHandshakeRequest(mechanism=mechanism), 1, SaslHandshakeResponse, client_id)
        if shake.error_code:
            return list(shake.mechanisms or [])
        password = self.auth.password()
        if mechanism == "PLAIN":
            await step(b"\x00" + BROKER_USER.encode() + b"\x00" + password.encode())
            return None
        scram = ScramClient(BROKER_USER, password, mechanism)
        server_first = await step(scram.first_message())
        await asyncio.to_thread(scram.process_server_first_message, server_first)  # PBKDF2: off the loop
        scram.process_server_final_message(await step(scram.final_message()))
        return None

    async def call(self, peer: BrokerAddress, request: Any, version: int, response_class: Any) -> Any:
        async with self._connecting.setdefault(peer.id, asyncio.Lock()):  # one connection per peer
            conn = self._connections.get(peer.id)
            if conn is None:
                conn = self._connections[peer.id] = await asyncio.wait_for(self._connect(peer), self.timeout_s)
        try:
            return await asyncio.wait_for(conn.call(request, version, response_class,
                                                    self.auth.client_id(self.node_id)), self.timeout_s)
        except BaseException:
            conn.close()  # out of step with the peer (or gone): the next call connects again
            if self._connections.get(peer.id) is conn:
                del self._connections[peer.id]
            raise

    def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()


# ---- writing markers -------------------------------------------------------------------------------


class LocalMarkers:
    """Markers to partitions this broker leads: the control batch, durable like any append; a
    marker in an offsets partition also makes the transaction's offsets visible (or drops them)."""

    def __init__(self, logs: LogManager, replicas: ReplicaManager, leadership: Leadership,
                 offsets: OffsetStore) -> None:
        self.logs = logs
        self.replicas = replicas
        self.leadership = leadership
        self.offsets = offsets

    async def write(self, producer_id: int, producer_epoch: int, commit: bool, partitions: Iterable[tuple[str, int]],
                    coordinator_epoch: int = 0) -> dict[tuple[str, int], ErrorCode]:
        errors: dict[tuple[str, int], ErrorCode] = {}
        waits: list[tuple[tuple[str, int], Any]] = []
        for topic, partition in partitions:
            try:
                plog = self.logs.get_partition(topic, partition)
                self.leadership.check_leader(topic, partition)
                # refused here for an older producer or coordinator epoch (ProducerState.check_marker)
                appended = self.replicas.append_marker(plog, producer_id, producer_epoch, commit, coordinator_epoch)
            except KafkaProtocolError as exc:
                errors[(topic, partition)] = exc.code
                continue
            waits.append(((topic, partition), appended))
        outcomes = await self.replicas.durable_all([a for _, a in waits])
        for (tp, _), outcome in zip(waits, outcomes, strict=True):
            if outcome is None:
                errors[tp] = E.NONE
                if tp[0] == OFFSETS_TOPIC:
                    self.offsets.complete_txn(producer_id, commit, tp[1])
            elif isinstance(outcome, KafkaProtocolError):
                errors[tp] = outcome.code
            else:
                log.warning("marker to %s-%d not durable: %r", *tp, outcome)
                errors[tp] = E.KAFKA_STORAGE_ERROR
        return errors


class ClusterMarkers:
    """Writes a transaction's markers wherever its partitions are led (see the module docstring)."""

    def __init__(self, member: ClusterMember, local: LocalMarkers, client: InterBrokerClient,
                 deadline_s: float = 30.0, retry_s: float = 0.25) -> None:
        self.member = member
        self.local = local
        self.client = client
        self.deadline_s = deadline_s
        self.retry_s = retry_s

    async def write(self, producer_id: int, producer_epoch: int, commit: bool, partitions: Iterable[tuple[str, int]],
                    coordinator_epoch: int = 0) -> None:
        """Return once every partition has its marker (durable), or a deleted topic needs none;
        raise COORDINATOR_NOT_AVAILABLE if that takes longer than the deadline."""
        pending = set(partitions)
        deadline = time.monotonic() + self.deadline_s
        last: dict[tuple[str, int], str] = {}
        while True:
            by_leader: dict[int, list[tuple[str, int]]] = {}
            for topic, partition in sorted(pending):
                if topic not in self.local.logs.topics:
                    pending.discard((topic, partition))  # deleted meanwhile: nothing left to mark
                    continue
                assignment = self.member.follower.assignment(topic, partition)
                if assignment is None:
                    last[(topic, partition)] = "not placed"
                    continue
                by_leader.setdefault(assignment.leader, []).append((topic, partition))
            jobs = [self._send(leader, parts, producer_id, producer_epoch, commit, coordinator_epoch)
                    for leader, parts in by_leader.items()]
            for result in await asyncio.gather(*jobs):
                for tp, (code, why) in result.items():
                    if code == E.NONE:
                        pending.discard(tp)
                    elif code in _RETRIABLE:
                        last[tp] = why
                    elif code == E.TRANSACTION_COORDINATOR_FENCED:
                        # A newer coordinator of the id has written markers there: the transaction is
                        # its to finish; the client finds it (NOT_COORDINATOR).
                        log.warning("marker for producer %d to %s-%d refused: coordinator epoch %d is fenced",
                                    producer_id, tp[0], tp[1], coordinator_epoch)
                        raise KafkaProtocolError(E.NOT_COORDINATOR, f"marker to {tp[0]}-{tp[1]} refused: {why}")
                    else:
                        raise KafkaProtocolError(code, f"marker to {tp[0]}-{tp[1]} refused: {why}")
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise KafkaProtocolError(E.COORDINATOR_NOT_AVAILABLE, "markers not written yet: " + ", ".join(
                    f"{t}-{p} ({last.get((t, p), '?')})" for t, p in sorted(pending)))
            await asyncio.sleep(self.retry_s)

    async def _send(self, leader: int, parts: list[tuple[str, int]], producer_id: int, producer_epoch: int,
                    commit: bool, coordinator_epoch: int) -> dict[tuple[str, int], tuple[ErrorCode, str]]:
        if leader == self.member.node_id:
            local = await self.local.write(producer_id, producer_epoch, commit, parts, coordinator_epoch)
            return {tp: (code, "here") for tp, code in local.items()}
        peer = self.member.placement.broker(leader)
        if peer is None:
            return {tp: (E.LEADER_NOT_AVAILABLE, f"broker {leader} is not in the placement") for tp in parts}
        by_topic: dict[str, list[int]] = {}
        for topic, partition in parts:
            by_topic.setdefault(topic, []).append(partition)
        R = WriteTxnMarkersRequest
        M = R.WritableTxnMarker
        request = R(markers=[M(producer_id=producer_id, producer_epoch=producer_epoch, transaction_result=commit,
                               topics=[M.WritableTxnMarkerTopic(name=t, partition_indexes=ps)
                                       for t, ps in by_topic.items()],
                               coordinator_epoch=coordinator_epoch)])
        try:
            response = await self.client.call(peer, request, _WRITE_TXN_MARKERS_VERSION, WriteTxnMarkersResponse)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, KafkaProtocolError) as exc:
            return {tp: (E.COORDINATOR_NOT_AVAILABLE, f"broker {leader}: {exc!r}") for tp in parts}
        out: dict[tuple[str, int], tuple[ErrorCode, str]] = {
            tp: (E.COORDINATOR_NOT_AVAILABLE, f"broker {leader}: no answer") for tp in parts}
        for marker in response.markers:
            for topic in marker.topics:
                for p in topic.partitions:
                    code = ErrorCode(p.error_code)
                    if code == E.CLUSTER_AUTHORIZATION_FAILED:
                        log.error("broker %d refused our WriteTxnMarkers (another cluster secret?)", leader)
                        code = E.COORDINATOR_NOT_AVAILABLE
                    out[(topic.name, p.partition_index)] = (code, f"broker {leader}: {code.name}")
        return out
