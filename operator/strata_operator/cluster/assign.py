"""Partition placement as a pure function: what the controller observed -> the next Placement.

No I/O and no clock: `next_placement` is given the published placement, the desired membership,
the live brokers (from their leases), the topics in the bucket and the measured bytes in, and
returns the next placement plus the list of moves. Rules:

- The placement's brokers are the live member brokers, sorted by id. When no member broker is
  live, nothing changes at all (moving partitions to nobody would only churn epochs).
- A topic no longer in the bucket is dropped. A topic whose id changed was re-created: its
  partitions are placed afresh, at epoch 1 (brokers tell incarnations apart by the topic id).
  Partitions beyond the topic's count are dropped; new ones are placed at epoch 1.
- A partition whose leader is not a live member (lost: lease expired or deleted; or scaled in:
  no longer a member) moves to the least-loaded live member: fewest partitions first, then fewest
  partitions of the same topic (so one topic spreads), then least bytes in, then lowest id.
  Bigger partitions (bytes in) are placed first.
- Rebalance (asked for, or automatically when a member broker appears that the published
  placement did not list: scale out) moves the fewest partitions needed for every broker's
  partition count to be within 1 of every other's, preferring partitions with low bytes in.
- A requested reassignment (AlterPartitionReassignments: partition -> broker) moves the partition
  to that broker when it is a live member (after the homeless are placed, before any rebalance).
- Every partition that changes leader gets epoch = published epoch + 1 (once, however many times
  it moved within this computation), so an epoch is never reused for a different leader.
- Nothing changed -> the very same Placement object (same version); otherwise version + 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from strata_contract.placement import Assignment, BrokerAddress, Placement, TopicPlacement

# Why a partition moved (Move.reason).
NEW = "new"                # a new topic or partition: no previous leader
LOST = "broker-lost"       # its leader's lease expired or was deleted
SCALE_IN = "scale-in"      # its leader is live but no longer a member
SCALE_OUT = "scale-out"    # automatic rebalance: a new member broker appeared
REBALANCE = "rebalance"    # explicit rebalance
REASSIGN = "reassignment"  # AlterPartitionReassignments named its broker


@dataclass(frozen=True)
class TopicInfo:
    """A topic as the bucket describes it (its topic.json)."""
    id: str
    partitions: int
    configs: Mapping[str, str] = field(default_factory=dict)
    internal: bool = False


@dataclass(frozen=True)
class Move:
    topic: str
    partition: int
    source: int | None  # None: a new partition
    target: int
    epoch: int
    reason: str

    def __str__(self) -> str:
        src = "-" if self.source is None else str(self.source)
        return f"{self.topic}/{self.partition}: broker {src} -> {self.target}, epoch {self.epoch} ({self.reason})"


@dataclass(frozen=True)
class Decision:
    placement: Placement
    moves: tuple[Move, ...] = ()
    changed: bool = False


def balanced_moves_needed(counts: Mapping[int, int]) -> int:
    """The fewest single-partition moves that bring every count within 1 of every other."""
    if not counts:
        return 0
    q, r = divmod(sum(counts.values()), len(counts))
    ordered = sorted(counts.values(), reverse=True)
    return sum(max(0, c - (q + 1 if i < r else q)) for i, c in enumerate(ordered))


def next_placement(current: Placement | None, *, members: Collection[int] | None,
                   live: Iterable[BrokerAddress], topics: Mapping[str, TopicInfo],
                   bytes_in: Mapping[tuple[str, int], float] | None = None,
                   rebalance: bool = False, reassign: Mapping[tuple[str, int], int] | None = None) -> Decision:
    """The next placement. `members` None: every live broker is a member. `bytes_in`:
    (topic, partition) -> bytes/s as the leader measured it (missing = 0). `reassign`:
    (topic, partition) -> the broker a reassignment asks to lead it."""
    current = current if current is not None else Placement()
    rates = bytes_in or {}
    member_set = None if members is None else set(members)
    live_by_id: dict[int, BrokerAddress] = {}
    for b in live:
        live_by_id[b.id] = b
    eligible = [live_by_id[i] for i in sorted(live_by_id) if member_set is None or i in member_set]
    if not eligible:
        return Decision(current)
    ids = [b.id for b in eligible]
    id_set = set(ids)

    # What each topic's partitions look like before anything moves (None: needs a leader).
    parts: dict[str, list[Assignment | None]] = {}
    base_epoch: dict[tuple[str, int], int] = {}  # the published epoch of partitions that keep their identity
    for name in sorted(topics):
        info = topics[name]
        old = current.topics.get(name)
        keep = list(old.partitions[:info.partitions]) if old is not None and old.id == info.id else []
        for p, a in enumerate(keep):
            base_epoch[(name, p)] = a.epoch
        parts[name] = [*keep, *([None] * (info.partitions - len(keep)))]

    count: Counter[int] = Counter({i: 0 for i in ids})
    load: dict[int, float] = dict.fromkeys(ids, 0.0)
    per_topic: Counter[tuple[str, int]] = Counter()
    moves: dict[tuple[str, int], Move] = {}
    homeless: list[tuple[str, int, int | None, str]] = []  # topic, partition, old leader, reason
    for name, plist in parts.items():
        for p, a in enumerate(plist):
            if a is None:
                homeless.append((name, p, None, NEW))
            elif a.leader not in id_set:
                homeless.append((name, p, a.leader, LOST if a.leader not in live_by_id else SCALE_IN))
                plist[p] = None  # its leader's load is not counted anywhere
            else:
                count[a.leader] += 1
                load[a.leader] += rates.get((name, p), 0.0)
                per_topic[(name, a.leader)] += 1

    def assign(name: str, p: int, source: int | None, target: int, reason: str) -> None:
        old = parts[name][p]
        if old is not None:
            count[old.leader] -= 1
            load[old.leader] -= rates.get((name, p), 0.0)
            per_topic[(name, old.leader)] -= 1
        key = (name, p)
        epoch = base_epoch[key] + 1 if key in base_epoch else 1
        first = moves.get(key)
        if first is not None:  # moved twice in one computation: one move, one epoch bump
            source, reason = first.source, first.reason
        parts[name][p] = Assignment(target, epoch)
        if source == target and first is not None:
            del moves[key]  # back where it was published: no move at all
            parts[name][p] = Assignment(target, base_epoch[key])
        else:
            moves[key] = Move(name, p, source, target, epoch, reason)
        count[target] += 1
        load[target] += rates.get(key, 0.0)
        per_topic[(name, target)] += 1

    def least_loaded(name: str, among: Iterable[int]) -> int:
        return min(among, key=lambda b: (count[b], per_topic[(name, b)], load[b], b))

    homeless.sort(key=lambda h: (-rates.get((h[0], h[1]), 0.0), h[0], h[1]))
    for name, p, source, reason in homeless:
        assign(name, p, source, least_loaded(name, ids), reason)

    for (name, p), target in sorted((reassign or {}).items()):
        plist = parts.get(name)
        if plist is None or not 0 <= p < len(plist) or target not in id_set:
            continue
        a = plist[p]
        if a is not None and a.leader != target:
            assign(name, p, a.leader, target, REASSIGN)

    published_ids = {b.id for b in current.brokers}
    scale_out = bool(id_set - published_ids) and bool(published_ids or current.topics)
    if rebalance or scale_out:
        reason = REBALANCE if rebalance else SCALE_OUT
        total = sum(count[b] for b in ids)
        q, r = divmod(total, len(ids))
        # The r brokers that keep q+1 are those holding the most already: fewest moves.
        ranked = sorted(ids, key=lambda b: (-count[b], b))
        cap = {b: (q + 1 if i < r else q) for i, b in enumerate(ranked)}
        for donor in ranked:
            excess = count[donor] - cap[donor]
            if excess <= 0:
                continue
            for _ in range(excess):
                candidates = [(name, p) for name, plist in parts.items() for p, a in enumerate(plist)
                              if a is not None and a.leader == donor]
                # Just-placed ones first (already moving), then partitions of the topic this broker
                # holds most over its share of (so each topic spreads too), then low bytes in.
                name, p = min(candidates, key=lambda k: (
                    (k not in moves), -(per_topic[(k[0], donor)] - len(parts[k[0]]) / len(ids)),
                    rates.get(k, 0.0), k))
                receivers = [b for b in ids if count[b] < cap[b]]
                assign(name, p, donor, least_loaded(name, receivers), reason)

    brokers = tuple(eligible)
    new_topics = {name: TopicPlacement(topics[name].id, tuple(a for a in plist if a is not None),
                                       dict(topics[name].configs))
                  for name, plist in parts.items()}
    candidate = Placement(current.version, brokers, new_topics)
    if candidate == current:
        return Decision(current)
    ordered = tuple(moves[k] for k in sorted(moves))
    return Decision(Placement(current.version + 1, brokers, new_topics), ordered, True)


def broker_loads(placement: Placement, bytes_in: Mapping[tuple[str, int], float] | None = None
                 ) -> dict[int, tuple[int, float]]:
    """broker id -> (partitions led, bytes in/s), for every broker listed or leading something."""
    rates = bytes_in or {}
    out: dict[int, tuple[int, float]] = {b.id: (0, 0.0) for b in placement.brokers}
    for name, t in placement.topics.items():
        for p, a in enumerate(t.partitions):
            n, rate = out.get(a.leader, (0, 0.0))
            out[a.leader] = (n + 1, rate + rates.get((name, p), 0.0))
    return out
