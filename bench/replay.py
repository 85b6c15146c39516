"""`strata replay` from S3 beside a raw S3 GET loop and kcat over the same data, same run.

Starts a moto S3 server and a tiered strata-broker (as bench/tiered.py does), loads a topic of
1 KiB incompressible records, waits until every segment is in S3 and none is on disk, then in
each round, in an order that rotates from round to round, measures:

* raw GET: boto3 get_object of every segment object, whole, one after another (the S3 ceiling);
* `kcat -C -e -o beginning -q` over the topic to /dev/null (the general Kafka tool);
* `strata replay --from-offset 0 -o /dev/null -q` (JSON lines), with the default --parallel and,
  for comparison, --parallel 1 (unless --no-parallel-1) and the command as it was before the
  parallel rewrite (the commit given by --old-rev, run from a copy of its replay_cli.py);
* `strata replay --from-offset 0 --to-topic <fresh topic> -q` (a new target topic each run, as
  many partitions as the source, remote storage off so the broker's upload of the copy does not
  compete for the cores);
* `--to-topic --acks 1` (the batch copy's Produce answered once written, not once fsynced);
* the same JSON and --to-topic commands with the `strata_cli` package of --baseline-rev (by
  default 0d9b6ad, the per-record --to-topic), extracted with git archive and put first on
  PYTHONPATH: an A/B in the same run, rounds alternating;
* `kcat -P` (librdkafka's defaults: acks=all, 1 MB batches, linger 5 ms) of as many 1 KiB text
  lines into a fresh topic like the copy's: what a general Kafka producer gets into this broker,
  the reference for --to-topic's produce side;
* a plain write of as many bytes into a new file beside the broker's data (1 MiB pwrites, no
  fsync, then deleted): the rate at which this machine takes data into fresh page cache. On a VM
  whose freed memory goes back to the host (free page reporting), first-touch page faults bound
  any writer of new data, the broker's log append included;
* time to first record of a replay by timestamp that starts 90% of the way into the topic
  (process start until the first line on a pipe).

The broker is restarted before every client run, so its chunk cache (cleared on start) never
serves a run from disk: every run reads from S3. Every rate is segment (log) bytes in S3 divided
by the wall time of the whole command (process start to exit, as a user sees it). The machine's
load average is printed beside each run: on a shared machine the medians matter, not the best.

    .venv/bin/python bench/replay.py [--mb 300] [--partitions 4] [--rounds 3] [--old-rev REV]
                                     [--baseline-rev REV] [--no-parallel-1]
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import create_topic, free_port, strata_broker  # noqa: E402
from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from tiered import (  # noqa: E402
    CREDENTIALS,
    MB,
    RECORD_SIZE,
    MiB,
    MotoServer,
    load,
    local_log_bytes,
    remote_end,
    remote_manifests,
    segment_keys,
    start_ready,
    wait_until,
)

console = Console(width=max(140, Console().width))
REPO = Path(__file__).resolve().parent.parent
FRESH = "write into fresh page cache (pwrite, no fsync)"
KCAT_P = "kcat -P (acks=all) into a fresh topic"


def note(msg: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {msg}", highlight=False, markup=False)


@dataclass
class Runs:
    seconds: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # client CPU seconds (nan: not measured)


def raw_get(s3: MotoServer, bucket: str, keys: list[tuple[str, int]]) -> float:
    client = s3.client()
    client.head_bucket(Bucket=bucket)  # connection before the clock starts
    t0 = time.perf_counter()
    total = 0
    for key, _size in keys:
        total += len(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    elapsed = time.perf_counter() - t0
    expected = sum(size for _, size in keys)
    if total != expected:
        raise RuntimeError(f"raw GET read {total:,} bytes, not {expected:,}")
    return elapsed


def fresh_write(directory: str, nbytes: int) -> float:
    """Seconds to write `nbytes` into a new file in `directory` (1 MiB pwrites, not fsynced)."""
    block = os.urandom(1 << 20)
    path = os.path.join(directory, "fresh-write.bench")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0 = time.perf_counter()
        for pos in range(0, nbytes, len(block)):
            os.pwrite(fd, block[:nbytes - pos], pos)
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)


def children_cpu() -> float:
    """CPU seconds of the waited-for child processes so far (theirs and their own children's)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its worker processes)."""
    c0 = children_cpu()
    t0 = time.perf_counter()
    result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout, env=env)
    elapsed = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {result.returncode}: {result.stderr.decode()[-500:]}")
    return elapsed, children_cpu() - c0


