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
from brokerproc import BrokerProcess
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic
from kmockserver import KubeEmulatorProcess
from test_operator_reconcile import API, broker_topic, cond
from test_operator_reconcile import eventually as _eventually

# The operator's timed reconcile: longer than test_operator_reconcile's, as this module keeps some thirty
# resources (each with a timer) on a machine that may be loaded.
INTERVAL = 3.0
# Waits for what a timed reconcile (every INTERVAL s) does: generous, the machine may be loaded.
TIMER_WAIT = 60.0


def eventually(check: Any, what: str, timeout: float = TIMER_WAIT, kube: Any = None) -> Any:
    return _eventually(check, what, timeout=timeout, kube=kube)


OPERATOR_ENV = {"STRATA_OPERATOR_IMAGE_PULL_SECRETS": "operator-registry"}


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker for the module (each test uses its own topic names and EventBroker resources): no
    EventBroker of an earlier test points at a dead broker, which would slow every timer down."""
    proc = BrokerProcess(tmp_path_factory.mktemp("tenancy-broker") / "broker",
                         settings={"auto.create.topics.enable": "false"}).start()
    yield proc
    proc.stop()


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
    proc = subprocess.Popen([sys.executable, "-m", "strata_cli", "operator", "--liveness", ""],
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


@pytest.fixture(autouse=True)
def clean_slate(kube: KubeEmulatorProcess) -> Iterator[None]:
    """After each test, its resources go (with the skip-cleanup escape hatch, so nothing waits on a
    broker): fewer live resources, fewer timers, a quicker operator for the next test."""
    yield
    kinds = ("Microservice", "Topic", "CostReport", "EventBroker")
    for kind in kinds:
        for obj in kube.list(kind, namespace=None):
            md = obj["metadata"]
            kube.patch(kind, md["name"], {"metadata": {"annotations": {"strata.dev/skip-cleanup": "true"}}},
                       md["namespace"])
            kube.delete(kind, md["name"], md["namespace"])
    eventually(lambda: not any(kube.list(kind, namespace=None) for kind in kinds), "resources gone", kube=kube)


def topic(kube: KubeEmulatorProcess, name: str, broker: str, namespace: str = "default", **spec: Any) -> None:
    spec.setdefault("team", "orders")
    kube.create({"apiVersion": API, "kind": "Topic", "metadata": {"name": name, "namespace": namespace},
                 "spec": {"brokerRef": {"name": broker}, **spec}})
    time.sleep(0.01)


def external_broker(kube: KubeEmulatorProcess, name: str, bootstrap: str, namespace: str = "default",
                    **spec: Any) -> None:
    if kube.get("EventBroker", name, namespace) is None:  # one per module and namespace: fewer timers
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


def test_adopting_a_topic_changes_only_what_the_spec_names(kube, kafka):
    broker = kafka
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("ledger", 3, 1, config={
        "cleanup.policy": "compact", "retention.ms": "1234567", "max.message.bytes": "2048"})])["ledger"].result(10)
    external_broker(kube, "main", broker.bootstrap)

    # The Topic names only retention (no partitions, no cleanupPolicy: nothing defaulted into the spec).
    topic(kube, "ledger", "main", retention="1d")
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
    # ... and as an Event on the Topic, for `kubectl describe` and whoever watches events.
    eventually(lambda: [e for e in kube.list("Event", "default")
                        if e.get("involvedObject", {}).get("name") == "ledger"
                        and e.get("reason") == "AdoptedWithChanges"
                        and "retention.ms: 1234567 -> 86400000" in e.get("message", "")],
               "an AdoptedWithChanges Event on Topic ledger", kube=kube)
    # ... and as an Event on the Topic, for `kubectl describe` and whoever watches events.
    eventually(lambda: [e for e in kube.list("Event", "default")
                        if e.get("involvedObject", {}).get("name") == "ledger"
                        and e.get("reason") == "AdoptedWithChanges"
                        and "retention.ms: 1234567 -> 86400000" in e.get("message", "")],
               "an AdoptedWithChanges Event on Topic ledger", kube=kube)

    # Drift on a key the spec does not name is not the operator's business; on a named key it is.
    alter(admin, "ledger", max_message_bytes="4096", retention_ms="1000")
    eventually(lambda: broker_topic(admin, "ledger")[1]["retention.ms"] == str(86_400_000), "named key reverted",
               timeout=TIMER_WAIT, kube=kube)
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


def test_a_new_topic_gets_the_defaults_at_creation(kube, kafka):
    broker = kafka
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    external_broker(kube, "main", broker.bootstrap)
    topic(kube, "fresh-events", "main")
    cr = ready(kube, "Topic", "fresh-events")
    partitions, configs = broker_topic(admin, "fresh-events")
    assert partitions == 1 and configs["cleanup.policy"] == "delete"
    assert cond(cr, "Adopted") == {}


# -- 2. a rename never orphans one topic nor deletes another --------------------------------


def test_a_renamed_topic_name_touches_neither_topic(kube, kafka):
    """Admission refuses the rename (CEL, test_operator_crds); the emulator has no CEL, like an API
    server with an older CRD: the operator itself keeps managing the topic it recorded."""
    broker = kafka
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    external_broker(kube, "main", broker.bootstrap)
    topic(kube, "payments", "main", topicName="payments.v1", partitions=2, deletionPolicy="Delete")
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
    spec = {k: v for k, v in spec.items() if v is not None}  # None: leave the field out
    kube.create({"apiVersion": API, "kind": "Microservice", "metadata": {"name": name, "namespace": namespace},
                 "spec": {"brokerRef": {"name": broker}, **spec}})
    time.sleep(0.01)


def writer_conflict(kube: KubeEmulatorProcess, name: str, namespace: str = "default") -> str | None:
    return cond(kube.get("Microservice", name, namespace), "WriterConflict").get("status")


def test_the_first_declarer_keeps_write_whatever_the_age(kube, kafka):
    broker = kafka
    external_broker(kube, "main", broker.bootstrap)
    service(kube, "old-svc", "main", produces=["audit"])  # the oldest, producing something else
    service(kube, "new-svc", "main", produces=["shipments"])
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
    service(kube, "third-svc", "main", produces=["shipments"])
    eventually(lambda: writer_conflict(kube, "third-svc") == "True", "third waits", kube=kube)
    time.sleep(INTERVAL)
    kube.patch_spec("Microservice", "new-svc", {"produces": []})
    eventually(lambda: writer_conflict(kube, "old-svc") == "False", "old-svc takes over", timeout=TIMER_WAIT,
               kube=kube)
    time.sleep(INTERVAL * 2)
    assert writer_conflict(kube, "third-svc") == "True"
    assert "default/old-svc" in cond(kube.get("Microservice", "third-svc"), "WriterConflict")["message"]


# -- 4. tenancy: namespaces, reserved topics, consent to read and write ---------------------


def permissions(kube: KubeEmulatorProcess, name: str, namespace: str) -> dict[str, list[str]]:
    ms = kube.get("Microservice", name, namespace)
    return {p["name"]: p["operations"] for p in (ms.get("status") or {}).get("permissions") or []}


def test_two_teams_share_a_broker_only_with_consent(kube, kafka):
    broker = kafka
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    external_broker(kube, "shared", broker.bootstrap, namespace="team-a", allowedNamespaces=["team-b"])
    ref = {"name": "shared", "namespace": "team-a"}

    # team-c is not served: its Topic and Microservice are refused and touch nothing
    kube.create({"apiVersion": API, "kind": "Topic", "metadata": {"name": "c-topic", "namespace": "team-c"},
                 "spec": {"brokerRef": ref, "team": "c"}})
    service(kube, "c-svc", "shared", namespace="team-c", consumes=["c-topic"])
    kube.patch_spec("Microservice", "c-svc", {"brokerRef": ref}, namespace="team-c")
    eventually(lambda: cond(kube.get("Topic", "c-topic", "team-c"), "Ready").get("reason") == "NamespaceNotAllowed",
               "Topic in team-c refused", kube=kube)
    eventually(lambda: cond(kube.get("Microservice", "c-svc", "team-c"), "Ready").get("reason")
               == "NamespaceNotAllowed", "Microservice in team-c refused", kube=kube)
    assert broker_topic(admin, "c-topic") is None
    assert kube.get("Secret", "c-svc-kafka", "team-c") is None

    # team-a owns a topic; team-b's services declared it first, yet get neither Read nor Write
    def ms(name: str, namespace: str, **spec: Any) -> None:
        kube.create({"apiVersion": API, "kind": "Microservice", "metadata": {"name": name, "namespace": namespace},
                     "spec": {"brokerRef": ref, "team": namespace, "image": "example/app:1", **spec}})
        time.sleep(0.01)

    kube.create({"apiVersion": API, "kind": "Topic", "metadata": {"name": "a-orders", "namespace": "team-a"},
                 "spec": {"brokerRef": {"name": "shared"}, "team": "a"}})
    ready(kube, "Topic", "a-orders", "team-a")
    ms("intruder", "team-b", produces=["a-orders"])
    ms("reader", "team-b", consumes=["a-orders"])
    ms("shady", "team-b", consumes=["a-orders"], consumerGroup="team-a.a-svc")
    eventually(lambda: cond(kube.get("Microservice", "intruder", "team-b"), "AccessDenied").get("status") == "True",
               "intruder refused", kube=kube)
    ms("a-svc", "team-a", produces=["a-orders"], consumes=["a-orders"])
    eventually(lambda: permissions(kube, "a-svc", "team-a") == {"a-orders": ["Write", "Read", "Describe"],
                                                                "team-a.a-svc": ["Read", "Describe"]},
               "the owner's service gets everything it declared", kube=kube)
    # (Ready waits for its Deployment, which the emulator never runs)
    eventually(lambda: cond(kube.get("Microservice", "a-svc", "team-a"), "Ready").get("reason")
               == "DeploymentUnavailable", "a-svc waits for its Deployment", kube=kube)
    intruder = kube.get("Microservice", "intruder", "team-b")
    assert permissions(kube, "intruder", "team-b") == {"a-orders": ["Describe"]}
    assert "allowedProducers" in cond(intruder, "AccessDenied")["message"]
    assert cond(intruder, "Ready")["reason"] == "AccessDenied"
    reader = eventually(lambda: (m := kube.get("Microservice", "reader", "team-b"))
                        and cond(m, "AccessDenied").get("status") == "True" and m, "reader refused", kube=kube)
    assert permissions(kube, "reader", "team-b") == {"a-orders": ["Describe"], "team-b.reader": ["Read", "Describe"]}
    assert "allowedConsumers" in cond(reader, "AccessDenied")["message"]
    # the default group and the principal are namespaced
    assert kube.get("Secret", "reader-kafka", "team-b")["stringData"]["KAFKA_GROUP_ID"] == "team-b.reader"
    assert reader["status"]["principal"] == "User:team-b.reader"
    # another team's group is never granted on a shared broker
    shady = eventually(lambda: (m := kube.get("Microservice", "shady", "team-b"))
                       and cond(m, "AccessDenied").get("status") == "True" and m, "shady refused", kube=kube)
    assert "team-a.a-svc" not in permissions(kube, "shady", "team-b")
    assert "consumer group 'team-a.a-svc'" in cond(shady, "AccessDenied")["message"]

    # the owner consents to team-b reading: Read is granted on the next reconcile; writing stays refused
    kube.patch_spec("Topic", "a-orders", {"allowedConsumers": ["team-b"]}, namespace="team-a")
    eventually(lambda: permissions(kube, "reader", "team-b").get("a-orders") == ["Read", "Describe"],
               "Read with consent", timeout=TIMER_WAIT, kube=kube)
    eventually(lambda: cond(kube.get("Microservice", "reader", "team-b"), "AccessDenied").get("status") == "False",
               "AccessDenied cleared", kube=kube)
    assert permissions(kube, "intruder", "team-b") == {"a-orders": ["Describe"]}

    # team-b cannot take over team-a's topic with a Topic of its own (the older resource manages it)
    kube.create({"apiVersion": API, "kind": "Topic", "metadata": {"name": "grab", "namespace": "team-b"},
                 "spec": {"brokerRef": ref, "team": "b", "topicName": "a-orders", "config": {"retention.ms": "1"}}})
    eventually(lambda: cond(kube.get("Topic", "grab", "team-b"), "ResourceConflict").get("status") == "True",
               "conflict", kube=kube)


def test_internal_topics_are_never_managed(kube, kafka):
    """Admission refuses them (CEL, test_operator_crds); without CEL the operator still does. (The broker
    itself refuses to create, delete or reconfigure them for any client: test_internal_topics.py.)"""
    broker = kafka
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    external_broker(kube, "main", broker.bootstrap)
    topic(kube, "schemas", "main", topicName="_schemas", partitions=3, deletionPolicy="Delete",
          cleanupPolicy="delete")
    c = eventually(lambda: (r := cond(kube.get("Topic", "schemas"), "Ready")).get("reason") == "ReservedTopic" and r,
                   "ReservedTopic", kube=kube)
    assert c["status"] == "False"
    service(kube, "offsets-reader", "main", consumes=["__consumer_offsets"], produces=["_schemas"])
    eventually(lambda: cond(kube.get("Microservice", "offsets-reader"), "AccessDenied").get("status") == "True",
               "reserved topics refused", kube=kube)
    assert permissions(kube, "offsets-reader", "default") == {"default.offsets-reader": ["Read", "Describe"]}
    kube.delete("Topic", "schemas")
    eventually(lambda: kube.get("Topic", "schemas") is None, "Topic gone", kube=kube)
    assert "_schemas" not in admin.list_topics(timeout=10).topics, "the operator made the reserved topic"


# -- 5. what admission refuses, the operator does not start either --------------------------


def test_a_broker_cluster_without_tiered_storage_starts_nothing(kube):
    kube.create({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": "diskonly"},
                 "spec": {"image": "example/strata-broker:1", "replicas": 3}})
    c = eventually(lambda: (r := cond(kube.get("EventBroker", "diskonly"), "Ready")).get("reason") == "InvalidSpec"
                   and r, "InvalidSpec", kube=kube)
    assert "tieredStorage" in c["message"]
    assert kube.get("StatefulSet", "diskonly-broker") is None


# -- 6. uninstall does not wedge ------------------------------------------------------------


def pre_delete(kube: KubeEmulatorProcess, name: str, timeout: float) -> str:
    proc = subprocess.run([sys.executable, "-m", "strata_cli", "operator", "pre-delete", "-n", "default",
                           "--eventbroker", name, "--timeout", str(timeout)],
                          env={**os.environ, "KUBECONFIG": str(kube.kubeconfig())}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_the_pre_delete_hook_leaves_no_eventbroker_terminating(kube, tmp_path):
    # with the operator running: it deletes the EventBroker, kopf releases its finalizer
    kube.create({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": "release-broker"},
                 "spec": {"image": "example/strata-broker:1"}})
    eventually(lambda: "strata.dev/finalizer" in (kube.get("EventBroker", "release-broker")["metadata"]
                                                  .get("finalizers") or []), "kopf's finalizer", kube=kube)
    assert "deleted (the operator released it)" in pre_delete(kube, "release-broker", 60)
    assert kube.get("EventBroker", "release-broker") is None
    assert "not found" in pre_delete(kube, "release-broker", 60)

    # with no operator (it went first, or is broken): the hook removes the finalizer after its timeout
    alone = KubeEmulatorProcess(tmp_path).start()
    try:
        alone.create({"apiVersion": API, "kind": "EventBroker",
                      "metadata": {"name": "orphan", "finalizers": ["strata.dev/finalizer"]},
                      "spec": {"image": "example/strata-broker:1"}})
        alone.delete("EventBroker", "orphan")
        assert alone.get("EventBroker", "orphan")["metadata"].get("deletionTimestamp")  # Terminating
        assert "by removing its finalizers" in pre_delete(alone, "orphan", 2)
        assert alone.get("EventBroker", "orphan") is None
    finally:
        alone.stop()


def test_the_docs_say_truthfully_which_kinds_carry_a_finalizer():
    """kopf adds its finalizer to a resource with a timer or daemon, or a non-optional deletion handler:
    the table in docs/operator.md must agree with the handlers registered."""
    import re
    from pathlib import Path

    import kopf
    from strata_operator import handlers  # noqa: F401 - registers the handlers
    from strata_operator.cluster import handlers as cluster_handlers  # noqa: F401

    registry = kopf.get_default_registry()
    needs: dict[str, bool] = {}
    for reg in (registry._spawning, registry._changing):
        for h in reg.get_all_handlers():
            if h.selector and h.requires_finalizer:
                needs[h.selector.plural or h.selector.any_name] = True
    doc = (Path(__file__).resolve().parents[3] / "docs" / "operator.md").read_text()
    table = dict(re.findall(r"^\| (EventBroker|Topic|Microservice|CostReport) \| (yes|no) \|", doc, re.M))
    assert len(table) == 4, table
    plurals = {"EventBroker": "eventbrokers", "Topic": "topics", "Microservice": "microservices",
               "CostReport": "costreports"}
    assert {k: v == "yes" for k, v in table.items()} == {k: needs.get(p, False) for k, p in plurals.items()}


# -- 7. status that tells the truth ---------------------------------------------------------


def test_microservice_ready_follows_its_deployment(kube, kafka):
    broker = kafka
    external_broker(kube, "main", broker.bootstrap)
    service(kube, "web", "main", replicas=2, produces=["clicks"])
    c = eventually(lambda: (r := cond(kube.get("Microservice", "web"), "Ready")).get("reason")
                   == "DeploymentUnavailable" and r, "not Ready without available pods", kube=kube)
    assert c["status"] == "False" and "0/2" in c["message"]
    kube.patch("Deployment", "web", {"status": {"availableReplicas": 1, "readyReplicas": 1, "observedGeneration": 1}})
    eventually(lambda: "1/2" in cond(kube.get("Microservice", "web"), "Ready").get("message", ""), "1/2",
               timeout=TIMER_WAIT, kube=kube)
    assert cond(kube.get("Microservice", "web"), "Ready")["status"] == "False"
    kube.patch("Deployment", "web", {"status": {"availableReplicas": 2, "readyReplicas": 2}})
    ms = ready(kube, "Microservice", "web")
    assert ms["status"]["availableReplicas"] == 2


def test_placement_errors_are_eventbroker_conditions(kube):
    """A broker cluster whose bucket cannot be reached: the placement controller's error shows on the
    EventBroker (condition Placement), not only in the operator's log."""
    from brokerproc import free_port

    kube.create({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": "cluster"}, "spec": {
        "image": "example/strata-broker:1", "replicas": 2,
        "tieredStorage": {"bucket": "nowhere", "endpoint": f"http://127.0.0.1:{free_port()}"}}})
    c = eventually(lambda: (r := cond(kube.get("EventBroker", "cluster"), "Placement")).get("status") == "False"
                   and r, "Placement=False", timeout=60, kube=kube)
    assert c["reason"] == "PlacementFailed" and c["message"]


