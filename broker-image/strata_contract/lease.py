"""A broker's lease: the object (`members/<id>.json`, layout.member_key) a broker rewrites every
renew interval, and that the operator's cluster controller reads to judge which brokers are live.

    {"id": 0, "host": "127.0.0.1", "port": 9092, "renewals": 42, "lease_ms": 9000,
     "bytes_in": {"orders/3": 1234.5},          # bytes/s per led partition, for balancing
     "end_offsets": {"orders/3": 5120},         # log end offset per led partition, for consumer lag
     "endpoints": {"PLAINTEXT": ["127.0.0.1", 9092], "SASL_SSL": ["127.0.0.1", 9093]}}

The controller calls a broker alive while `renewals` keeps changing (by its own clock); the
broker keeps the lease in strata_broker.cluster.lease.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class MemberLease:
    id: int
    host: str
    port: int
    renewals: int = 0
    lease_ms: int = 9000
    bytes_in: dict[str, float] = field(default_factory=dict)
    endpoints: dict[str, tuple[str, int]] = field(default_factory=dict)  # listener name -> advertised address
    # Log end offset per led partition: a group coordinator's lag of partitions other brokers lead.
    end_offsets: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({"id": self.id, "host": self.host, "port": self.port, "renewals": self.renewals,
                           "lease_ms": self.lease_ms, "bytes_in": self.bytes_in,
                           "endpoints": {n: list(a) for n, a in self.endpoints.items()},
                           "end_offsets": self.end_offsets}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> MemberLease:
        raw: dict[str, Any] = json.loads(data)
        return cls(int(raw["id"]), str(raw["host"]), int(raw["port"]), int(raw.get("renewals", 0)),
                   int(raw.get("lease_ms", 9000)),
                   {str(k): float(v) for k, v in (raw.get("bytes_in") or {}).items()},
                   {str(n): (str(a[0]), int(a[1])) for n, a in (raw.get("endpoints") or {}).items()},
                   {str(k): int(v) for k, v in (raw.get("end_offsets") or {}).items()})
