"""The leader-epoch history (Kafka's leader-epoch-checkpoint) and its OffsetForLeaderEpoch answers."""

from __future__ import annotations

from strata_broker.log.leader_epochs import FILE, LeaderEpochCache


def test_end_offsets_as_kafka_answers_them(tmp_path) -> None:
    cache = LeaderEpochCache(str(tmp_path))
    assert cache.assign(2, 0) and cache.assign(4, 10) and cache.assign(7, 25)
    assert not cache.assign(7, 30) and not cache.assign(5, 40)  # the same epoch again, an older one
    end = 40
    answers = {epoch: cache.end_offset_for(epoch, 7, 0, end) for epoch in range(-1, 9)}
    assert answers == {-1: (-1, -1), 0: (0, 0), 1: (1, 0), 2: (2, 10), 3: (2, 10), 4: (4, 25), 5: (4, 25),
                       6: (4, 25), 7: (7, end), 8: (-1, -1)}
    # Kafka's file layout, and read back by a new cache.
    assert (tmp_path / FILE).read_text() == "0\n3\n2 0\n4 10\n7 25\n"
    assert LeaderEpochCache(str(tmp_path)).entries == [(2, 0), (4, 10), (7, 25)]


def test_a_new_epoch_drops_entries_that_break_the_order(tmp_path) -> None:
    cache = LeaderEpochCache(str(tmp_path))
    cache.assign(1, 0)
    cache.assign(2, 10)
    cache.assign(3, 10)  # epoch 2 wrote nothing: epoch 3 starts where it did
    assert cache.entries == [(1, 0), (3, 10)]
    assert cache.end_offset_for(2, 3, 0, 15) == (1, 10)


def test_no_history_means_the_current_epoch_from_the_log_start(tmp_path) -> None:
    cache = LeaderEpochCache(str(tmp_path))
    assert cache.end_offset_for(0, 0, 0, 12) == (0, 12)
    assert cache.end_offset_for(1, 0, 0, 12) == (-1, -1)
    (tmp_path / FILE).write_text("garbage")
    assert LeaderEpochCache(str(tmp_path)).entries == []


def test_adopt_takes_the_bucket_history_only_into_an_empty_cache(tmp_path) -> None:
    cache = LeaderEpochCache(str(tmp_path / "a"))
    (tmp_path / "a").mkdir()
    cache.adopt([[5, 20], [1, 0], [3, 20]])
    assert cache.entries == [(1, 0), (5, 20)]
    cache.adopt([[9, 99]])
    assert cache.entries == [(1, 0), (5, 20)]
