"""What a handler sees of the broker (`Services`) and of the connection a request came on."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..request_metrics import RequestMetrics
from ..security import ANONYMOUS

if TYPE_CHECKING:
    from ..cluster.txn_markers import InterBrokerAuth, LocalMarkers
    from ..config import BrokerConfig
    from ..groups import GroupCoordinator
    from ..groups.transactions import TransactionCoordinator
    from ..log.manager import LogManager
    from ..metering import Meter
    from ..replica import Leadership, ReplicaManager
    from ..security.acl import Authorizer
    from ..security.credentials import CredentialStore
    from ..security.listeners import Listener
    from ..security.quotas import QuotaManager
    from ..security.sasl import AuthGuard, SaslSession


class Lifecycle:
    """Whether the broker is closing, and the long polls to wake when it starts to."""

    def __init__(self) -> None:
        self.closing = False
        self._waiters: set[asyncio.Future[None]] = set()

    def add_shutdown_waiter(self, future: asyncio.Future[None]) -> None:
        self._waiters.add(future)

    def remove_shutdown_waiter(self, future: asyncio.Future[None]) -> None:
        self._waiters.discard(future)

    def close(self) -> None:
        self.closing = True
        for future in list(self._waiters):
            if not future.done():
                future.set_result(None)


@dataclass
class Services:
    """Everything the request handlers use, built once by the composition root (broker.py)."""

    config: BrokerConfig
    node_id: int
    logs: LogManager
    replicas: ReplicaManager
    leadership: Leadership
    groups: GroupCoordinator
    authorizer: Authorizer
    credentials: CredentialStore
    auth: AuthGuard
    quotas: QuotaManager
    meter: Meter
    lifecycle: Lifecycle
    default_listener: Listener
    # The transaction coordinator (in cluster mode, for the ids whose partition this broker leads).
    transactions: TransactionCoordinator | None = None
    # WriteTxnMarkers: who may send it (brokers of this cluster) and the local marker writer.
    inter_broker: InterBrokerAuth | None = None
    txn_markers: LocalMarkers | None = None
    # Each request's time in the broker, per request type (/metrics: strata_request_seconds).
    request_metrics: RequestMetrics = field(default_factory=RequestMetrics)

    @property
    def cluster_id(self) -> str:
        return self.config["cluster.id"]

    @property
    def closing(self) -> bool:
        return self.lifecycle.closing


@dataclass
class Connection:
    """One client connection: where it came in, who it is, and its SASL and throttle state."""

    listener: Listener | None
    host: str  # the client's IP address (ACL host)
    principal: str | None = ANONYMOUS  # None until a SASL listener's client authenticates
    sasl: SaslSession | None = None
    sasl_mechanism: str | None = None
    mute_until: float = 0.0  # monotonic: no request is read before this (quota throttle)
    # A transactional produce waiting for its transaction coordinator (protocol/txn_implicit.py):
    # produce requests pipelined behind it wait for it before they append.
    produce_gate: asyncio.Future[None] | None = None

    @property
    def authenticated(self) -> bool:
        return self.principal is not None

    def mute(self, throttle_ms: int) -> None:
        self.mute_until = max(self.mute_until, time.monotonic() + throttle_ms / 1000.0)


@dataclass
class RequestContext:
    services: Services
    api_version: int
    correlation_id: int
    client_id: str | None
    peer: str
    conn: Connection | None = None
    # Set by a handler whose answer must be the connection's last (failed authentication).
    close_after: bool = field(default=False)

    @property
    def principal(self) -> str:
        return (self.conn.principal if self.conn else None) or ANONYMOUS

    @property
    def host(self) -> str:
        if self.conn is not None:
            return self.conn.host
        return self.peer.rsplit(":", 1)[0].strip("[]")

    def authorize(self, operation: int, resource_type: int, name: str) -> bool:
        """Whether this request's principal may do `operation` on the resource (acl.OP_*, acl.RES_*)."""
        return self.services.authorizer.authorize(self.principal, self.host, operation, resource_type, name)

    @property
    def listener_name(self) -> str:
        """The name of the listener this request came in on ('' when not known)."""
        if self.conn is not None and self.conn.listener is not None:
            return self.conn.listener.name
        return ""

    @property
    def advertised_host(self) -> str:
        """The host clients reach this broker at on the listener this request came in on."""
        if self.conn is not None and self.conn.listener is not None:
            return self.conn.listener.advertised_host
        return self.services.default_listener.advertised_host

    @property
    def advertised_port(self) -> int:
        if self.conn is not None and self.conn.listener is not None:
            return self.conn.listener.advertised_port
        return self.services.default_listener.advertised_port
