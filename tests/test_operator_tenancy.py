"""Issue 19, the operator made safe for many teams on one cluster: `strata operator` as a real
process against kmock's emulated Kubernetes API and real broker processes, as in
test_operator_reconcile.py (whose fixture and helpers this module reuses, with its own operator).

Proved here: adopting an existing topic changes only what the Topic names and reports what it found;
a renamed topicName never orphans or deletes a topic; the single writer is the first declarer (by
claim, recorded in status), not the oldest service; teams in two namespaces cannot use each other's
brokers or topics without consent; Microservice Ready follows its Deployment; image pull secrets
reach the pods; uninstalling leaves nothing stuck.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic
from kmockserver import KubeEmulatorProcess
from test_operator_reconcile import API, INTERVAL, broker_topic, cond, eventually

OPERATOR_ENV = {"STRATA_OPERATOR_IMAGE_PULL_SECRETS": "operator-registry"}


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEmulatorProcess]:
    """kmock and `strata operator` (all namespaces), as test_operator_reconcile's fixture."""
    workdir = tmp_path_factory.mktemp("kmock-tenancy")
    emulator = KubeEmulatorProcess(workdir).start()
    for ns in ("default", "team-a", "team-b", "team-c"):
        emulator.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    log = workdir / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(emulator.kubeconfig()), **OPERATOR_ENV,
           "STRATA_OPERATOR_RECONCILE_INTERVAL": str(INTERVAL), "STRATA_OPERATOR_RETRY_DELAY": "1",
           "STRATA_OPERATOR_DELETE_TIMEOUT": "30", "STRATA_OPERATOR_BROKER_TIMEOUT": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "strata_operator.cli", "operator", "--liveness", ""],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    emulator.operator_log = log  # type: ignore[attr-defined]
    try:
        yield emulator
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        emulator.stop()


def topic(kube: KubeEmulatorProcess, name: str, broker: str, namespace: str = "default", **spec: Any) -> None:
    spec.setdefault("team", "orders")
    kube.create({"apiVersion": API, "kind": "Topic", "metadata": {"name": name, "namespace": namespace},
                 "spec": {"brokerRef": {"name": broker}, **spec}})
    time.sleep(0.01)


def external_broker(kube: KubeEmulatorProcess, name: str, bootstrap: str, namespace: str = "default",
                    **spec: Any) -> None:
    kube.create({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": name, "namespace": namespace},
                 "spec": {"external": {"bootstrapServers": bootstrap}, **spec}})
    eventually(lambda: cond(kube.get("EventBroker", name, namespace), "Ready").get("status") == "True",
               f"EventBroker {name} Ready", kube=kube)


def ready(kube: KubeEmulatorProcess, kind: str, name: str, namespace: str = "default") -> dict[str, Any]:
    return eventually(lambda: (o := kube.get(kind, name, namespace)) and cond(o, "Ready").get("status") == "True"
                      and o, f"{kind} {namespace}/{name} Ready", kube=kube)


def alter(admin: AdminClient, topic_name: str, **configs: str) -> None:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic_name, incremental_configs=[
        ConfigEntry(k.replace("_", "."), v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()])
    [f.result(10) for f in admin.incremental_alter_configs([resource]).values()]


# -- 1. adoption changes only what the Topic names ------------------------------------------


def test_adopting_a_topic_changes_only_what_the_spec_names(kube, broker_factory):
    broker = broker_factory({"auto.create.topics.enable": "false"})
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("ledger", 3, 1, config={
        "cleanup.policy": "compact", "retention.ms": "1234567", "max.message.bytes": "2048"})])["ledger"].result(10)
    external_broker(kube, "adopt", broker.bootstrap)

    # The Topic names only retention (no partitions, no cleanupPolicy: nothing defaulted into the spec).
    topic(kube, "ledger", "adopt", retention="1d")
    cr = ready(kube, "Topic", "ledger")
    partitions, configs = broker_topic(admin, "ledger")
    assert partitions == 3
    assert configs["cleanup.policy"] == "compact" and configs["max.message.bytes"] == "2048"
    assert configs["retention.ms"] == str(86_400_000)
    assert cr["status"]["managedConfigs"] == ["retention.ms"]
    adopted = cond(cr, "Adopted")
    assert adopted["status"] == "True" and adopted["reason"] == "AdoptedWithChanges"
    assert "retention.ms: 1234567 -> 86400000" in adopted["message"]
    assert "cleanup.policy=compact" in adopted["message"] and "max.message.bytes=2048" in adopted["message"]

    # Drift on a key the spec does not name is not the operator's business; on a named key it is.
    alter(admin, "ledger", max_message_bytes="4096", retention_ms="1000")
    eventually(lambda: broker_topic(admin, "ledger")[1]["retention.ms"] == str(86_400_000), "named key reverted",
               timeout=INTERVAL * 8, kube=kube)
    time.sleep(INTERVAL * 2)
    configs = broker_topic(admin, "ledger")[1]
    assert configs["max.message.bytes"] == "4096" and configs["cleanup.policy"] == "compact"

    # A key that leaves the spec is reset to the cluster default, once; the rest stays.
    kube.patch_spec("Topic", "ledger", {"retention": None})
    eventually(lambda: broker_topic(admin, "ledger")[1]["retention.ms"] != str(86_400_000),
               "retention reset to the cluster default", kube=kube)
    configs = broker_topic(admin, "ledger")[1]
    assert configs["cleanup.policy"] == "compact" and configs["max.message.bytes"] == "4096"
    assert eventually(lambda: kube.get("Topic", "ledger")["status"]["managedConfigs"] == [], "nothing managed",
                      kube=kube)


