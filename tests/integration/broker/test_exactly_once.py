"""Exactly-once processing against a real broker process, killed and restarted.

The consume-process-produce SIGKILL loop (tests/support/eos_killloop.py): a confluent-kafka
service in its own process, killed with SIGKILL at random points 20 times and restarted, the
broker SIGKILLed as well in some rounds; the output then holds every input record exactly once
(read_committed) and the group's offsets equal the input's ends.
"""

from __future__ import annotations

import os

from eos_killloop import run_kill_loop

FAST = {"transaction.abort.timed.out.transaction.cleanup.interval.ms": "300",
        "transaction.state.log.num.partitions": "4", "offsets.topic.num.partitions": "4"}


def test_consume_process_produce_survives_20_sigkills(broker_factory, tmp_path) -> None:
    broker = broker_factory(settings=FAST)
    seed = int(os.environ.get("EOS_SEED", "0")) or None
    result = run_kill_loop(broker, tmp_path / "loop", rounds=20, broker_kill_rounds=3, per_round=40, seed=seed,
                           say=print)
    print(result.summary())
    assert result.rounds == 20 and result.broker_kills == 3
    assert result.commits > 0
    assert result.duplicates == 0 and result.missing == 0, result.summary()
    assert result.mismatched_partitions == [], result.summary()
    assert result.outputs == result.inputs == 20 * 40, result.summary()
    assert result.committed == result.ends, result.summary()
    # Kills landed inside transactions: their records are in the log, aborted (read_uncommitted sees them).
    assert result.uncommitted_outputs > result.outputs, result.summary()