# -- 8. image pull secrets reach every pod the operator creates -----------------------------


def test_image_pull_secrets_reach_every_pod(kube, kafka):
    """The operator's defaults (STRATA_OPERATOR_IMAGE_PULL_SECRETS, set in this module's fixture) and
    each resource's own spec.imagePullSecrets, on the brokers' and the Microservices' pods."""
    kube.create({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": "private"}, "spec": {
        "image": "registry.example/strata-broker:1", "imagePullSecrets": [{"name": "broker-registry"}]}})
    sts = eventually(lambda: kube.get("StatefulSet", "private-broker"), "StatefulSet", kube=kube)
    assert sts["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "operator-registry"},
                                                                   {"name": "broker-registry"}]
    broker = kafka
    external_broker(kube, "main", broker.bootstrap)
    service(kube, "private-app", "main", imagePullSecrets=[{"name": "team-registry"}])
    service(kube, "public-app", "main")
    for name, want in (("private-app", ["operator-registry", "team-registry"]), ("public-app", ["operator-registry"])):
        deployment = eventually(lambda n=name: kube.get("Deployment", n), f"Deployment {name}", kube=kube)
        assert [s["name"] for s in deployment["spec"]["template"]["spec"]["imagePullSecrets"]] == want


def test_the_examples_are_a_working_multi_team_setup():
    """examples/: every resource's namespace is served by its EventBroker, every Microservice is granted
    all it declares (consent where it reads another team's topic, a namespaced group)."""
    from pathlib import Path

    import yaml
    from strata_operator import logic, resources

    docs = [d for p in sorted((Path(__file__).resolve().parents[3] / "examples").glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if d and d["apiVersion"].startswith("strata.dev/")]
    brokers = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs if d["kind"] == "EventBroker"}
    owners: dict[str, dict[str, Any]] = {}
    for t in (d for d in docs if d["kind"] == "Topic"):
        owners[logic.topic_name(t)] = {"namespace": t["metadata"]["namespace"], "name": t["metadata"]["name"],
                                       "allowedConsumers": t["spec"].get("allowedConsumers") or [],
                                       "allowedProducers": t["spec"].get("allowedProducers") or []}
    services = [d for d in docs if d["kind"] == "Microservice"]
    assert services
    for d in docs:
        if d["kind"] in ("Topic", "Microservice", "CostReport"):
            broker = brokers[logic.broker_key(d)]
            assert logic.namespace_allowed(broker, d["metadata"]["namespace"]), d["metadata"]
    for ms in services:
        ns, broker = ms["metadata"]["namespace"], brokers[logic.broker_key(ms)]
        for field, topics in (("allowedConsumers", ms["spec"].get("consumes") or []),
                              ("allowedProducers", ms["spec"].get("produces") or [])):
            refused = logic.access_refusals(ns, broker["metadata"]["namespace"], topics,
                                            {t: owners.get(t) for t in topics}, field)
            assert not refused, (ms["metadata"]["name"], refused)
        if ms["spec"].get("consumes") and logic.shared(broker):
            assert resources.consumer_group(ms).startswith(ns + "."), ms["metadata"]["name"]


