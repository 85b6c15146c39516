"""Group commit: which thread a round is fsynced on (the acks=all tail-latency fix)."""

from __future__ import annotations

import asyncio

from kafka.record.default_records import DefaultRecordBatchBuilder
from strata_broker.config import BrokerConfig
from strata_broker.log.manager import GroupCommit
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