def test_a_new_topic_gets_the_defaults_at_creation(kube, broker_factory):
    broker = broker_factory({"auto.create.topics.enable": "false"})
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    external_broker(kube, "fresh", broker.bootstrap)
    topic(kube, "fresh-events", "fresh")
    cr = ready(kube, "Topic", "fresh-events")
    partitions, configs = broker_topic(admin, "fresh-events")
    assert partitions == 1 and configs["cleanup.policy"] == "delete"
    assert cond(cr, "Adopted") == {}


# -- 2. a rename never orphans one topic nor deletes another --------------------------------


def test_a_renamed_topic_name_touches_neither_topic(kube, broker_factory):
    """Admission refuses the rename (CEL, test_operator_crds); the emulator has no CEL, like an API
    server with an older CRD: the operator itself keeps managing the topic it recorded."""
    broker = broker_factory({"auto.create.topics.enable": "false"})
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    external_broker(kube, "rename", broker.bootstrap)
    topic(kube, "payments", "rename", topicName="payments.v1", partitions=2, deletionPolicy="Delete")
    cr = ready(kube, "Topic", "payments")
    assert cr["status"]["topicName"] == "payments.v1"
    admin.create_topics([NewTopic("payments.v2", 1, 1)])["payments.v2"].result(10)  # someone else's

    kube.patch_spec("Topic", "payments", {"topicName": "payments.v2", "partitions": 4})
    c = eventually(lambda: (r := cond(kube.get("Topic", "payments"), "Ready")).get("reason") == "TopicNameChanged"
                   and r, "TopicNameChanged", kube=kube)
    assert c["status"] == "False" and "'payments.v1'" in c["message"]
    time.sleep(INTERVAL * 2)
    assert broker_topic(admin, "payments.v2")[0] == 1  # not grown: not managed
    assert broker_topic(admin, "payments.v1")[0] == 2
    assert kube.get("Topic", "payments")["status"]["topicName"] == "payments.v1"

    # Deleting the resource deletes the topic it managed, never the one its spec names now.
    kube.delete("Topic", "payments")
    eventually(lambda: kube.get("Topic", "payments") is None, "Topic gone", kube=kube)
    assert broker_topic(admin, "payments.v1") is None
    assert broker_topic(admin, "payments.v2") is not None


# -- 3. single writer by claim, not by age --------------------------------------------------


def service(kube: KubeEmulatorProcess, name: str, broker: str, namespace: str = "default", **spec: Any) -> None:
    spec.setdefault("team", "shipping")
    spec.setdefault("image", "example/app:1")
    kube.create({"apiVersion": API, "kind": "Microservice", "metadata": {"name": name, "namespace": namespace},
                 "spec": {"brokerRef": {"name": broker}, **spec}})
    time.sleep(0.01)


def writer_conflict(kube: KubeEmulatorProcess, name: str, namespace: str = "default") -> str | None:
    return cond(kube.get("Microservice", name, namespace), "WriterConflict").get("status")


def test_the_first_declarer_keeps_write_whatever_the_age(kube, broker_factory):
    broker = broker_factory({"auto.create.topics.enable": "false"})
    external_broker(kube, "claims", broker.bootstrap)
    service(kube, "old-svc", "claims", produces=["audit"])  # the oldest, producing something else
    service(kube, "new-svc", "claims", produces=["shipments"])
    eventually(lambda: writer_conflict(kube, "new-svc") == "False", "new-svc the writer", kube=kube)
    claims = kube.get("Microservice", "new-svc")["status"]["writeClaims"]
    assert [(c["topic"], c["writer"]) for c in claims] == [("shipments", True)] and claims[0]["since"]
    time.sleep(INTERVAL)

    # The older service declares the topic later: it waits; the first declarer keeps Write.
    kube.patch_spec("Microservice", "old-svc", {"produces": ["audit", "shipments"]})
    c = eventually(lambda: (r := cond(kube.get("Microservice", "old-svc"), "WriterConflict")).get("status") == "True"
                   and r, "WriterConflict on the older, later declarer", kube=kube)
    assert "default/new-svc" in c["message"]
    old = kube.get("Microservice", "old-svc")
    assert old["status"]["deniedWrites"] == ["shipments"]
    assert {c["topic"]: c["writer"] for c in old["status"]["writeClaims"]} == {"audit": True, "shipments": False}
    time.sleep(INTERVAL * 3)  # timed reconciles of both change nothing
    assert writer_conflict(kube, "new-svc") == "False" and writer_conflict(kube, "old-svc") == "True"
    perms = {p["name"]: p["operations"] for p in kube.get("Microservice", "new-svc")["status"]["permissions"]}
    assert perms["shipments"] == ["Write", "Describe"]

    # A third declarer queues behind old-svc; when the writer stops declaring, old-svc (the earlier
    # claim) takes over, not the third.
    service(kube, "third-svc", "claims", produces=["shipments"])
    eventually(lambda: writer_conflict(kube, "third-svc") == "True", "third waits", kube=kube)
    time.sleep(INTERVAL)
    kube.patch_spec("Microservice", "new-svc", {"produces": []})
    eventually(lambda: writer_conflict(kube, "old-svc") == "False", "old-svc takes over", timeout=INTERVAL * 8,
               kube=kube)
    time.sleep(INTERVAL * 2)
    assert writer_conflict(kube, "third-svc") == "True"
    assert "default/old-svc" in cond(kube.get("Microservice", "third-svc"), "WriterConflict")["message"]
