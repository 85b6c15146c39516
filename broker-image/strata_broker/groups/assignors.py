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
    loaded eligible member until no move narrows the gap."""
    ids = sorted(members)
    subscribed = {m: set(members[m]) for m in ids}
    owned: dict[str, set[tuple[str, int]]] = {m: set() for m in ids}
    every = [(t, p) for t in sorted(topics) for p in range(topics[t])]
    eligible: dict[tuple[str, int], list[str]] = {tp: [m for m in ids if tp[0] in subscribed[m]] for tp in every}
    # A member's fair share: its eligible partitions split among everyone who could take them.
    share: dict[str, int] = {}
    for m in ids:
        mine = [tp for tp in every if m in eligible[tp]]
        rivals = {r for tp in mine for r in eligible[tp]}
        share[m] = -(-len(mine) // max(1, len(rivals)))  # ceiling
    taken: set[tuple[str, int]] = set()
    for m in ids:
        for topic, parts in sorted((previous.get(m) or {}).items()):
            if topic not in subscribed[m] or topic not in topics:
                continue
            for p in sorted(parts):
                tp = (topic, p)
                if p < topics[topic] and tp not in taken and len(owned[m]) < share[m]:
                    owned[m].add(tp)
                    taken.add(tp)
    for tp in every:
        if tp in taken or not eligible[tp]:
            continue
        target = min(eligible[tp], key=lambda m: (len(owned[m]), m))
        owned[target].add(tp)
        taken.add(tp)
    moved = True
    while moved:
        moved = False
        for heavy in sorted(ids, key=lambda m: (-len(owned[m]), m)):
            for tp in sorted(owned[heavy]):
                light = min(eligible[tp], key=lambda m: (len(owned[m]), m))
                if len(owned[light]) + 1 < len(owned[heavy]):
                    owned[heavy].discard(tp)
                    owned[light].add(tp)
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
