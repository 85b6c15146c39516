"""Partition placement (strata_operator.cluster.assign): pure, so checked as properties."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st
from strata_contract.placement import Assignment, BrokerAddress, Placement, TopicPlacement
from strata_operator.cluster.assign import (
    LOST,
    NEW,
    REASSIGN,
    REBALANCE,
    SCALE_IN,
    SCALE_OUT,
    TopicInfo,
    balanced_moves_needed,
    broker_loads,
    next_placement,
)


def addr(i: int) -> BrokerAddress:
    return BrokerAddress(i, "127.0.0.1", 9092 + i)


def brokers(*ids: int) -> list[BrokerAddress]:
    return [addr(i) for i in ids]


def topic(partitions: int, tid: str | None = None, **configs: str) -> TopicInfo:
    return TopicInfo(tid or str(uuid.uuid4()), partitions, configs)


def counts(p: Placement) -> dict[int, int]:
    return {b: n for b, (n, _) in broker_loads(p).items()}


def leaders(p: Placement) -> dict[tuple[str, int], tuple[int, int]]:
    return {(name, i): (a.leader, a.epoch) for name, t in p.topics.items() for i, a in enumerate(t.partitions)}


def within_one(p: Placement) -> bool:
    c = [counts(p).get(b.id, 0) for b in p.brokers]
    return max(c) - min(c) <= 1


topic_sets = st.dictionaries(st.sampled_from(["a", "b", "orders", "payments", "x-y", "__consumer_offsets"]),
                             st.integers(1, 24), min_size=1, max_size=5)
rates = st.floats(0, 1e6, allow_nan=False)


def infos(spec: dict[str, int]) -> dict[str, TopicInfo]:
    return {name: TopicInfo(f"id-{name}", n) for name, n in spec.items()}


def test_twelve_partitions_spread_evenly_and_start_at_epoch_1():
    d = next_placement(None, members={0, 1, 2}, live=brokers(0, 1, 2), topics={"orders": topic(12)})
    assert d.changed and d.placement.version == 1
    assert counts(d.placement) == {0: 4, 1: 4, 2: 4}
    assert {a.epoch for a in d.placement.topics["orders"].partitions} == {1}
    assert [b.id for b in d.placement.brokers] == [0, 1, 2]
    assert {m.reason for m in d.moves} == {NEW} and all(m.source is None for m in d.moves)


def test_no_live_broker_keeps_everything():
    d = next_placement(None, members={0, 1}, live=brokers(0, 1), topics={"t": topic(4)})
    again = next_placement(d.placement, members={0, 1}, live=[], topics={})
    assert again.placement is d.placement and not again.changed and not again.moves
    # a live broker that is not a member does not count
    again = next_placement(d.placement, members={0, 1}, live=brokers(5), topics={"t": topic(4)})
    assert again.placement is d.placement


def test_deleted_and_recreated_topics():
    t = topic(3)
    d = next_placement(None, members=None, live=brokers(0, 1), topics={"t": t, "u": topic(2)})
    d2 = next_placement(d.placement, members=None, live=brokers(0, 1), topics={"t": t})
    assert set(d2.placement.topics) == {"t"} and d2.placement.version == 2 and not d2.moves
    # bump epochs of t by killing broker 0, then re-create t with a new id: fresh epochs at 1
    d3 = next_placement(d2.placement, members=None, live=brokers(1), topics={"t": t})
    assert max(a.epoch for a in d3.placement.topics["t"].partitions) == 2
    d4 = next_placement(d3.placement, members=None, live=brokers(1), topics={"t": topic(3)})
    assert {a.epoch for a in d4.placement.topics["t"].partitions} == {1}
    assert d4.placement.topics["t"].id != t.id


def test_configs_and_partition_growth():
    t = topic(2)
    d = next_placement(None, members=None, live=brokers(0, 1), topics={"t": t})
    grown = TopicInfo(t.id, 4, {"retention.ms": "5"})
    d2 = next_placement(d.placement, members=None, live=brokers(0, 1), topics={"t": grown})
    assert d2.placement.topics["t"].configs == {"retention.ms": "5"}
    assert leaders(d2.placement)[("t", 0)] == leaders(d.placement)[("t", 0)]
    assert [(m.partition, m.reason) for m in d2.moves] == [(2, NEW), (3, NEW)]
    assert counts(d2.placement) == {0: 2, 1: 2}


def test_address_change_bumps_version_without_moves():
    d = next_placement(None, members=None, live=brokers(0, 1), topics={"t": topic(2)})
    moved = [BrokerAddress(0, "10.0.0.9", 9092), addr(1)]
    d2 = next_placement(d.placement, members=None, live=moved, topics={n: TopicInfo(t.id, 2) for n, t in
                                                                      d.placement.topics.items()})
    assert d2.changed and d2.placement.version == 2 and not d2.moves
    assert d2.placement.broker(0) == moved[0]


def test_scale_in_moves_the_removed_members_partitions():
    d = next_placement(None, members={0, 1, 2}, live=brokers(0, 1, 2), topics={"t": topic(9)})
    tinfo = {"t": TopicInfo(d.placement.topics["t"].id, 9)}
    d2 = next_placement(d.placement, members={0, 1}, live=brokers(0, 1, 2), topics=tinfo)
    assert {m.reason for m in d2.moves} == {SCALE_IN} and len(d2.moves) == 3
    assert sorted(counts(d2.placement).values()) == [4, 5] and [b.id for b in d2.placement.brokers] == [0, 1]


def test_explicit_rebalance_prefers_quiet_partitions():
    p = Placement(3, tuple(brokers(0, 1)), {"t": TopicPlacement("id-t", tuple(Assignment(0, 5) for _ in range(4)))})
    rate = {("t", 0): 100.0, ("t", 1): 1.0, ("t", 2): 50.0, ("t", 3): 2.0}
    d = next_placement(p, members=None, live=brokers(0, 1), topics={"t": TopicInfo("id-t", 4)}, bytes_in=rate,
                       rebalance=True)
    assert sorted(m.partition for m in d.moves) == [1, 3]
    assert all(m.reason == REBALANCE and m.epoch == 6 and m.source == 0 and m.target == 1 for m in d.moves)
    # balanced already: an explicit rebalance changes nothing
    same = next_placement(d.placement, members=None, live=brokers(0, 1), topics={"t": TopicInfo("id-t", 4)},
                          bytes_in=rate, rebalance=True)
    assert same.placement is d.placement and not same.changed


@settings(max_examples=200, deadline=None)
@given(spec=topic_sets, n=st.integers(1, 6), data=st.data())
def test_initial_placement_is_balanced(spec, n, data):
    rate = data.draw(st.dictionaries(st.tuples(st.sampled_from(sorted(spec)), st.integers(0, 23)), rates))
    d = next_placement(None, members=None, live=brokers(*range(n)), topics=infos(spec), bytes_in=rate)
    assert within_one(d.placement)
    assert sum(counts(d.placement).values()) == sum(spec.values())
    # nothing changed: same object, no moves
    again = next_placement(d.placement, members=None, live=brokers(*range(n)), topics=infos(spec), bytes_in=rate)
    assert again.placement is d.placement and not again.moves and not again.changed


@settings(max_examples=200, deadline=None)
@given(spec=topic_sets, n=st.integers(2, 6), data=st.data())
def test_dead_broker_partitions_move_to_live_ones_with_higher_epochs(spec, n, data):
    d = next_placement(None, members=None, live=brokers(*range(n)), topics=infos(spec))
    dead = set(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n - 1, unique=True)))
    alive = [i for i in range(n) if i not in dead]
    d2 = next_placement(d.placement, members=None, live=brokers(*alive), topics=infos(spec))
    before, after = leaders(d.placement), leaders(d2.placement)
    assert {leader for leader, _ in after.values()} <= set(alive)
    for key, (leader, epoch) in before.items():
        if leader in dead:
            assert after[key] == (after[key][0], epoch + 1)
        else:
            assert after[key] == (leader, epoch)  # survivors' partitions stay put
    assert {(m.topic, m.partition) for m in d2.moves} == {k for k, (leader, _) in before.items() if leader in dead}
    assert all(m.reason == LOST for m in d2.moves)
    assert d2.placement.version == d.placement.version + 1
    assert [b.id for b in d2.placement.brokers] == alive


@settings(max_examples=200, deadline=None)
@given(spec=topic_sets, n=st.integers(1, 5), extra=st.integers(1, 3), data=st.data())
def test_scale_out_moves_the_fewest_partitions(spec, n, extra, data):
    rate = data.draw(st.dictionaries(st.tuples(st.sampled_from(sorted(spec)), st.integers(0, 23)), rates))
    d = next_placement(None, members=None, live=brokers(*range(n)), topics=infos(spec), bytes_in=rate)
    grown = list(range(n + extra))
    before_counts = {**{i: 0 for i in grown}, **counts(d.placement)}
    d2 = next_placement(d.placement, members=None, live=brokers(*grown), topics=infos(spec), bytes_in=rate)
    assert within_one(d2.placement)
    assert len(d2.moves) == balanced_moves_needed(before_counts)
    assert all(m.reason == SCALE_OUT and m.target >= n for m in d2.moves)
    before, after = leaders(d.placement), leaders(d2.placement)
    for key, (leader, epoch) in after.items():
        assert epoch == before[key][1] + (1 if leader != before[key][0] else 0)


@settings(max_examples=150, deadline=None)
@given(spec=topic_sets, steps=st.lists(st.tuples(st.sets(st.integers(0, 5)), st.booleans()), min_size=1,
                                       max_size=8))
def test_versions_and_epochs_only_rise(spec, steps):
    """Any sequence of live sets and rebalances: versions never fall, an epoch rises exactly when the
    leader changes, and every partition always has a leader among the published brokers."""
    current: Placement | None = None
    for live_ids, rebalance in steps:
        d = next_placement(current, members=None, live=brokers(*sorted(live_ids)), topics=infos(spec),
                           rebalance=rebalance)
        if current is not None:
            assert d.placement.version == current.version + (1 if d.changed else 0)
            old, new = leaders(current), leaders(d.placement)
            for key, (leader, epoch) in new.items():
                if key in old:
                    assert epoch == old[key][1] + (1 if leader != old[key][0] else 0)
                    assert epoch >= old[key][1]
        if live_ids:
            assert {leader for leader, _ in leaders(d.placement).values()} <= live_ids
            if rebalance:
                assert within_one(d.placement)
        current = d.placement


def test_balanced_moves_needed():
    assert balanced_moves_needed({0: 6, 1: 6, 2: 0}) == 4  # 12 over 3: two from each
    assert balanced_moves_needed({0: 5, 1: 5, 2: 5, 3: 0}) == 3
    assert balanced_moves_needed({0: 3, 1: 3}) == 0
    assert balanced_moves_needed({}) == 0


def test_reassignment_moves_one_partition_to_the_named_live_broker() -> None:
    topics = {"orders": topic(3, "id-orders")}
    first = next_placement(None, members=None, live=brokers(0, 1, 2), topics=topics).placement
    before = leaders(first)
    source, epoch = before[("orders", 0)]
    target = (source + 1) % 3
    moved = next_placement(first, members=None, live=brokers(0, 1, 2), topics=topics,
                           reassign={("orders", 0): target, ("orders", 9): target, ("gone", 0): target})
    assert [(m.topic, m.partition, m.source, m.target, m.epoch, m.reason) for m in moved.moves] == [
        ("orders", 0, source, target, epoch + 1, REASSIGN)]
    assert {k: v for k, v in leaders(moved.placement).items() if k != ("orders", 0)} == \
        {k: v for k, v in before.items() if k != ("orders", 0)}
    # Done (already there), or naming a broker that is not a live member: nothing changes.
    again = next_placement(moved.placement, members=None, live=brokers(0, 1, 2), topics=topics,
                           reassign={("orders", 0): target})
    assert again.placement is moved.placement
    assert next_placement(first, members=None, live=brokers(0, 1, 2), topics=topics,
                          reassign={("orders", 0): 7}).placement is first