# -- beyond the numbered items: credentials-only services, replicas left to an autoscaler ----


def test_a_microservice_without_image_is_credentials_only(kube, kafka):
    external_broker(kube, "main", kafka.bootstrap)
    service(kube, "external-app", "main", image=None, consumes=["clicks"])
    ms = ready(kube, "Microservice", "external-app")
    assert "credentials only" in cond(ms, "Ready")["message"]
    secret = kube.get("Secret", "external-app-kafka")
    assert secret["stringData"]["KAFKA_GROUP_ID"] == "default.external-app"
    assert {p["name"] for p in ms["status"]["permissions"]} == {"clicks", "default.external-app"}
    assert kube.get("Deployment", "external-app") is None and kube.get("ServiceAccount", "external-app") is None


def test_replicas_left_out_are_left_to_an_autoscaler(kube, kafka):
    external_broker(kube, "main", kafka.bootstrap)
    service(kube, "scaled", "main", replicas=None)
    deployment = eventually(lambda: kube.get("Deployment", "scaled"), "Deployment", kube=kube)
    assert "replicas" not in deployment["spec"]
    kube.patch("Deployment", "scaled", {"spec": {"replicas": 5}, "status": {"availableReplicas": 5}})  # an HPA
    ms = ready(kube, "Microservice", "scaled")
    assert ms["status"]["replicas"] == 5
    time.sleep(INTERVAL * 2)  # timed reconciles leave the autoscaler's value alone
    assert kube.get("Deployment", "scaled")["spec"]["replicas"] == 5
    # a service that names replicas has them enforced
    service(kube, "fixed", "main", replicas=2)
    eventually(lambda: (d := kube.get("Deployment", "fixed")) and d["spec"]["replicas"] == 2, "replicas 2",
               kube=kube)
    kube.patch("Deployment", "fixed", {"spec": {"replicas": 7}})
    eventually(lambda: kube.get("Deployment", "fixed")["spec"]["replicas"] == 2, "replicas enforced", kube=kube)
