"""The control plane at scale: `strata operator` as a real process against the emulated Kubernetes
API (tests/support/kmockserver.py) and one real broker with SCRAM and the authorizer on.

For each size N it applies N Topics (deletionPolicy Delete) and N/5 credentials-only Microservices
(each producing one topic and consuming another), then prints:

- time from the last apply until every Topic / every Microservice is Ready;
- the steady state, nothing changing, over --steady seconds (after one reconcile interval of
  settling): the operator's CPU (% of one core, from /proc/<pid>/stat), its threads, Kafka
  requests per minute counted on the wire in front of the broker (a counting TCP proxy the broker
  advertises, so every connection goes through it: logins included), and Kubernetes requests per
  minute counted by the emulated API (GET /_kmock/stats; the benchmark does not poll during this);
- the operator's RSS at the end of the steady state (VmRSS, and by kind of mapping from smaps) and its
  peak (VmHWM) over the whole run (with --cold-start: over the apply and the steady state; the
  restarted operator's peak is the cold start's);
- the time to delete min(500, N) Topics (until their resources are gone from the API);
- with --trace-memory DIR: where the operator's memory is (bench/operator_memprobe.py), not figures;
- with --cold-start: the operator stopped, every resource's conditions cleared, the operator started
  again with all of them in the API: time to all Ready, its peak RSS and threads, the connections it
  opened to the broker, and the handler failures in its log.

Run:  python bench/operator_scale.py                      # 100 and 1,000 Topics
      python bench/operator_scale.py --sizes 100 --steady 60
      python bench/operator_scale.py --with-5000            # adds 5,000
The reconcile interval is the production default (60 s) unless --interval says otherwise. The
machine's load (`uptime`) is printed with the table: on a shared machine the figures move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))

import secutil  # noqa: E402
from brokerproc import BrokerProcess, free_port  # noqa: E402
from faultproxy import KafkaProxy  # noqa: E402
from kmockserver import KubeEmulatorProcess  # noqa: E402

API = "strata.dev/v1alpha1"
OPERATOR_USER = "strata-operator"
# kopf's words for a handler run that failed (not "Resuming is processed: 1 succeeded; 0 failed.")
FAILURE = re.compile(r"failed (?:temporarily|permanently|with an exception)")


def proc_stat(pid: int) -> dict[str, float]:
    """CPU seconds (user + system), threads and peak RSS (MiB) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":" in line)
    return {"cpu": (int(fields[11]) + int(fields[12])) / ticks, "threads": int(status["Threads"]),
            "hwm_mib": int(status["VmHWM"].split()[0]) / 1024, "rss_mib": int(status["VmRSS"].split()[0]) / 1024}


def memory_map(pid: int) -> dict[str, float]:
    """The process's resident memory (MiB) by kind of mapping, from /proc/<pid>/smaps: glibc's main heap,
    other anonymous memory (Python's object arenas, other malloc arenas, thread stacks), files."""
    out = {"heap": 0.0, "anon": 0.0, "file": 0.0}
    kind = "anon"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+$", head[0]):
            name = head[5] if len(head) > 5 else ""
            kind = "heap" if name == "[heap]" else "file" if name.startswith("/") else "anon"
        elif head[0] == "Rss:":
            out[kind] += int(head[1]) / 1024
    return {k: round(v) for k, v in out.items()}


def kube_requests(kube: KubeEmulatorProcess) -> int:
    with urllib.request.urlopen(kube.url + "/_kmock/stats", timeout=30) as resp:
        return int(json.loads(resp.read())["requests"])


def ready_count(kube: KubeEmulatorProcess, kind: str) -> tuple[int, int]:
    items = kube.list(kind)
    ready = sum(1 for o in items for c in (o.get("status") or {}).get("conditions") or []
                if c["type"] == "Ready" and c["status"] == "True")
    return ready, len(items)


def wait_ready(kube: KubeEmulatorProcess, kinds: dict[str, int], start: float, timeout: float) -> dict[str, float]:
    """Seconds from `start` until all `kinds[kind]` resources of each kind are Ready (nan on timeout)."""
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(kinds) and time.monotonic() < deadline:
        for kind, want in kinds.items():
            if kind not in done and ready_count(kube, kind)[0] >= want:
                done[kind] = time.monotonic() - start
        time.sleep(0.5)
    return {kind: done.get(kind, float("nan")) for kind in kinds}


