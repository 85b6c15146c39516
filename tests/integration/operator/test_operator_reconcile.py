"""The operator as a real process (`strata operator`) against kmock's emulated Kubernetes API and
real broker processes: Topic, Microservice and EventBroker reconciled end to end.

The emulator has no metadata.generation bookkeeping, spec/status split, pruning or CEL (the
schemas and CEL rules are tested in test_operator_crds.py), and it keeps only the first of
kopf's Events (it ignores generateName), so Events are not asserted here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from brokerproc import free_port
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from kmockserver import KubeEmulatorProcess
from s3server import CREDENTIALS

INTERVAL = 1.5  # the operator's timed reconcile, short for tests
API = "strata.dev/v1alpha1"


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEmulatorProcess]:
    workdir = tmp_path_factory.mktemp("kmock")
    emulator = KubeEmulatorProcess(workdir).start()
    emulator.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    log = workdir / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(emulator.kubeconfig()),
           "STRATA_OPERATOR_RECONCILE_INTERVAL": str(INTERVAL), "STRATA_OPERATOR_RETRY_DELAY": "1",
           "STRATA_OPERATOR_DELETE_TIMEOUT": "30",
           "STRATA_OPERATOR_BROKER_TIMEOUT": "3"}
    health = f"http://127.0.0.1:{free_port()}/healthz"
    proc = subprocess.Popen([sys.executable, "-m", "strata_cli", "operator", "--liveness", health],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    emulator.operator_log = log  # type: ignore[attr-defined]
    emulator.health = health  # type: ignore[attr-defined]
    try:
        yield emulator
    finally:
        proc.terminate()
        try:
            # Nothing here asserts a clean exit, and with kopf timers stuck on an unreachable broker
            # the operator can outlast any grace: do not wait long for it.
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        emulator.stop()


def eventually(check: Callable[[], Any], what: str, timeout: float = 20.0, kube: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (KeyError, TypeError, AssertionError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    tail = ""
    if kube is not None:
        tail = "\n".join(Path(kube.operator_log).read_text(errors="replace").splitlines()[-30:])
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{tail}")


def cond(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    return {}


def broker_cr(kube: KubeEmulatorProcess, name: str, bootstrap: str) -> None:
    kube.create({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": name},
                 "spec": {"external": {"bootstrapServers": bootstrap}}})


def topic_cr(kube: KubeEmulatorProcess, name: str, broker: str, **spec: Any) -> None:
    kube.create({"apiVersion": API, "kind": "Topic", "metadata": {"name": name},
                 "spec": {"brokerRef": {"name": broker}, "team": "orders", **spec}})
    time.sleep(0.01)  # distinct creation order even within one second (ties break by name)


def broker_topic(admin: AdminClient, name: str) -> tuple[int, dict[str, str]] | None:
    meta = admin.list_topics(timeout=10)
    if name not in meta.topics:
        return None
    (configs,) = [f.result(10) for f in admin.describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, name)]).values()]
    return len(meta.topics[name].partitions), {k: e.value for k, e in configs.items()}


def test_operator_serves_liveness(kube):
    import urllib.request

    def ok() -> bool:
        try:
            with urllib.request.urlopen(kube.health, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    eventually(ok, "the liveness endpoint", kube=kube)


def test_topic_create_grow_drift_shrink_delete(kube, broker_factory):
    broker = broker_factory({"auto.create.topics.enable": "false"})
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    broker_cr(kube, "b1", broker.bootstrap)
    eventually(lambda: cond(kube.get("EventBroker", "b1"), "Ready").get("status") == "True", "broker Ready",
               kube=kube)
    assert kube.get("EventBroker", "b1")["status"]["bootstrapServers"] == broker.bootstrap

    topic_cr(kube, "orders", "b1", partitions=2, retention="7d", cleanupPolicy="delete", deletionPolicy="Delete",
             config={"segment.bytes": "1048576"})
    state = eventually(lambda: broker_topic(admin, "orders"), "topic on the broker", kube=kube)
    assert state[0] == 2
    assert state[1]["retention.ms"] == str(7 * 86_400_000) and state[1]["segment.bytes"] == "1048576"
    cr = eventually(lambda: (c := kube.get("Topic", "orders")) and cond(c, "Ready").get("status") == "True" and c,
                    "Topic Ready", kube=kube)
    assert cr["status"]["topicId"] and cr["status"]["partitions"] == 2
    assert cond(cr, "Ready")["reason"] == "Reconciled" and cond(cr, "Ready")["lastTransitionTime"]
    assert "finalizers" in cr["metadata"] and cr["metadata"]["finalizers"]

    # raising partitions grows the topic
    kube.patch_spec("Topic", "orders", {"partitions": 4})
    eventually(lambda: broker_topic(admin, "orders")[0] == 4, "4 partitions", kube=kube)

    # a config the spec names, changed behind the operator's back, is reverted on the timer; one it
    # does not name is left alone (only what the Topic names is enforced)
    resource = ConfigResource(ConfigResource.Type.TOPIC, "orders", incremental_configs=[
        ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("max.message.bytes", "2048", incremental_operation=AlterConfigOpType.SET)])
    [f.result(10) for f in admin.incremental_alter_configs([resource]).values()]
    assert broker_topic(admin, "orders")[1]["retention.ms"] == "1000"
    eventually(lambda: broker_topic(admin, "orders")[1]["retention.ms"] == str(7 * 86_400_000), "drift reverted",
               timeout=INTERVAL * 6, kube=kube)
    assert broker_topic(admin, "orders")[1]["max.message.bytes"] == "2048"

    # decreasing partitions is NotSupported, the topic keeps its partitions
    kube.patch_spec("Topic", "orders", {"partitions": 1})
    c = eventually(lambda: (r := cond(kube.get("Topic", "orders"), "Ready")).get("reason") == "NotSupported" and r,
                   "NotSupported", kube=kube)
    assert c["status"] == "False" and "cannot decrease" in c["message"]
    assert broker_topic(admin, "orders")[0] == 4

    # a topic without a CR is left alone
    admin.create_topics([__import__("confluent_kafka").admin.NewTopic("unmanaged", 1, 1)])["unmanaged"].result(10)

    # deletionPolicy Delete: the topic goes, then the finalizer, then the CR
    kube.delete("Topic", "orders")
    eventually(lambda: kube.get("Topic", "orders") is None, "Topic CR gone (finalizer released)", kube=kube)
    assert broker_topic(admin, "orders") is None
    time.sleep(INTERVAL)
    assert broker_topic(admin, "unmanaged") is not None


def test_conflicting_topics_and_retain(kube, broker_factory):
    broker = broker_factory({"auto.create.topics.enable": "false"})
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    broker_cr(kube, "b2", broker.bootstrap)
    topic_cr(kube, "payments", "b2", partitions=3)  # deletionPolicy defaults to Retain
    eventually(lambda: cond(kube.get("Topic", "payments"), "Ready").get("status") == "True", "first Ready",
               kube=kube)
    topic_cr(kube, "payments-dup", "b2", topicName="payments", partitions=6)
    c = eventually(lambda: (r := cond(kube.get("Topic", "payments-dup"), "ResourceConflict")).get("status") == "True"
                   and r, "ResourceConflict on the younger", kube=kube)
    assert "default/payments" in c["message"]
    assert cond(kube.get("Topic", "payments-dup"), "Ready")["status"] == "False"
    assert cond(kube.get("Topic", "payments"), "Ready")["status"] == "True"
    assert broker_topic(admin, "payments")[0] == 3  # the younger CR changed nothing

    # Retain: deleting the CR keeps the topic
    kube.delete("Topic", "payments-dup")
    eventually(lambda: kube.get("Topic", "payments-dup") is None, "duplicate gone", kube=kube)
    kube.delete("Topic", "payments")
    eventually(lambda: kube.get("Topic", "payments") is None, "Topic CR gone", kube=kube)
    assert broker_topic(admin, "payments")[0] == 3


def test_delete_policy_removes_s3_data(kube, broker_factory, s3):
    from kafkaclients import produce_numbered
    from s3server import TIERED

    broker = broker_factory(s3.broker_settings(**TIERED, **{"auto.create.topics.enable": "false"}), env=CREDENTIALS)
    broker_cr(kube, "b3", broker.bootstrap)
    topic_cr(kube, "audit", "b3", tiered=True, retention="forever", localRetention="1h", deletionPolicy="Delete")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    state = eventually(lambda: broker_topic(admin, "audit"), "tiered topic", kube=kube)
    assert state[1]["remote.storage.enable"] == "true" and state[1]["retention.ms"] == "-1"
    produce_numbered(broker.bootstrap, "audit", 3000)
    eventually(lambda: any(k.endswith(".log") and "/topics/audit-" in k for k in s3.objects()), "an upload",
               timeout=60)
    kube.delete("Topic", "audit")
    eventually(lambda: kube.get("Topic", "audit") is None, "Topic CR gone", kube=kube)
    assert broker_topic(admin, "audit") is None
    eventually(lambda: not [k for k in s3.objects() if "/topics/audit-" in k], "S3 prefix emptied", timeout=30)


def test_second_producer_gets_writer_conflict(kube, broker_factory):
    broker = broker_factory({"auto.create.topics.enable": "false"})
    broker_cr(kube, "b4", broker.bootstrap)

    def service(name: str, **spec: Any) -> None:
        kube.create({"apiVersion": API, "kind": "Microservice", "metadata": {"name": name},
                     "spec": {"brokerRef": {"name": "b4"}, "team": "shipping", "image": "example/app:1", **spec}})
        time.sleep(0.01)

    service("order-service", produces=["order-events"], consumes=["payment-events"])
    first = eventually(lambda: (m := kube.get("Microservice", "order-service")) and cond(m, "Ready") and m,
                       "first service reconciled", kube=kube)
    assert cond(first, "WriterConflict")["status"] == "False"
    # Ready follows the Deployment's availability (the emulator runs no pods: its status is set here)
    assert cond(first, "Ready")["reason"] == "DeploymentUnavailable", first["status"]["conditions"]
    kube.patch("Deployment", "order-service", {"status": {"availableReplicas": 1, "readyReplicas": 1}})
    first = eventually(lambda: (m := kube.get("Microservice", "order-service"))
                       and cond(m, "Ready").get("status") == "True" and m, "Ready once available",
                       timeout=INTERVAL * 6, kube=kube)
    assert first["status"]["availableReplicas"] == 1
    acls = cond(first, "AclsApplied")
    assert acls["status"] == "False" and acls["reason"] == "BrokerHasNoAuthorizer"
    perms = {p["name"]: p["operations"] for p in first["status"]["permissions"]}
    assert perms == {"order-events": ["Write", "Describe"], "payment-events": ["Read", "Describe"],
                     "default.order-service": ["Read", "Describe"]}
    assert first["status"]["principal"] == "User:default.order-service"

    deployment = kube.get("Deployment", "order-service")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [
        {"secretRef": {"name": "order-service-kafka"}}]
    assert kube.get("ServiceAccount", "order-service") is not None
    secret = kube.get("Secret", "order-service-kafka")
    assert secret["stringData"]["KAFKA_BOOTSTRAP_SERVERS"] == broker.bootstrap
    assert secret["stringData"]["KAFKA_GROUP_ID"] == "default.order-service"
    password = secret["stringData"]["KAFKA_SASL_PASSWORD"]

    service("order-service-v2", produces=["order-events"])
    second = eventually(lambda: (m := kube.get("Microservice", "order-service-v2"))
                        and cond(m, "WriterConflict").get("status") == "True" and m, "WriterConflict", kube=kube)
    assert "default/order-service" in cond(second, "WriterConflict")["message"]
    assert cond(second, "Ready")["status"] == "False"
    assert second["status"]["permissions"] == [{"resourceType": "topic", "name": "order-events",
                                                "operations": ["Describe"]}]
    assert second["status"]["deniedWrites"] == ["order-events"]
    # the first writer keeps its permission, and its credentials are stable across reconciles
    time.sleep(INTERVAL * 1.5)
    assert cond(kube.get("Microservice", "order-service"), "WriterConflict")["status"] == "False"
    assert kube.get("Secret", "order-service-kafka")["stringData"]["KAFKA_SASL_PASSWORD"] == password

    # when the first writer goes, the second becomes the writer on the next timed reconcile
    kube.delete("Microservice", "order-service")
    eventually(lambda: kube.get("Microservice", "order-service") is None, "first service gone", kube=kube)
    eventually(lambda: cond(kube.get("Microservice", "order-service-v2"), "WriterConflict").get("status") == "False",
               "second becomes the writer", timeout=INTERVAL * 6, kube=kube)


def test_managed_eventbroker_objects_and_status(kube):
    kube.create({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": "prod"}, "spec": {
        "replicas": 3, "image": "ghcr.io/example/strata-broker:0.1.0", "storage": {"size": "20Gi"},
        "tieredStorage": {"bucket": "strata-prod", "prefix": "prod", "credentialsSecret": {"name": "s3-creds"}}}})
    sts = eventually(lambda: kube.get("StatefulSet", "prod-broker"), "StatefulSet", kube=kube)
    assert sts["spec"]["replicas"] == 3
    for kind, name in [("Service", "prod-brokers"), ("Service", "prod-bootstrap"), ("ConfigMap", "prod-config"),
                       ("PodDisruptionBudget", "prod-broker"), ("ServiceAccount", "prod-broker")]:
        assert kube.get(kind, name) is not None, (kind, name)
    cr = eventually(lambda: (b := kube.get("EventBroker", "prod")) and cond(b, "Ready") and b, "status", kube=kube)
    assert cr["status"]["bootstrapServers"] == "prod-bootstrap.default.svc:9092"
    assert cond(cr, "Ready")["status"] == "False" and cr["status"]["readyReplicas"] == 0
    kube.patch("StatefulSet", "prod-broker", {"status": {"readyReplicas": 3, "replicas": 3}})
    eventually(lambda: cond(kube.get("EventBroker", "prod"), "Ready").get("status") == "True",
               "Ready once the brokers are", timeout=INTERVAL * 6, kube=kube)
    assert kube.get("EventBroker", "prod")["status"]["readyReplicas"] == 3


def test_unreachable_broker_is_a_condition_not_a_crash(kube):
    broker_cr(kube, "nowhere", f"127.0.0.1:{free_port()}")
    topic_cr(kube, "lost", "nowhere", deletionPolicy="Delete")
    c = eventually(lambda: (r := cond(kube.get("Topic", "lost"), "Ready")).get("reason") == "BrokerUnavailable" and r,
                   "BrokerUnavailable", kube=kube)
    assert c["status"] == "False"
    topic_cr(kube, "orphan", "no-such-broker")
    eventually(lambda: cond(kube.get("Topic", "orphan"), "Ready").get("reason") == "BrokerNotFound",
               "BrokerNotFound", kube=kube)
    # the escape hatch: the finalizer is released without reaching the broker
    kube.patch("Topic", "lost", {"metadata": {"annotations": {"strata.dev/skip-cleanup": "true"}}})
    kube.delete("Topic", "lost")
    eventually(lambda: kube.get("Topic", "lost") is None, "finalizer released", timeout=30, kube=kube)
