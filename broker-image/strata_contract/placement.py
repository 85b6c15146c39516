"""The placement document: which broker leads which partition, at which leader epoch.

One writer (the controller: the operator, or `strata dev` locally) publishes it as JSON — in a
ConfigMap mounted into every broker pod, or a plain file in development — and every broker
reads it (strata_broker.cluster.follower). This module is the one definition of that format.

    {"version": 7,
     "brokers": [{"id": 0, "host": "10.0.0.5", "port": 9092}, ...],
     "topics": {"orders": {"id": "<uuid>", "configs": {...},
                           "partitions": [{"leader": 0, "epoch": 3}, ...]}}}

`version` rises with every change of the document; a partition's `epoch` rises every time its
leader changes (a broker that is not the leader of the newest epoch never accepts a write).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BrokerAddress:
    id: int
    host: str
    port: int
    # Every listener's advertised address, by listener name, for brokers with several.
    endpoints: tuple[tuple[str, str, int], ...] = ()

    def on(self, listener: str) -> tuple[str, int]:
        """The address clients of the named listener reach this broker at."""
        for name, host, port in self.endpoints:
            if name == listener:
                return host, port
        return self.host, self.port


@dataclass(frozen=True)
class Assignment:
    leader: int
    epoch: int


@dataclass(frozen=True)
class TopicPlacement:
    id: str
    partitions: tuple[Assignment, ...]
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    version: int = 0
    brokers: tuple[BrokerAddress, ...] = ()
    topics: dict[str, TopicPlacement] = field(default_factory=dict)

    def broker(self, node_id: int) -> BrokerAddress | None:
        for b in self.brokers:
            if b.id == node_id:
                return b
        return None

    def assignment(self, topic: str, partition: int) -> Assignment | None:
        placed = self.topics.get(topic)
        if placed is None or not 0 <= partition < len(placed.partitions):
            return None
        return placed.partitions[partition]

    def led_by(self, node_id: int) -> dict[tuple[str, int], int]:
        """(topic, partition) -> epoch for every partition node_id leads."""
        return {(name, p): a.epoch for name, t in self.topics.items() for p, a in enumerate(t.partitions)
                if a.leader == node_id}

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "brokers": [{"id": b.id, "host": b.host, "port": b.port,
                         **({"endpoints": {n: [h, p] for n, h, p in b.endpoints}} if b.endpoints else {})}
                        for b in self.brokers],
            "topics": {name: {"id": t.id, "configs": dict(t.configs),
                              "partitions": [{"leader": a.leader, "epoch": a.epoch} for a in t.partitions]}
                       for name, t in sorted(self.topics.items())},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Placement:
        return cls(
            version=int(raw.get("version", 0)),
            brokers=tuple(BrokerAddress(int(b["id"]), str(b["host"]), int(b["port"]),
                                        tuple((str(n), str(a[0]), int(a[1]))
                                              for n, a in sorted((b.get("endpoints") or {}).items())))
                          for b in raw.get("brokers", [])),
            topics={str(name): TopicPlacement(
                id=str(t["id"]),
                partitions=tuple(Assignment(int(a["leader"]), int(a["epoch"])) for a in t.get("partitions", [])),
                configs={str(k): str(v) for k, v in (t.get("configs") or {}).items()})
                for name, t in (raw.get("topics") or {}).items()},
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Placement:
        return cls.from_dict(json.loads(text))


def read_placement(path: str) -> Placement | None:
    """None while the file is missing or half written (the writer renames, but a ConfigMap
    volume can be caught mid-update)."""
    try:
        with open(path, "rb") as f:
            return Placement.from_json(f.read())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None


def write_placement(path: str, placement: Placement) -> None:
    """Atomic replace: a reader sees the old document or the new one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(placement.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
