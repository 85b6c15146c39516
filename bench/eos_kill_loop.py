"""The exactly-once SIGKILL loop at any length (the suite runs 20 rounds: tests/integration/broker/
test_exactly_once.py).

    .venv/bin/python bench/eos_kill_loop.py --rounds 100 --broker-kills 20

One strata-broker (temp data dir, fixed free loopback port). A consume-process-produce service
(tests/support/eos_worker.py: confluent-kafka, send_offsets_to_transaction, read_committed) is
SIGKILLed at random points and restarted each round, the broker is SIGKILLed and restarted in
`--broker-kills` of the rounds (tests/support/eos_killloop.py says how). Exits non-zero unless the
output holds every input record exactly once, in order, and the group's committed offsets equal
the input's end offsets.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import free_port, strata_broker  # noqa: E402
from eos_killloop import run_kill_loop  # noqa: E402


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--broker-kills", type=int, default=4, help="rounds that SIGKILL the broker too")
    parser.add_argument("--per-round", type=int, default=40, help="input records produced each round")
    parser.add_argument("--batch", type=int, default=8, help="records per transaction at most")
    parser.add_argument("--process-ms", type=int, default=30,
                        help="how long each transaction stays open after its records are sent")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data dir and logs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="eos-kill-loop-"))
    broker = strata_broker(work / "data", free_port(), work / "broker.log",
                           "transaction.abort.timed.out.transaction.cleanup.interval.ms=300")
    log(f"load average {os.getloadavg()[0]:.2f}; work dir {work}")
    broker.start(timeout=60)
    try:
        result = run_kill_loop(broker, work / "loop", rounds=args.rounds, broker_kill_rounds=args.broker_kills,
                               per_round=args.per_round, batch=args.batch, process_ms=args.process_ms,
                               seed=args.seed, say=log)
    finally:
        broker.kill()
    log(result.summary())
    log("OK" if result.ok else "FAILED")
    if result.ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
