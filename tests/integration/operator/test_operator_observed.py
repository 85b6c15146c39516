"""A Microservice's status.observed: what the brokers' metering saw it produce and consume over the
last day, end to end.

`strata operator` against kmock's emulated API, a real broker with metering and tiered storage
(moto), real clients whose client ids name Microservices: the status lists per topic and direction
the bytes and records the clients sent and received (declared topics without traffic at 0, a topic
written without declaring it as `declared: false`), the usage files are read once per interval per
broker whatever the number of Microservices, and once the traffic stops the Microservices are not
written to again.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from brokerproc import free_port
from kafkaclients import METERED_VALUE as VALUE
from kafkaclients import consume_confluent, produce_as
from kmockserver import KubeEmulatorProcess
from s3server import CREDENTIALS
from test_operator_reconcile import API, broker_cr, cond, eventually

INTERVAL = 2.0  # STRATA_OPERATOR_RECONCILE_INTERVAL and _OBSERVED_INTERVAL: how old the shared usage read may get
REFRESH_LOG = re.compile(r"observed traffic of broker default/events: read ")


@pytest.fixture
def kube(tmp_path) -> Iterator[KubeEmulatorProcess]:
    emulator = KubeEmulatorProcess(tmp_path).start()
    emulator.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    log = tmp_path / "operator.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # S3 keys come from a Secret
    env.update({"KUBECONFIG": str(emulator.kubeconfig()), "STRATA_OPERATOR_RECONCILE_INTERVAL": str(INTERVAL),
                "STRATA_OPERATOR_OBSERVED_INTERVAL": str(INTERVAL),
                "STRATA_OPERATOR_RETRY_DELAY": "1", "STRATA_OPERATOR_BROKER_TIMEOUT": "3",
                "STRATA_OPERATOR_COSTREPORT_INTERVAL": "3600"})
    proc = subprocess.Popen([sys.executable, "-m", "strata_cli", "operator", "--liveness",
                             f"http://127.0.0.1:{free_port()}/healthz"], env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)
    emulator.operator_log = log  # type: ignore[attr-defined]
    try:
        yield emulator
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        emulator.stop()
    assert proc.returncode in (0, -15), log.read_text()[-3000:]


def _observed(kube: KubeEmulatorProcess, name: str) -> dict[tuple[str, str], dict[str, Any]]:
    status = ((kube.get("Microservice", name) or {}).get("status") or {}).get("observed") or {}
    return {(t["topic"], t["direction"]): t for t in status.get("topics") or []}


def _close(value: int, expected: int) -> bool:
    return expected <= value <= expected * 1.02 + 2048  # the batches' framing on top of the values


def test_microservice_status_shows_the_traffic_of_the_last_day(kube, broker_factory, s3):
    settings = s3.broker_settings(**{"metering.snapshot.interval.ms": "500", "metering.sample.interval.ms": "200",
                                     "tiered.upload.interval.ms": "1000", "auto.create.topics.enable": "false"})
    broker = broker_factory(settings, env=CREDENTIALS)
    broker_cr(kube, "events", broker.bootstrap)
    # An external broker has no tieredStorage here: the usage is where its CostReport reads it.
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-keys"},
                 "stringData": {"AWS_ACCESS_KEY_ID": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                "AWS_SECRET_ACCESS_KEY": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}})
    kube.create({"apiVersion": API, "kind": "CostReport", "metadata": {"name": "monthly"},
                 "spec": {"brokerRef": {"name": "events"}, "interval": "1h",
                          "usageSource": {"bucket": s3.name, "endpoint": s3.server.endpoint,
                                          "clusterId": "strata-local", "credentialsSecret": {"name": "s3-keys"}}}})
    for name in ("orders", "audit"):
        kube.create({"apiVersion": API, "kind": "Topic", "metadata": {"name": name},
                     "spec": {"brokerRef": {"name": "events"}, "team": "shop", "partitions": 2}})
    services = {"checkout": (["orders"], []), "fulfilment": ([], ["orders"]), "archive": ([], ["orders"])}
    for name, (produces, consumes) in services.items():
        kube.create({"apiVersion": API, "kind": "Microservice", "metadata": {"name": name},
                     "spec": {"brokerRef": {"name": "events"}, "team": "shop", "produces": produces,
                              "consumes": consumes}})
    for name in ("orders", "audit"):
        eventually(lambda n=name: cond(kube.get("Topic", n), "Ready").get("status") == "True", f"Topic {name}",
                   kube=kube)
    # before any traffic: the declared topics, at 0
    idle = eventually(lambda: _observed(kube, "archive"), "archive's observed status", timeout=30, kube=kube)
    assert idle == {("orders", "consume"): {"topic": "orders", "direction": "consume", "bytes": 0, "records": 0,
                                            "declared": True}}

    sent = produce_as(broker.bootstrap, "checkout", "orders", 300)
    undeclared = produce_as(broker.bootstrap, "checkout", "audit", 20)  # checkout does not declare audit
    received = consume_confluent(broker.bootstrap, "orders", 2, expected=300, timeout=60,
                                 **{"client.id": "fulfilment"})
    assert len(received) == 300
    received_bytes = sum(len(r.value) for r in received)

    def settled() -> bool:
        writes, reads = _observed(kube, "checkout"), _observed(kube, "fulfilment")
        return (("orders", "produce") in writes and _close(writes["orders", "produce"]["bytes"], sent)
                and ("audit", "produce") in writes and _close(writes["audit", "produce"]["bytes"], undeclared)
                and ("orders", "consume") in reads and _close(reads["orders", "consume"]["bytes"], received_bytes))

    eventually(settled, "observed bytes matching what the clients sent and received", timeout=60, kube=kube)
    writes, reads = _observed(kube, "checkout"), _observed(kube, "fulfilment")
    assert set(writes) == {("orders", "produce"), ("audit", "produce")}
    assert writes["orders", "produce"]["records"] == 300 and writes["orders", "produce"]["declared"] is True
    assert writes["audit", "produce"]["records"] == 20 and writes["audit", "produce"]["declared"] is False
    assert reads["orders", "consume"]["records"] == 300 and reads["orders", "consume"]["declared"] is True
    assert sent == 300 * VALUE and received_bytes == sent
    for entry in (*writes.values(), *reads.values()):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["lastSeen"])
    assert _observed(kube, "archive") == idle  # declared, never read: still 0, no lastSeen
    assert kube.get("Microservice", "checkout")["status"]["observed"]["window"] == "24h"

    # The traffic stopped: once the last snapshots are in, nothing changes and nothing is written, while
    # the three services keep being reconciled and the usage is read once per interval for all of them.
    time.sleep(3 * INTERVAL)
    versions = {name: kube.get("Microservice", name)["metadata"]["resourceVersion"] for name in services}
    log = kube.operator_log  # type: ignore[attr-defined]
    before = len(REFRESH_LOG.findall(log.read_text()))
    started = time.monotonic()
    time.sleep(6 * INTERVAL)
    # At least one read comes (on a loaded machine a reconcile round can take longer than the span:
    # wait for it), and never more than one per interval over the time that passed.
    eventually(lambda: len(REFRESH_LOG.findall(log.read_text())) > before, "a usage read", timeout=60, kube=kube)
    span = time.monotonic() - started
    refreshes = len(REFRESH_LOG.findall(log.read_text())) - before
    assert {name: kube.get("Microservice", name)["metadata"]["resourceVersion"] for name in services} == versions
    assert 1 <= refreshes <= span / INTERVAL + 1, (refreshes, span)