def raise_fd_limit() -> None:
    """The broker keeps several files open per partition (5,000 topics: more than 20,000): lift this process's soft
    limit on open files to the hard one, which the broker (a child) inherits."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_size(n: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    password = "op-" + uuid.uuid4().hex
    creds = workdir / "users.json"
    secutil.write_credentials(creds, {OPERATOR_USER: password})
    sasl_port = free_port()
    proxy = KafkaProxy(sasl_port)
    broker = BrokerProcess(workdir / "broker", listeners={"SASL_PLAINTEXT": sasl_port},
                           advertise=f"SASL_PLAINTEXT://127.0.0.1:{proxy.port}", settings={
                               "sasl.credentials.file": str(creds),
                               "sasl.enabled.mechanisms": "SCRAM-SHA-512,SCRAM-SHA-256",
                               "authorizer.enable": "true", "super.users": f"User:{OPERATOR_USER}",
                               "auto.create.topics.enable": "false"}).start()
    kube = KubeEmulatorProcess(workdir).start()
    operator: subprocess.Popen[bytes] | None = None
    try:
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        bootstrap = f"127.0.0.1:{proxy.port}"
        kube.create({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": "events"}, "spec": {
            "external": {"bootstrapServers": bootstrap},
            "listeners": [{"name": "sasl", "port": proxy.port, "authentication": "scram-sha-512"}]}})
        env: dict[str, str] = {**os.environ, "KUBECONFIG": str(kube.kubeconfig()),
               "STRATA_OPERATOR_RECONCILE_INTERVAL": str(args.interval),
               "STRATA_OPERATOR_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
               "STRATA_OPERATOR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
               "STRATA_OPERATOR_KAFKA_SASL_USERNAME": OPERATOR_USER,
               "STRATA_OPERATOR_KAFKA_SASL_PASSWORD": password,
               **dict(kv.split("=", 1) for kv in args.operator_env)}
        operator = start_operator(env, workdir / "operator.log", args.trace_memory)
        wait_ready(kube, {"EventBroker": 1}, time.monotonic(), 120)
        services = max(1, n // 5)
        for i in range(n):
            kube.create({"apiVersion": API, "kind": "Topic", "metadata": {"name": f"t{i:05d}"},
                         "spec": {"brokerRef": {"name": "events"}, "team": "bench", "partitions": 1,
                                  "retention": "1d", "deletionPolicy": "Delete"}})
        for i in range(services):
            kube.create({"apiVersion": API, "kind": "Microservice", "metadata": {"name": f"svc{i:04d}"},
                         "spec": {"brokerRef": {"name": "events"}, "team": "bench",
                                  "produces": [f"t{(2 * i) % n:05d}"], "consumes": [f"t{(2 * i + 1) % n:05d}"]}})
        applied = time.monotonic()
        to_ready = wait_ready(kube, {"Topic": n, "Microservice": services}, applied, args.ready_timeout)
        print(f"  {n}: Ready after {to_ready}", flush=True)
        time.sleep(args.interval)  # the first (jittered) timer ticks, then the steady state
        before = proc_stat(operator.pid)
        k0, a0, t0 = kube_requests(kube), proxy.total(), time.monotonic()
        time.sleep(args.steady)
        after = proc_stat(operator.pid)
        steady_map = memory_map(operator.pid)
        if args.trace_memory:
            operator.send_signal(signal.SIGUSR1)  # the probe's report of the steady state
        k1, a1, t1 = kube_requests(kube), proxy.total(), time.monotonic()
        minutes = (t1 - t0) / 60
        cold: dict[str, Any] = {}
        peak_mib = 0.0  # the first operator's peak (apply and steady state), when a cold start replaces it
        if args.cold_start:
            peak_mib = proc_stat(operator.pid)["hwm_mib"]
            stop_operator(operator)
            for kind, count, fmt in (("Topic", n, "t{:05d}"), ("Microservice", services, "svc{:04d}")):
                for i in range(count):
                    kube.patch(kind, fmt.format(i), {"status": {"conditions": []}})
            conns = proxy.connections
            operator = start_operator(env, workdir / "operator-cold.log", args.trace_memory)
            started = time.monotonic()
            peak_threads = 0
            sampler_stop = threading.Event()

            def sample() -> None:
                nonlocal peak_threads
                while not sampler_stop.wait(0.5):
                    try:
                        peak_threads = max(peak_threads, proc_stat(operator.pid)["threads"])
                    except (OSError, KeyError):
                        return
            threading.Thread(target=sample, daemon=True).start()
            took = wait_ready(kube, {"Topic": n, "Microservice": services}, started, args.ready_timeout)
            sampler_stop.set()
            stat = proc_stat(operator.pid)
            failures = len(FAILURE.findall((workdir / "operator-cold.log").read_text(errors="replace")))
            cold = {"cold_s": max(took.values()), "cold_rss_mib": stat["hwm_mib"], "cold_threads": peak_threads,
                    "cold_connections": proxy.connections - conns, "cold_failures": failures,
                    "cold_cpu_s": stat["cpu"]}
            print(f"  {n}: cold start {cold}", flush=True)
        deleting = min(500, n)
        started = time.monotonic()
        for i in range(deleting):
            kube.delete("Topic", f"t{i:05d}")
        deadline = time.monotonic() + args.ready_timeout
        while time.monotonic() < deadline and len(kube.list("Topic")) > n - deleting:
            time.sleep(0.5)
        remaining = len(kube.list("Topic"))
        delete_s = time.monotonic() - started if remaining <= n - deleting else float("nan")
        final = proc_stat(operator.pid)
        return {"n": n, "services": services, "topics_ready_s": to_ready["Topic"],
                "services_ready_s": to_ready["Microservice"],
                "cpu_pct": 100 * (after["cpu"] - before["cpu"]) / (t1 - t0),
                "threads": after["threads"], "peak_rss_mib": peak_mib or final["hwm_mib"],
                "steady_rss_mib": after["rss_mib"],
                "steady_rss_by_mapping_mib": steady_map,
                "kafka_req_min": (a1 - a0) / minutes, "kube_req_min": (k1 - k0) / minutes,
                "broker_connections": proxy.connections, "deleted": deleting, "delete_s": delete_s,
                "cpu_s_total": final["cpu"], **cold}
    finally:
        if operator is not None:
            stop_operator(operator)
        kube.stop()
        broker.stop()


def start_operator(env: dict[str, str], log: Path, trace: Path | None = None) -> subprocess.Popen[bytes]:
    """`strata operator`; under bench/operator_memprobe.py (tracemalloc reports into `trace`) when given."""
    command = [sys.executable, "-m", "strata_cli", "operator"] if trace is None else \
        [sys.executable, str(ROOT / "bench" / "operator_memprobe.py"), str(trace / log.stem)]
    return subprocess.Popen([*command, "--liveness", ""], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def stop_operator(operator: subprocess.Popen[bytes]) -> None:
    operator.terminate()
    try:
        operator.wait(15)
    except subprocess.TimeoutExpired:
        operator.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000", help="comma-separated Topic counts (default 100,1000)")
    parser.add_argument("--with-5000", action="store_true", help="add 5,000 Topics (1,000 Microservices)")
    parser.add_argument("--interval", type=float, default=60.0, help="STRATA_OPERATOR_RECONCILE_INTERVAL")
    parser.add_argument("--steady", type=float, default=120.0, help="seconds of steady state measured")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--cold-start", action="store_true",
                        help="also restart the operator with every resource present (conditions cleared)")
    parser.add_argument("--operator-env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for the operator only (repeatable)")
    parser.add_argument("--trace-memory", type=Path, default=None, metavar="DIR",
                        help="run the operator under bench/operator_memprobe.py: tracemalloc reports in DIR "
                             "(a diagnosis: its own cost makes the figures not the benchmark's)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s] + ([5000] if args.with_5000 else [])
    raise_fd_limit()
    rows = []
    for n in sizes:
        workdir = Path(tempfile.mkdtemp(prefix=f"operator-scale-{n}-"))
        print(f"size {n}: work dir {workdir}", flush=True)
        rows.append(run_size(n, args, workdir))
        load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        print(f"  {n}: {json.dumps(rows[-1])}; load: {load}", flush=True)  # each size's figures as they come
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\nreconcile interval {args.interval:.0f}s, steady state measured over {args.steady:.0f}s; load: {load}")
    print("| resources | all Ready after apply (Topics / Microservices) | steady state: operator CPU, threads | "
          "Kafka req/min | Kubernetes req/min | RSS: steady / peak | broker connections (whole run) | delete Topics |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} Topics, {r['services']} Microservices | {r['topics_ready_s']:.1f} s / "
              f"{r['services_ready_s']:.1f} s | {r['cpu_pct']:.1f}% of a core, {r['threads']} threads | "
              f"{r['kafka_req_min']:.0f} | {r['kube_req_min']:.0f} | "
              f"{r['steady_rss_mib']:.0f} / {r['peak_rss_mib']:.0f} MiB | "
              f"{r['broker_connections']} | {r['deleted']} in {r['delete_s']:.1f} s |")
    cold = [r for r in rows if "cold_s" in r]
    if cold:
        print("\n| cold start | all Ready | operator CPU | peak RSS | peak threads | broker connections | "
              "handler failures |")
        print("|---|---|---|---|---|---|---|")
        for r in cold:
            print(f"| {r['n']} Topics, {r['services']} Microservices | {r['cold_s']:.1f} s | {r['cold_cpu_s']:.1f} s "
                  f"| {r['cold_rss_mib']:.0f} MiB | {r['cold_threads']} | {r['cold_connections']} | "
                  f"{r['cold_failures']} |")


if __name__ == "__main__":
    main()
