"""Group commit: which thread a round is fsynced on (the acks=all tail-latency fix)."""

from __future__ import annotations

import asyncio

from kafka.record.default_records import DefaultRecordBatchBuilder
from strata_broker.config import BrokerConfig
from strata_broker.log.manager import INLINE_SYNC_YIELDS, GroupCommit
from strata_broker.log.partition import PartitionLog


def batch(value: bytes) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 21)
    builder.append(0, timestamp=1_000, key=None, value=value, headers=[])
    return bytes(builder.build())


def test_round_thread_follows_loop_disk_and_size(tmp_path) -> None:
    """A small round on an idle loop with a quick disk is synced on the loop's thread (no hand-off
    between the fdatasync and the answer); a large round, or any round after slow syncs, on the
    sync thread."""
    config = BrokerConfig.from_overrides({})
    plog = PartitionLog.open(str(tmp_path), "t", 0, config.resolve_topic({}), clean=True)
    commit = GroupCommit(inline_max_bytes=64 * 1024)

    async def rounds() -> list[tuple[int, int]]:
        seen = []
        segment = plog.append(batch(b"small")).segment
        await commit.sync_many([segment])
        seen.append((commit.rounds, commit.inline_rounds))
        segment = plog.append(batch(b"x" * 100_000)).segment  # more than inline_max_bytes unsynced
        await commit.sync_many([segment])
        seen.append((commit.rounds, commit.inline_rounds))
        segment = plog.append(batch(b"small")).segment
        commit.sync_seconds = 1.0  # the disk has been slow lately
        await commit.sync_many([segment])
        seen.append((commit.rounds, commit.inline_rounds))
        return seen

    try:
        assert asyncio.run(rounds()) == [(1, 1), (2, 1), (3, 1)]
        assert not plog.dirty_segments()
    finally:
        commit.close()
        plog.close()


def test_round_takes_in_the_requests_ready_behind_it(tmp_path) -> None:
    """A request read in the same pass as the round's first one, ready to run on the loop but not yet
    appended when the round begins, joins that round: one round, synced on the loop's thread once
    nothing else is ready, rather than one on the sync thread and a second one after it."""
    config = BrokerConfig.from_overrides({})
    plog = PartitionLog.open(str(tmp_path), "t", 0, config.resolve_topic({}), clean=True)
    commit = GroupCommit()

    async def pipelined() -> None:
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []

        async def request(value: bytes) -> None:
            segment = plog.append(batch(value)).segment
            if value == b"first":  # the next request is dispatched after this one's round was started
                loop.call_soon(lambda: tasks.append(loop.create_task(request(b"second"))))
            await commit.sync_many([segment])

        await request(b"first")
        await asyncio.gather(*tasks)

    try:
        asyncio.run(pipelined())
        assert (commit.rounds, commit.inline_rounds) == (1, 1)
        assert commit.yields >= 1
        assert plog.log_end_offset == 2 and not plog.dirty_segments()
    finally:
        commit.close()
        plog.close()


def test_round_on_a_loop_never_idle_goes_to_the_sync_thread(tmp_path) -> None:
    """A loop that always has a callback ready delays a round by INLINE_SYNC_YIELDS passes at most:
    it is then synced on the sync thread (the loop keeps serving) and answered."""
    config = BrokerConfig.from_overrides({})
    plog = PartitionLog.open(str(tmp_path), "t", 0, config.resolve_topic({}), clean=True)
    commit = GroupCommit()

    async def busy() -> None:
        loop = asyncio.get_running_loop()
        done = False

        def spin() -> None:
            if not done:
                loop.call_soon(spin)

        loop.call_soon(spin)
        await asyncio.wait_for(commit.sync_many([plog.append(batch(b"x")).segment]), 30)
        done = True

    try:
        asyncio.run(busy())
        assert (commit.rounds, commit.inline_rounds, commit.yields) == (1, 0, INLINE_SYNC_YIELDS)
    finally:
        commit.close()
        plog.close()
