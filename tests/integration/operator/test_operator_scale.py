"""Issue 27, the idle cost of the control plane: `strata operator` as a real process against the
emulated Kubernetes API (tests/support/kmockserver.py) and a real broker, with Kafka requests counted on the
wire in front of the broker (tests/support/faultproxy.py) and Kubernetes requests counted by the emulator.

Proved here: the emulator looks objects up by key (thousands of objects stay quick); with nothing
changing, the broker's resync (one loop per EventBroker, no timer per resource) costs a snapshot per
pass, not requests per resource, and no Kubernetes request at all (Deployments come from a watch);
a broker that is down costs one failing admin session with backoff (few threads, few connections)
while every affected resource says so in a condition. bench/operator_scale.py
measures the same at 100 to 5,000 resources.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokerproc import BrokerProcess
from faultproxy import KafkaProxy, RefusingListener
from kmockserver import KubeEmulatorProcess
from test_operator_reconcile import API, cond, eventually

INTERVAL = 2.0


def start_operator(workdir: Path, kube: KubeEmulatorProcess, **env: str) -> subprocess.Popen[bytes]:
    log = workdir / "operator.log"
    kube.operator_log = log  # type: ignore[attr-defined]
    full_env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig()),
                "STRATA_OPERATOR_RECONCILE_INTERVAL": str(INTERVAL), "STRATA_OPERATOR_RETRY_DELAY": "2",
                "STRATA_OPERATOR_DELETE_TIMEOUT": "30", "STRATA_OPERATOR_BROKER_TIMEOUT": "3", **env}
    return subprocess.Popen([sys.executable, "-m", "strata_cli", "operator", "--liveness", ""],
                            env=full_env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeEmulatorProcess]:
    emulator = KubeEmulatorProcess(tmp_path).start()
    emulator.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    yield emulator
    emulator.stop()


def kube_requests(kube: KubeEmulatorProcess) -> dict[str, Any]:
    return kube.request("GET", "/_kmock/stats")


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_emulator_looks_objects_up_by_key(kube):
    for i in range(2000):
        kube.create({"apiVersion": API, "kind": "Topic", "metadata": {"name": f"t{i:04d}"}, "spec": {"n": i}})
    started = time.monotonic()
    for i in range(0, 2000, 10):
        assert kube.get("Topic", f"t{i:04d}")["spec"]["n"] == i
        kube.patch("Topic", f"t{i:04d}", {"status": {"seen": True}})
    took = time.monotonic() - started
    assert took < 30, f"200 gets and 200 patches among 2,000 objects took {took:.1f}s"
    assert kube.get("Topic", "t0010")["status"] == {"seen": True}
    assert kube.get("Topic", "missing") is None
    assert len(kube.list("Topic")) == 2000
    kube.delete("Topic", "t0001")
    assert kube.get("Topic", "t0001") is None and len(kube.list("Topic", None)) == 1999
    stats = kube_requests(kube)
    assert stats["byMethod"]["POST"] == 2001 and stats["byMethod"]["PATCH"] == 200, stats


def test_emulator_generates_names_as_the_api_server(kube):
    import re
    import urllib.error

    def event(**md: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Event", "metadata": {"namespace": "default", **md},
                "involvedObject": {"kind": "Topic", "name": "t"}, "reason": "Test", "message": "m"}
    path = "/api/v1/namespaces/default/events"
    names = [kube.request("POST", path, event(generateName="t.1a2b."), "application/json")["metadata"]["name"]
             for _ in range(100)]
    assert len(set(names)) == 100
    assert all(re.fullmatch(r"t\.1a2b\.[bcdfghjklmnpqrstvwxz2456789]{5}", n) for n in names), names
    assert len(kube.list("Event")) == 100
    # A create naming an object that exists is the only 409.
    kube.request("POST", path, event(name="fixed"), "application/json")
    with pytest.raises(urllib.error.HTTPError) as clash:
        kube.request("POST", path, event(name="fixed"), "application/json")
    assert clash.value.code == 409


def test_idle_operator_costs_a_snapshot_per_broker_and_no_writes(kube, tmp_path):
    broker = BrokerProcess(tmp_path / "broker", settings={"auto.create.topics.enable": "false"})
    proxy = KafkaProxy(broker.port)
    broker.advertise = f"127.0.0.1:{proxy.port}"
    broker.start()
    # Full resyncs (a Microservice's Secret read and objects applied again) out of the measured window.
    proc = start_operator(tmp_path, kube, STRATA_OPERATOR_FULL_RESYNC="600")
    try:
        kube.create({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": "b"},
                     "spec": {"external": {"bootstrapServers": f"127.0.0.1:{proxy.port}"}}})
        topics, services = 30, 6
        for i in range(topics):
            kube.create({"apiVersion": API, "kind": "Topic", "metadata": {"name": f"t{i:02d}"},
                         "spec": {"brokerRef": {"name": "b"}, "team": "t", "retention": "1d"}})
        for i in range(services):  # two of them with an image (a Deployment), the others credentials only
            kube.create({"apiVersion": API, "kind": "Microservice", "metadata": {"name": f"s{i}"},
                         "spec": {"brokerRef": {"name": "b"}, "team": "t", "produces": [f"t{i:02d}"],
                                  "consumes": [f"t{i + 10:02d}"], **({"image": "example/app:1"} if i < 2 else {})}})
        # The emulator runs no pods: the Deployments become available here, and the resync sees it
        # through the Deployment watch (no GET of a Deployment per pass) and makes those services Ready.
        for i in range(2):
            eventually(lambda i=i: kube.get("Deployment", f"s{i}"), f"Deployment s{i}", timeout=60, kube=kube)
            kube.patch("Deployment", f"s{i}", {"status": {"availableReplicas": 1, "readyReplicas": 1}})

        def all_ready() -> bool:
            return all(cond(o, "Ready").get("status") == "True"
                       for kind, n in (("Topic", topics), ("Microservice", services))
                       for o in kube.list(kind) or [None] * n) and len(kube.list("Topic")) == topics
        eventually(all_ready, "every Topic and Microservice Ready", timeout=90, kube=kube)
        time.sleep(INTERVAL * 2)  # the first jittered ticks have run
        k0, a0, c0 = kube_requests(kube)["requests"], proxy.total(), dict(proxy.counts)
        window = INTERVAL * 5
        time.sleep(window)
        k1, a1 = kube_requests(kube)["requests"], proxy.total()
        ticks = (topics + services) * window / INTERVAL  # 90 resource checks by the resync in the window
        # Per resource and tick the operator used to send 3 (Topic) or 4+ (Microservice) Kafka requests:
        # 300+ here. A snapshot is 5 requests, at most one per half interval, plus the broker's own timer.
        by_key = {k: v - c0.get(k, 0) for k, v in proxy.counts.items() if v - c0.get(k, 0)}
        assert a1 - a0 < 80, f"{a1 - a0} Kafka requests for {ticks:.0f} timed reconciles (by api key: {by_key})"
        # Nothing changed: no status PATCH, no apply, no GET (Deployments come from the watch).
        assert k1 - k0 <= 2, f"{k1 - k0} Kubernetes requests in {window:.0f} s of {ticks:.0f} resource checks"
        # One session: its AdminClient's two connections and one ApiVersions, again after a reconnect
        # (a timeout on a loaded machine drops the client); not a client per reconcile (36 resources here).
        assert proxy.connections <= 8, f"{proxy.connections} connections to the broker"

        # Drift is still found (from the snapshot) and reverted.
        from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        drift = ConfigResource(ConfigResource.Type.TOPIC, "t05", incremental_configs=[
            ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
        for fut in admin.incremental_alter_configs([drift]).values():
            fut.result(10)

        def reverted() -> bool:
            res = ConfigResource(ConfigResource.Type.TOPIC, "t05")
            (configs,) = [f.result(10) for f in admin.describe_configs([res]).values()]
            return configs["retention.ms"].value == str(24 * 3600 * 1000)
        eventually(reverted, "drift reverted", timeout=INTERVAL * 10, kube=kube)
    finally:
        stop(proc)
        proxy.close()
        broker.stop()


def test_a_broker_that_is_down_costs_one_session(kube, tmp_path):
    down = RefusingListener()
    proc = start_operator(tmp_path, kube)
    try:
        kube.create({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": "gone"},
                     "spec": {"external": {"bootstrapServers": f"127.0.0.1:{down.port}"}}})
        for i in range(20):
            kube.create({"apiVersion": API, "kind": "Topic", "metadata": {"name": f"t{i:02d}"},
                         "spec": {"brokerRef": {"name": "gone"}, "team": "t"}})

        def all_unavailable() -> bool:
            items = kube.list("Topic")
            return len(items) == 20 and all(cond(o, "Ready").get("reason") == "BrokerUnavailable" for o in items)
        eventually(all_unavailable, "every Topic Ready=False, BrokerUnavailable", timeout=90, kube=kube)
        accepted = down.accepted
        time.sleep(15)
        # One session with backoff: a few reconnects in 15 s, not one client per Topic and retry.
        assert down.accepted - accepted < 100, f"{down.accepted - accepted} connection attempts in 15 s"
        assert threads(proc.pid) < 60, f"{threads(proc.pid)} operator threads"
        print(f"down broker: {down.accepted - accepted} connection attempts in 15 s, {threads(proc.pid)} threads")
        assert cond(kube.get("EventBroker", "gone"), "Ready").get("reason") == "BrokerUnavailable"
    finally:
        stop(proc)
        down.close()