def first_record_seconds(argv: list[str], timeout: float) -> float:
    """Process start until the first byte on its stdout (then it is stopped)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        first = proc.stdout.read(1)
        elapsed = time.perf_counter() - t0
        if not first:
            raise RuntimeError("the replay by timestamp wrote nothing")
        return elapsed
    finally:
        proc.kill()
        proc.wait(timeout)


def count_records(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-count"})
    try:
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions))
    finally:
        consumer.close()


def timestamp_at(bootstrap: str, topic: str, partition: int, offset: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-ts", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                return msg.timestamp()[1]
        raise RuntimeError(f"no record at {topic}/{partition}@{offset}")
    finally:
        consumer.close()


def old_cli(rev: str, tmp: str) -> list[str] | None:
    """A command running replay_cli.py as it was at `rev`, or None when git cannot show it."""
    try:
        text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:operator/strata_operator/replay_cli.py"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    if "worker_main" in text:
        return None  # already the parallel version
    path = Path(tmp) / "old_replay" / "replay_cli_old.py"
    path.parent.mkdir()
    path.write_text(text)
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(path.parent)!r}); "
            "from replay_cli_old import replay; replay(prog_name='strata replay')"]


def baseline_env(rev: str, tmp: str) -> dict[str, str] | None:
    """An environment whose `python -m strata_cli` is the CLI package as it was at `rev` (extracted
    with git archive; the rest of the installation is shared), or None when git cannot give it."""
    dest = Path(tmp) / "baseline"
    dest.mkdir()
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "operator/strata_cli"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return {**os.environ, "PYTHONPATH": str(dest / "operator")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=300, help="MB (1e6) of 1 KiB records loaded")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--segment-mb", type=float, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old-rev", default="", help="commit whose replay_cli.py is the 'before' row, the "
                        "pre-parallel command (e.g. 8fc0754; '' for none)")
    parser.add_argument("--baseline-rev", default="0d9b6ad", help="commit whose strata_cli package gives the "
                        "'baseline' rows, JSON and --to-topic in the same run (an A/B; '' for none)")
    parser.add_argument("--no-parallel-1", action="store_true", help="leave out the --parallel 1 row")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    tmp = tempfile.mkdtemp(prefix="strata-bench-replay-")
    os.environ["XDG_STATE_HOME"] = os.path.join(tmp, "state")
    started = time.monotonic()
    s3 = MotoServer(Path(tmp) / "moto.log").start()
    broker = None
    try:
        bucket = s3.new_bucket("replay")
        data_dir = os.path.join(tmp, "data")
        port = free_port()
        metrics_port = free_port()
        settings = [f"tiered.s3.bucket={bucket}", f"tiered.s3.endpoint={s3.endpoint}", "tiered.s3.region=us-east-1",
                    f"segment.bytes={int(args.segment_mb * MiB)}", "tiered.upload.interval.ms=1000",
                    "log.retention.check.interval.ms=500", f"metrics.listen=127.0.0.1:{metrics_port}"]
        broker = strata_broker(data_dir, port, Path(tmp) / "broker.log", *settings)
        broker.start()
        topic = "cold"
        create_topic(broker.bootstrap, topic, args.partitions,
                     config={"retention.ms": "-1", "local.retention.bytes": "0", "local.retention.ms": "-1"})
        # A small other cold topic, read after each restart to start the broker's chunk downloader
        # (a child process) before the clock does (as bench/tiered.py).
        warm = "warm"
        create_topic(broker.bootstrap, warm, 1,
                     config={"retention.ms": "-1", "local.retention.bytes": "0", "local.retention.ms": "-1"})
        warm_n = load(broker.bootstrap, warm, 1, MB)
        t0 = time.perf_counter()
        n = load(broker.bootstrap, topic, args.partitions, int(args.mb * MB))
        note(f"loaded {n:,} records in {time.perf_counter() - t0:.1f}s")
        per_part = {p: n // args.partitions + (1 if p < n % args.partitions else 0) for p in range(args.partitions)}
        wait_until(lambda: remote_end(remote_manifests(s3, bucket, topic)) == per_part, 300, "uploads")
        wait_until(lambda: local_log_bytes(data_dir, topic, args.partitions) == 0, 120, "local deletion", 0.25)
        wait_until(lambda: remote_end(remote_manifests(s3, bucket, warm)) == {0: warm_n}, 300, "uploads (warm)")
        wait_until(lambda: local_log_bytes(data_dir, warm, 1) == 0, 120, "local deletion (warm)", 0.25)

        def restart() -> None:
            broker.stop()
            start_ready(broker, metrics_port, settings, warm, {0: warm_n}, args.timeout)
            count_records(broker.bootstrap, topic, args.partitions)  # it serves the topic again
        keys = segment_keys(remote_manifests(s3, bucket, topic))
        nbytes = sum(size for _, size in keys)
        note(f"{len(keys)} segment objects, {nbytes / MB:.1f} MB in S3, none on disk")
        deep_ts = timestamp_at(broker.bootstrap, topic, 0, int(per_part[0] * 0.9))

        strata = [sys.executable, "-m", "strata_cli", "replay", "-b", broker.bootstrap, "-t", topic,
                  "--from-offset", "0", "-q"]
        lines = os.path.join(tmp, "lines.txt")  # kcat -P's input: n text lines of 1 KiB with their newline
        with open(lines, "wb") as f:
            for first in range(0, n, 1024):
                f.write(b"".join(base64.b64encode(os.urandom(768))[:RECORD_SIZE - 1] + b"\n"
                                 for _ in range(min(1024, n - first))))
        methods: dict[str, list[str] | None] = {
            "raw S3 GET loop (boto3, whole objects)": None,
            FRESH: None,
            "kcat -C -e > /dev/null": ([kcat, "-C", "-b", broker.bootstrap, "-t", topic, "-o", "beginning", "-e", "-q"]
                                       if kcat else None),
            "strata replay -o /dev/null (JSON)": [*strata, "-o", "/dev/null"],
            "strata replay -o /dev/null (JSON) --parallel 1": [*strata, "-o", "/dev/null", "--parallel", "1"],
            "strata replay --to-topic": [*strata, "--to-topic"],
            "strata replay --to-topic --acks 1": [*strata, "--acks", "1", "--to-topic"],
            KCAT_P: [kcat, "-P", "-b", broker.bootstrap, "-l", lines, "-t"] if kcat else None,
        }
        envs: dict[str, dict[str, str]] = {}
        base_env = baseline_env(args.baseline_rev, tmp) if args.baseline_rev else None
        if base_env is not None:
            for label, extra in (("-o /dev/null (JSON)", ["-o", "/dev/null"]), ("--to-topic", ["--to-topic"])):
                name = f"baseline: strata replay at {args.baseline_rev} {label}"
                methods[name] = [*strata, *extra]
                envs[name] = base_env
        if args.no_parallel_1:
            del methods["strata replay -o /dev/null (JSON) --parallel 1"]
        old = old_cli(args.old_rev, tmp) if args.old_rev else None
        if old is not None:
            methods[f"before: strata replay at {args.old_rev} -o /dev/null (JSON)"] = [
                *old, "-b", broker.bootstrap, "-t", topic, "--from-offset", "0", "-q", "-o", "/dev/null"]
        if kcat is None:
            note("kcat not found: its row is left out")
            del methods["kcat -C -e > /dev/null"]
            del methods[KCAT_P]
        runs: dict[str, Runs] = {name: Runs() for name in methods}
        first: list[float] = []
        names = list(methods)
        copies = 0
        for round_no in range(args.rounds):
            order = names[round_no % len(names):] + names[:round_no % len(names)]
            for name in order:
                argv = methods[name]
                if argv is not None:  # a cold broker: restarted, its chunk cache cleared
                    restart()
                cpu = float("nan")
                if name == FRESH:
                    secs = fresh_write(data_dir, nbytes)
                elif argv is None:
                    secs = raw_get(s3, bucket, keys)
                elif argv[-1] in ("--to-topic", "-t"):
                    copies += 1
                    target = f"copy-{copies}"
                    # Not offloaded: the copy's upload to S3 would be the broker's work competing
                    # for the same cores, not the replay's.
                    create_topic(broker.bootstrap, target, args.partitions,
                                 config={"retention.ms": "-1", "remote.storage.enable": "false"})
                    secs, cpu = timed([*argv, target], args.timeout, envs.get(name))
                    got = count_records(broker.bootstrap, target, args.partitions)
                    if got != n:
                        raise RuntimeError(f"{name} put {got:,} records in the target, not {n:,}")
                else:
                    secs, cpu = timed(argv, args.timeout, envs.get(name))
                load1 = os.getloadavg()[0]
                runs[name].seconds.append(secs)
                runs[name].loads.append(load1)
                runs[name].cpu.append(cpu)
                note(f"round {round_no + 1}: {name}: {nbytes / MB / secs:.1f} MB/s ({secs:.2f}s, client CPU "
                     f"{cpu:.2f}s, load {load1:.1f})")
            restart()
            secs = first_record_seconds([*strata[:-3], "--from-timestamp", str(deep_ts), "-q", "-o", "-"], args.timeout)
            first.append(secs)
            note(f"round {round_no + 1}: first record of a replay starting 90% into the topic: {secs:.2f}s")

        table = Table(title=f"strata replay from S3: {n:,} records of 1 KiB, {args.partitions} partitions, "
                            f"{nbytes / MB:.0f} MB in {len(keys)} segment objects, all in S3 (moto), "
                            f"{os.cpu_count()} CPUs")
        for col in ("method", "median MB/s", "runs MB/s", "median s", "vs kcat", "client CPU s (median)",
                    "load avg (1 min)"):
            table.add_column(col, justify="left" if col == "method" else "right")
        kcat_med = (statistics.median(runs["kcat -C -e > /dev/null"].seconds)
                    if "kcat -C -e > /dev/null" in runs else float("nan"))
        for name, r in runs.items():
            med = statistics.median(r.seconds)
            cpu_med = statistics.median(r.cpu)
            table.add_row(name, f"{nbytes / MB / med:.1f}", " / ".join(f"{nbytes / MB / s:.0f}" for s in r.seconds),
                          f"{med:.2f}", f"{kcat_med / med:.2f}x", "" if cpu_med != cpu_med else f"{cpu_med:.2f}",
                          " / ".join(f"{x:.1f}" for x in r.loads))
        table.add_section()
        table.add_row("first record, replay by timestamp from 90% into the topic (s)", "",
                      " / ".join(f"{s:.2f}" for s in first), f"{statistics.median(first):.2f}", "", "", "")
        console.print(table)
        if KCAT_P in runs:
            kcat_p = statistics.median(runs[KCAT_P].seconds)
            copy_med = statistics.median(runs["strata replay --to-topic"].seconds)
            console.print(f"--to-topic vs kcat -P into the same broker: {kcat_p / copy_med:.2f}x; kcat -P vs kcat -C: "
                          f"{kcat_med / kcat_p:.2f}x; write into fresh page cache: "
                          f"{nbytes / MB / statistics.median(runs[FRESH].seconds):.0f} MB/s", highlight=False)
        json_med = statistics.median(runs["strata replay -o /dev/null (JSON)"].seconds)
        to_med = statistics.median(runs["strata replay --to-topic"].seconds)
        console.print(f"TARGETS: JSON lines to /dev/null >= kcat: {kcat_med / json_med:.2f}x "
                      f"({'met' if json_med <= kcat_med else 'NOT met'}); --to-topic >= 0.8x kcat: "
                      f"{kcat_med / to_med:.2f}x ({'met' if kcat_med / to_med >= 0.8 else 'NOT met'}); first record "
                      f"within 2 s: median {statistics.median(first):.2f}s "
                      f"({'met' if statistics.median(first) <= 2 else 'NOT met'}). MB/s = S3 segment bytes / wall "
                      "time of the whole command; each client run on a freshly restarted broker (empty chunk cache). "
                      "Client CPU = user+sys seconds of the command and its worker processes (the broker and S3 "
                      "server not included): on a shared machine the steadier measure of the client's cost.",
                      highlight=False)
        for label in ("-o /dev/null (JSON)", "--to-topic"):
            base = runs.get(f"baseline: strata replay at {args.baseline_rev} {label}")
            if base is not None:
                this = runs["strata replay -o /dev/null (JSON)" if "JSON" in label else "strata replay --to-topic"]
                console.print(f"A/B {label}: this tree {statistics.median(this.seconds):.2f}s median vs "
                              f"{args.baseline_rev} {statistics.median(base.seconds):.2f}s "
                              f"({statistics.median(base.seconds) / statistics.median(this.seconds):.2f}x; client CPU "
                              f"{statistics.median(this.cpu):.2f}s vs {statistics.median(base.cpu):.2f}s)",
                              highlight=False)
        note(f"total {time.monotonic() - started:.0f}s")
        return 0
    finally:
        if broker is not None:
            broker.stop()
        s3.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
