"""Run `strata operator` with tracemalloc on and write where its memory is, for bench/operator_scale.py
--trace-memory DIR (a diagnosis aid: tracemalloc itself costs memory and CPU, so the figures of a
traced run are not the benchmark's).

A thread samples the process's RSS every 2 s; at each new high 16 MiB above the last report (at most
one per 20 s), and at SIGUSR1, it writes DIR/mem-<seconds>-<rss>.txt: RSS, threads, Python's
traced total, the top allocation sites (by line and by traceback) and the most numerous object
types (gc). Usage: python bench/operator_memprobe.py DIR [strata operator options...]
"""

from __future__ import annotations

import collections
import gc
import os
import runpy
import signal
import sys
import threading
import time
import tracemalloc
from pathlib import Path


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def report(out: Path, started: float, why: str) -> None:
    rss = rss_mib()
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    traced, peak = tracemalloc.get_traced_memory()
    lines = [f"{why}: rss {rss:.0f} MiB, threads {threading.active_count()} (python) "
             f"{Path('/proc/self/status').read_text().split('Threads:')[1].split()[0]} (os), "
             f"traced {traced / 2**20:.0f} MiB (peak {peak / 2**20:.0f})", "", "-- by line"]
    lines += [str(s) for s in snap.statistics("lineno")[:40]]
    lines += ["", "-- by traceback"]
    for stat in snap.statistics("traceback")[:15]:
        lines.append(f"{stat.size / 2**20:.1f} MiB in {stat.count} blocks")
        lines += ["    " + line for line in stat.traceback.format()]
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    lines += ["", "-- gc objects by type"] + [f"{n:9d} {t}" for t, n in counts.most_common(40)]
    name = f"mem-{time.monotonic() - started:06.0f}-{rss:.0f}.txt"
    (out / name).write_text("\n".join(lines) + "\n")


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(int(os.environ.get("STRATA_MEMPROBE_FRAMES", "6")))
    started = time.monotonic()
    asked = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: asked.set())

    def watch() -> None:
        last_rss, last_at = 0.0, 0.0
        while True:
            asked.wait(2.0)
            rss = rss_mib()
            if asked.is_set():
                asked.clear()
                report(out, started, "asked")
            elif rss > last_rss + 16 and time.monotonic() - last_at > 20:
                report(out, started, "new high")
                last_rss, last_at = rss, time.monotonic()

    threading.Thread(target=watch, daemon=True, name="memprobe").start()
    sys.argv = ["strata_cli", "operator", *sys.argv[2:]]
    runpy.run_module("strata_cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
