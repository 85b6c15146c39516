"""Operator high availability: two `strata operator --leader-election` processes against kmock's
emulated API and a real broker process. One holds the coordination.k8s.io Lease and reconciles; the
other stands by (serving its liveness endpoint) until the Lease expires.

The emulator never bumps resourceVersion, so the Lease's optimistic concurrency is not exercised here
(a real API server rejects a stale write with 409; tests/e2e has the same scenario against one).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokerproc import free_port
from confluent_kafka.admin import AdminClient
from kmockserver import KubeEmulatorProcess
from test_operator_reconcile import broker_cr, cond, topic_cr
from waiting import wait_until

LEASE = "strata-operator"
TAKEOVER = 30.0  # the bound: a new Topic reconciled within 30 s of the leader's death


class OperatorProcess:
    """One replica: `strata operator --leader-election` with its own liveness port and log."""

    def __init__(self, kube: KubeEmulatorProcess, workdir: Path, name: str) -> None:
        self.health = f"http://127.0.0.1:{free_port()}/healthz"
        self.log = workdir / f"{name}.log"
        env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig()), "STRATA_OPERATOR_NAMESPACE": "default",
               "STRATA_OPERATOR_RECONCILE_INTERVAL": "2", "STRATA_OPERATOR_RETRY_DELAY": "1",
               "STRATA_OPERATOR_BROKER_TIMEOUT": "3"}
        self.proc = subprocess.Popen([sys.executable, "-m", "strata_cli", "operator", "--leader-election",
                                      "--liveness", self.health], env=env, stdout=open(self.log, "w"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def healthz(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(self.health, timeout=3) as resp:
                return json.loads(resp.read() or b"{}") if resp.status == 200 else None
        except OSError:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeEmulatorProcess]:
    emulator = KubeEmulatorProcess(tmp_path).start()
    emulator.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    try:
        yield emulator
    finally:
        emulator.stop()


def lease(kube: KubeEmulatorProcess) -> dict[str, Any]:
    out = kube.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/default/leases/{LEASE}")
    return (out or {}).get("spec") or {}


def test_one_leader_reconciles_and_the_standby_takes_over_after_kill_9(kube, broker_factory, tmp_path):
    broker = broker_factory({"auto.create.topics.enable": "false"})
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    broker_cr(kube, "events", broker.bootstrap)
    first = OperatorProcess(kube, tmp_path, "first")
    replicas = [first]
    try:
        wait_until(lambda: "is the leader" in first.text(), timeout=60, what="the first replica leading")
        leader = lease(kube)["holderIdentity"]
        second = OperatorProcess(kube, tmp_path, "second")
        replicas.append(second)
        # The standby waits, answering its liveness probe itself (kopf does not run there).
        wait_until(lambda: second.healthz() == {"standby": True, "leader": leader}, timeout=60,
                   what="the standby's liveness endpoint naming the leader")

        topic_cr(kube, "before", "events")
        wait_until(lambda: cond(kube.get("Topic", "before"), "Ready").get("status") == "True", timeout=60,
                   what="Topic before Ready")
        assert "before" in admin.list_topics(timeout=10).topics
        time.sleep(3)  # a few more of the standby's polls
        assert lease(kube)["holderIdentity"] == leader and second.proc.poll() is None
        assert "is the leader" not in second.text() and "Starting Kopf" not in second.text(), "two leaders"

        first.proc.send_signal(signal.SIGKILL)  # no graceful release: the Lease must expire
        first.proc.wait(10)
        killed = time.monotonic()
        topic_cr(kube, "after", "events")
        wait_until(lambda: cond(kube.get("Topic", "after"), "Ready").get("status") == "True"
                   and "after" in admin.list_topics(timeout=5).topics, timeout=TAKEOVER,
                   what="Topic after reconciled by the standby within 30 s of the kill")
        took = time.monotonic() - killed
        spec = lease(kube)
        assert spec["holderIdentity"] not in (None, leader) and spec["leaseTransitions"] >= 1
        assert "is the leader" in second.text()
        # Its liveness endpoint is kopf's now (the standby's own server gave the port up).
        wait_until(lambda: (h := second.healthz()) is not None and "standby" not in h, timeout=30,
                   what="kopf's liveness endpoint on the new leader")
        print(f"standby reconciled a new Topic {took:.1f}s after the leader's SIGKILL")

        # A graceful stop releases the Lease (empty holder) instead of letting it expire.
        second.stop()
        assert second.proc.returncode == 0, second.text()[-2000:]
        assert not lease(kube).get("holderIdentity")
    finally:
        for r in replicas:
            r.stop()


def test_a_leader_that_loses_the_lease_exits(kube, tmp_path):
    """Another holder in the Lease (a standby that saw it expire while this leader was cut off): the
    leader stops at its next renewal, exiting with 70 so Kubernetes restarts it as a standby."""
    only = OperatorProcess(kube, tmp_path, "only")
    try:
        wait_until(lambda: "is the leader" in only.text(), timeout=60, what="the replica leading")
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        kube.patch("Lease", LEASE, {"spec": {"holderIdentity": "intruder", "renewTime": now}})
        only.proc.wait(30)
        assert only.proc.returncode == 70, only.text()[-2000:]
        assert "held by intruder" in only.text()
        assert lease(kube)["holderIdentity"] == "intruder"  # not released: it was not this replica's
    finally:
        only.stop()
