"""What a handler sees of the broker and of the connection a request came on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..broker import Broker


@dataclass
class RequestContext:
    broker: Broker
    api_version: int
    correlation_id: int
    client_id: str | None
    peer: str
