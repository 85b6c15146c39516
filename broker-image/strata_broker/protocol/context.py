"""What a handler sees of the broker and of the connection a request came on."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..security import ANONYMOUS

if TYPE_CHECKING:
    from ..broker import Broker
    from ..security.listeners import Listener
    from ..security.sasl import SaslSession


@dataclass
class Connection:
    """One client connection: where it came in, who it is, and its SASL and throttle state."""

    listener: Listener | None
    host: str  # the client's IP address (ACL host)
    principal: str | None = ANONYMOUS  # None until a SASL listener's client authenticates
    sasl: SaslSession | None = None
    sasl_mechanism: str | None = None
    mute_until: float = 0.0  # monotonic: no request is read before this (quota throttle)

    @property
    def authenticated(self) -> bool:
        return self.principal is not None

    def mute(self, throttle_ms: int) -> None:
        self.mute_until = max(self.mute_until, time.monotonic() + throttle_ms / 1000.0)


@dataclass
class RequestContext:
    broker: Broker
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
        authorizer = getattr(self.broker, "authorizer", None)
        if authorizer is None:
            return True
        return authorizer.authorize(self.principal, self.host, operation, resource_type, name)

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
        return self.broker.advertised_host

    @property
    def advertised_port(self) -> int:
        if self.conn is not None and self.conn.listener is not None:
            return self.conn.listener.advertised_port
        return self.broker.advertised_port
