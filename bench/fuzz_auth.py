"""Long fuzz run against a SASL listener, before and after authentication (issue 5): by default
100,000 seeded random and mutated frames beside a legitimate SASL client, then the broker's file
descriptors and RSS before and after. `make test` runs a 3,000-frame version of the same.

    .venv/bin/python bench/fuzz_auth.py [--frames 100000] [--seed 20260101]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

import fuzz_auth  # noqa: E402
import secutil  # noqa: E402
from brokerproc import BrokerProcess  # noqa: E402
from bystander import Bystander  # noqa: E402

USERS = {"fuzzer": "fuzzer-pw", "bystander": "bystander-pw"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=20260101)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="strata-fuzz-"))
    secutil.write_credentials(base / "users.json", USERS)
    proc = BrokerProcess(base / "broker", listeners={"SASL_PLAINTEXT": None}, settings={
        "auto.create.topics.enable": "true", "num.partitions": "1", "sasl.credentials.file": str(base / "users.json"),
        "authorizer.enable": "true", "super.users": "User:fuzzer;User:bystander"}).start()
    port = proc.listeners["SASL_PLAINTEXT"]
    client = Bystander(proc.address("SASL_PLAINTEXT"), f"bystander-{uuid.uuid4().hex[:8]}",
                          security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                          sasl_plain_username="bystander", sasl_plain_password=USERS["bystander"])
    ok = True
    try:
        fds0, rss0 = fuzz_auth.proc_fds(proc.pid), fuzz_auth.proc_rss_kb(proc.pid)
        t0 = time.monotonic()
        half = args.frames // 2
        pre = fuzz_auth.fuzz(port, half, args.seed, login=None)
        mid = time.monotonic()
        post = fuzz_auth.fuzz(port, args.frames - half, args.seed + 1, login=("fuzzer", USERS["fuzzer"]))
        elapsed = time.monotonic() - t0
        time.sleep(0.5)
        fds, rss = fuzz_auth.proc_fds(proc.pid), fuzz_auth.proc_rss_kb(proc.pid)
        print(f"pre-auth : {pre.frames:>7} frames on {pre.connections:>6} connections, {pre.answers} answers, "
              f"{mid - t0:.1f}s")
        print(f"post-auth: {post.frames:>7} frames on {post.connections:>6} connections, {post.answers} answers, "
              f"{post.logins} logins")
        print(f"total    : {pre.frames + post.frames} frames in {elapsed:.1f}s")
        print(f"broker   : sockets {fds0} -> {fds} (all fds {fuzz_auth.proc_fds(proc.pid, False)}), "
              f"RSS {rss0 / 1024:.1f} MB -> {rss / 1024:.1f} MB, alive={proc.alive()}")
        print(f"bystander: {client.progress()[0]} acked, {client.progress()[1]} read, errors={client.errors!r}, "
              f"worst ack {max(client.latencies, default=0):.3f}s")
        problems = pre.problems + post.problems
        if problems:
            print("PROBLEMS:", *problems[:10], sep="\n  ")
        ok = not problems and proc.alive() and fds <= fds0 + 10 and not client.errors
    finally:
        client.finish()
        proc.stop()
    log = proc.log_path.read_text(errors="replace")
    for leak in ("Traceback", "Task exception was never retrieved"):
        if leak in log:
            print(f"broker log shows {leak!r}")
            ok = False
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
