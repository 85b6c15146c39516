"""The KIP-848 server-side assignors (groups/assignors.py): balance, stickiness, ranges."""

from __future__ import annotations

import random

import pytest
from strata_broker.groups.assignors import assignor_names, range_assign, uniform_assign


def counts(assignment: dict[str, dict[str, set[int]]]) -> dict[str, int]:
    return {m: sum(len(p) for p in topics.values()) for m, topics in assignment.items()}


def owned(assignment: dict[str, dict[str, set[int]]]) -> list[tuple[str, int]]:
    return sorted((t, p) for topics in assignment.values() for t, ps in topics.items() for p in ps)


def test_uniform_balances_and_covers_every_partition_once() -> None:
    members = {f"m{i}": ["a", "b"] for i in range(3)}
    out = uniform_assign(members, {"a": 7, "b": 3}, {})
    assert owned(out) == sorted([("a", p) for p in range(7)] + [("b", p) for p in range(3)])
    assert sorted(counts(out).values()) == [3, 3, 4]


def test_uniform_is_sticky_when_a_member_joins_or_leaves() -> None:
    one = uniform_assign({"m1": ["t"]}, {"t": 6}, {})
    assert one == {"m1": {"t": set(range(6))}}
    two = uniform_assign({"m1": ["t"], "m2": ["t"]}, {"t": 6}, one)
    assert len(two["m1"]["t"]) == 3 and two["m1"]["t"] <= one["m1"]["t"]  # m1 only gives partitions away
    three = uniform_assign({"m1": ["t"], "m2": ["t"], "m3": ["t"]}, {"t": 6}, two)
    assert all(three[m]["t"] <= two[m]["t"] for m in ("m1", "m2"))
    back = uniform_assign({"m1": ["t"], "m3": ["t"]}, {"t": 6}, three)
    assert back["m1"]["t"] >= three["m1"]["t"] and back["m3"]["t"] >= three["m3"]["t"]


def test_uniform_with_different_subscriptions() -> None:
    out = uniform_assign({"m1": ["a"], "m2": ["a", "b"], "m3": ["b"]}, {"a": 4, "b": 4}, {})
    assert owned(out) == sorted([("a", p) for p in range(4)] + [("b", p) for p in range(4)])
    assert "b" not in out["m1"] and "a" not in out["m3"]
    assert max(counts(out).values()) - min(counts(out).values()) <= 1


@pytest.mark.parametrize("seed", range(5))
def test_uniform_random_subscriptions_stay_valid(seed: int) -> None:
    rng = random.Random(seed)
    topics = {f"t{i}": rng.randrange(1, 9) for i in range(4)}
    members = {f"m{i}": rng.sample(sorted(topics), rng.randrange(1, 5)) for i in range(rng.randrange(1, 7))}
    previous: dict[str, dict[str, set[int]]] = {}
    for _ in range(3):
        out = uniform_assign(members, topics, previous)
        subscribed = {t for s in members.values() for t in s}
        assert owned(out) == sorted((t, p) for t in subscribed for p in range(topics[t]))
        assert all(t in members[m] for m, a in out.items() for t in a)
        previous = out
        members.pop(sorted(members)[0]) if len(members) > 1 else None


def test_range_gives_contiguous_ranges_per_topic() -> None:
    out = range_assign({"b": ["x", "y"], "a": ["x", "y"]}, {"x": 5, "y": 5}, {})
    assert out == {"a": {"x": {0, 1, 2}, "y": {0, 1, 2}}, "b": {"x": {3, 4}, "y": {3, 4}}}


def test_assignor_names() -> None:
    assert assignor_names("uniform,range") == ["uniform", "range"]
    assert assignor_names("org.apache.kafka.coordinator.group.assignor.RangeAssignor") == ["range"]
    with pytest.raises(ValueError):
        assignor_names("sticky")
