"""Server-side assignors of the KIP-848 consumer group protocol (Kafka's `group.consumer.assignors`).

An assignor maps the members of a consumer group to partitions of the topics they subscribe to:

    assign(members, topics, previous) -> {member_id: {topic: {partition, ...}}}

- `members`: member id -> the topic names it subscribes to (sorted by member id when order matters);
- `topics`: topic name -> partition count, for the subscribed topics that exist;
- `previous`: the last target assignment, which the sticky `uniform` assignor keeps where it can.

`uniform` (Kafka's UniformAssignor, the default) spreads every partition so that members with the
same subscription own counts within one of each other, and moves as few partitions as it can from
the previous assignment. `range` (Kafka's RangeAssignor) gives each member, topic by topic, a
contiguous range of partitions: with N partitions and M subscribers, the first N % M members (by
member id) take N // M + 1 and the rest N // M, so co-partitioned topics land on the same member.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping

Assignment = dict[str, dict[str, set[int]]]
Assignor = Callable[[Mapping[str, list[str]], Mapping[str, int], Mapping[str, Mapping[str, set[int]]]], Assignment]


def range_assign(members: Mapping[str, list[str]], topics: Mapping[str, int],
                 previous: Mapping[str, Mapping[str, set[int]]]) -> Assignment:
    """Contiguous partition ranges per topic, members ordered by id (`previous` is not used)."""
    out: Assignment = {m: {} for m in members}
    for topic in sorted(topics):
        count = topics[topic]
        subscribers = sorted(m for m, subscribed in members.items() if topic in subscribed)
        if not subscribers or count <= 0:
            continue
        base, extra = divmod(count, len(subscribers))
        start = 0
        for i, member in enumerate(subscribers):
            size = base + (1 if i < extra else 0)
            if size:
                out[member][topic] = set(range(start, start + size))
            start += size
    return out


def uniform_assign(members: Mapping[str, list[str]], topics: Mapping[str, int],
                   previous: Mapping[str, Mapping[str, set[int]]]) -> Assignment:
    """Balanced and sticky: previous owners keep what they may still own, up to their fair share;
    the rest goes to the least loaded subscriber; then partitions move from the most to the least
    loaded eligible member until no move narrows the gap. Linear in partitions for one
    subscription shared by all (the common case): thousands of partitions take milliseconds."""
    ids = sorted(members)
    subscribers: dict[str, tuple[str, ...]] = {
        t: tuple(m for m in ids if t in members[m]) for t in sorted(topics)}
    owned: dict[str, set[tuple[str, int]]] = {m: set() for m in ids}
    count: dict[str, int] = dict.fromkeys(ids, 0)
    # A member's fair share: its eligible partitions split among everyone who could take them.
    share: dict[str, int] = {}
    for m in ids:
        mine = [t for t in members[m] if t in topics]
        rivals = {r for t in mine for r in subscribers[t]}
        share[m] = -(-sum(topics[t] for t in mine) // max(1, len(rivals)))  # ceiling
    taken: set[tuple[str, int]] = set()
    for m in ids:
        for topic, parts in sorted((previous.get(m) or {}).items()):
            if topic not in topics or m not in subscribers[topic]:
                continue
            for p in sorted(parts):
                tp = (topic, p)
                if p < topics[topic] and tp not in taken and count[m] < share[m]:
                    owned[m].add(tp)
                    count[m] += 1
                    taken.add(tp)
    # The rest: to the least loaded subscriber (a lazy heap per distinct set of subscribers).
    heaps: dict[tuple[str, ...], list[tuple[int, str]]] = {}
    for topic in sorted(topics):
        group = subscribers[topic]
        if not group:
            continue
        heap = heaps.get(group)
        if heap is None:
            heap = heaps[group] = [(count[m], m) for m in group]
            heapq.heapify(heap)
        for p in range(topics[topic]):
            if (topic, p) in taken:
                continue
            while True:
                c, m = heapq.heappop(heap)
                if c == count[m]:
                    break
                heapq.heappush(heap, (count[m], m))  # stale: its count grew through another topic
            owned[m].add((topic, p))
            count[m] += 1
            heapq.heappush(heap, (count[m], m))
    moved = True
    while moved:
        moved = False
        lightest: dict[tuple[str, ...], str] = {}
        for heavy in sorted(ids, key=lambda m: (-count[m], m)):
            for tp in sorted(owned[heavy]):
                group = subscribers[tp[0]]
                light = lightest.get(group)
                if light is None:
                    light = lightest[group] = min(group, key=lambda m: (count[m], m))
                if count[light] + 1 < count[heavy]:
                    owned[heavy].discard(tp)
                    owned[light].add(tp)
                    count[heavy] -= 1
                    count[light] += 1
                    moved = True
                    break
            if moved:
                break
    out: Assignment = {m: {} for m in ids}
    for m in ids:
        for topic, p in owned[m]:
            out[m].setdefault(topic, set()).add(p)
    return out


# Kafka accepts an assignor's short name or its class name in group.consumer.assignors.
ASSIGNORS: dict[str, Assignor] = {"uniform": uniform_assign, "range": range_assign}
_CLASS_NAMES = {
    "org.apache.kafka.coordinator.group.assignor.UniformAssignor": "uniform",
    "org.apache.kafka.coordinator.group.assignor.RangeAssignor": "range",
}


def assignor_names(setting: str) -> list[str]:
    """The assignor names a `group.consumer.assignors` value lists, in order (the first is the
    default); a name Strata has no assignor for raises ValueError."""
    names = []
    for raw in setting.split(","):
        name = _CLASS_NAMES.get(raw.strip(), raw.strip())
        if not name:
            continue
        if name not in ASSIGNORS:
            raise ValueError(f"unknown assignor {raw.strip()!r}: Strata has {', '.join(ASSIGNORS)}")
        names.append(name)
    if not names:
        raise ValueError("group.consumer.assignors lists no assignor")
    return names
