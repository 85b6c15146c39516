"""Resource builders are pure and produce objects valid for a current Kubernetes release."""

from __future__ import annotations

import kubernetes_validate
import pytest
from strata_operator import logic, resources
from strata_operator.durations import duration_ms, size_bytes

K8S_VERSION = "1.35"


def broker(**spec):
    return {"apiVersion": "strata.dev/v1alpha1", "kind": "EventBroker",
            "metadata": {"name": "events", "namespace": "strata", "uid": "u-1"},
            "spec": {"replicas": 3, "image": "strata-broker:0.1", **spec}}


def microservice(name="order-service", **spec):
    return {"apiVersion": "strata.dev/v1alpha1", "kind": "Microservice",
            "metadata": {"name": name, "namespace": "team-orders", "uid": f"u-{name}",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"brokerRef": {"name": "events", "namespace": "strata"}, "team": "orders",
                     "image": "app:1", **spec}}


FULL = dict(resources={"requests": {"cpu": "500m", "memory": "1Gi"}}, storage={"size": "20Gi", "class": "gp3"},
            tieredStorage={"bucket": "b", "prefix": "p", "endpoint": "http://minio:9000",
                           "credentialsSecret": {"name": "s3"}, "uploadInterval": "5m"},
            topicDefaults={"retention.ms": "1000"}, imagePullPolicy="IfNotPresent")


@pytest.mark.parametrize("spec", [{}, FULL], ids=["minimal", "full"])
def test_eventbroker_objects_validate(spec):
    objs = resources.eventbroker_objects(broker(**spec))
    assert [o["kind"] for o in objs] == ["ServiceAccount", "ConfigMap", "Service", "Service", "PodDisruptionBudget",
                                         "StatefulSet"]
    for obj in objs:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_statefulset_rolls_one_broker_at_a_time_and_config_changes_roll():
    sts = resources.broker_statefulset(broker(**FULL))
    assert sts["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
    assert sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["tcpSocket"]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "gp3"
    other = resources.broker_statefulset(broker(**{**FULL, "topicDefaults": {"retention.ms": "2000"}}))
    key = "strata.dev/config-hash"
    assert sts["spec"]["template"]["metadata"]["annotations"][key] != other["spec"]["template"]["metadata"][
        "annotations"][key]
    props = resources.broker_properties(broker(**FULL))
    assert props["tiered.s3.bucket"] == "b" and props["tiered.upload.interval.ms"] == "300000"
    assert resources.bootstrap_servers(broker()) == "events-bootstrap.strata.svc:9092"


def test_external_broker_owns_nothing():
    assert resources.eventbroker_objects(broker(external={"bootstrapServers": "h:9092"})) == []
    assert resources.bootstrap_servers(broker(external={"bootstrapServers": "h:9092"})) == "h:9092"


def test_microservice_objects_validate():
    ms = microservice(produces=["orders"], consumes=["payments"], env=[{"name": "A", "value": "1"}],
                      resources={"limits": {"memory": "256Mi"}}, command=["app"], args=["--x"])
    objs = resources.microservice_objects(ms, "b:9092", "pw", sasl=True)
    assert [o["kind"] for o in objs] == ["ServiceAccount", "Secret", "Deployment"]
    for obj in objs:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    secret = objs[1]["stringData"]
    assert secret["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert secret["KAFKA_GROUP_ID"] == "team-orders.order-service"
    assert secret["KAFKA_SASL_USERNAME"] == "team-orders.order-service"


def test_single_writer_first_come_first_served():
    first = microservice("a", produces=["orders"])
    second = microservice("b", produces=["orders", "audit"], consumes=["orders"])
    second["metadata"]["creationTimestamp"] = "2026-01-02T00:00:00Z"
    g = logic.grants(second, [first, second], "b")
    assert g.denied_writes == {"orders": "team-orders/a"}
    assert ("topic", "orders", "write") not in g.acls and ("topic", "audit", "write") in g.acls
    assert ("topic", "orders", "read") in g.acls and ("group", "b", "read") in g.acls
    assert logic.grants(first, [first, second], "a").denied_writes == {}


def test_topic_plan_reverts_drift_and_refuses_to_shrink():
    spec = {"partitions": 3, "retention": "forever", "cleanupPolicy": "compact", "config": {"segment.bytes": "1024"}}
    assert logic.plan_topic(spec, None, None).create
    plan = logic.plan_topic(spec, 4, {"retention.ms": "5", "max.message.bytes": "10", "cleanup.policy": "compact",
                                      "segment.bytes": "1024"})
    # only what the spec names is enforced: max.message.bytes is left alone...
    assert plan.set_configs == {"retention.ms": "-1"} and plan.delete_configs == []
    assert plan.cannot_shrink == (4, 3) and plan.grow_to is None
    assert plan.managed == ["cleanup.policy", "retention.ms", "segment.bytes"]
    # ...unless the operator enforced it before and the spec dropped it: then it is reset, once
    dropped = logic.plan_topic(spec, 4, {"max.message.bytes": "10", "retention.ms": "-1"},
                               managed=["max.message.bytes", "retention.ms"])
    assert dropped.delete_configs == ["max.message.bytes"]
    # partitions not named: an existing topic keeps its own
    assert logic.plan_topic({}, 7, {}).cannot_shrink is None and not logic.plan_topic({}, 7, {}).changes
    assert logic.plan_topic({"partitions": 5}, 3, {}).grow_to == 5
    with pytest.raises(logic.InvalidSpec, match="not a duration"):
        logic.plan_topic({"retention": "1 week"}, 1, {})


def test_conditions_keep_transition_time_until_status_changes():
    c1 = logic.set_condition([], "Ready", True, "Reconciled", "ok", 1)
    c1[0]["lastTransitionTime"] = "2000-01-01T00:00:00Z"
    c2 = logic.set_condition(c1, "Ready", True, "Reconciled", "still ok", 2)
    assert c2[0]["lastTransitionTime"] == "2000-01-01T00:00:00Z" and c2[0]["observedGeneration"] == 2
    c3 = logic.set_condition(c2, "Ready", False, "BrokerUnavailable", "down", 2)
    assert c3[0]["lastTransitionTime"] != "2000-01-01T00:00:00Z"


@pytest.mark.parametrize("text, ms", [("500ms", 500), ("1h30m", 5_400_000), ("7d", 604_800_000), ("forever", -1)])
def test_durations(text, ms):
    assert duration_ms(text) == ms


def test_sizes():
    assert size_bytes("10Gi") == 10 << 30 and size_bytes("forever") == -1 and size_bytes("1000") == 1000


def test_pull_secrets_on_every_pod_template():
    from strata_operator import crds as crd_module

    broker = {"apiVersion": crd_module.API_VERSION, "kind": "EventBroker",
              "metadata": {"name": "events", "namespace": "strata", "uid": "u"},
              "spec": {"image": "b:1", "imagePullSecrets": [{"name": "mine"}, {"name": "shared"}]}}
    (sts,) = [o for o in resources.eventbroker_objects(broker, default_pull_secrets=("shared",))
              if o["kind"] == "StatefulSet"]
    kubernetes_validate.validate(sts, K8S_VERSION, strict=True)
    assert sts["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "shared"}, {"name": "mine"}]
    ms = microservice(produces=["orders"])
    (dep,) = [o for o in resources.microservice_objects(ms, "b:9092", "pw", True, ("shared",))
              if o["kind"] == "Deployment"]
    kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    assert dep["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "shared"}]
    (plain,) = [o for o in resources.microservice_objects(ms, "b:9092", "pw", True) if o["kind"] == "Deployment"]
    assert "imagePullSecrets" not in plain["spec"]["template"]["spec"]


def test_broker_pod_template_and_default_anti_affinity():
    base = {"apiVersion": "strata.dev/v1alpha1", "kind": "EventBroker",
            "metadata": {"name": "events", "namespace": "strata", "uid": "u"}, "spec": {"image": "b:1"}}
    sts = resources.broker_statefulset(base)
    kubernetes_validate.validate(sts, K8S_VERSION, strict=True)
    (term,) = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]

    custom = {**base, "spec": {"image": "b:1", "template": {"pod": {
        "metadata": {"labels": {"tier": "data", "app.kubernetes.io/component": "mine"},
                     "annotations": {"example.com/owner": "platform"}},
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["kafka"]}]}]}}},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "kafka", "effect": "NoSchedule"}],
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                       "whenUnsatisfiable": "ScheduleAnyway"}],
        "priorityClassName": "strata-brokers"}}}}
    sts = resources.broker_statefulset(custom)
    kubernetes_validate.validate(sts, K8S_VERSION, strict=True)
    pod = sts["spec"]["template"]
    assert "nodeAffinity" in pod["spec"]["affinity"] and "podAntiAffinity" not in pod["spec"]["affinity"]
    assert pod["spec"]["tolerations"][0]["key"] == "dedicated"
    assert pod["spec"]["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"] == \
        sts["spec"]["selector"]["matchLabels"]
    assert pod["spec"]["priorityClassName"] == "strata-brokers"
    assert pod["metadata"]["labels"]["tier"] == "data"
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "broker"  # the operator's own win
    assert pod["metadata"]["annotations"]["example.com/owner"] == "platform"
    assert "strata.dev/config-hash" in pod["metadata"]["annotations"]


def test_broker_pod_template_passes_admission():
    from crd_admission import admission_errors

    broker = {"apiVersion": "strata.dev/v1alpha1", "kind": "EventBroker", "metadata": {"name": "events"},
              "spec": {"image": "b:1", "template": {"pod": {
                  "tolerations": [{"key": "dedicated", "operator": "Exists"}], "priorityClassName": "high",
                  "affinity": {"podAntiAffinity": {}}, "metadata": {"labels": {"a": "b"}}}}}}
    assert admission_errors(broker) == []
    broker["spec"]["template"]["pod"]["priorityClass"] = "typo"
    assert admission_errors(broker)


def test_single_writer_by_claim_is_the_same_from_every_viewpoint():
    def ms(name, created, claims=None):
        return {"metadata": {"namespace": "ns", "name": name, "creationTimestamp": created},
                "spec": {"produces": ["t"]}, "status": {"writeClaims": claims or []}}

    old = ms("old", "2020-01-01T00:00:00Z", [{"topic": "t", "since": "2024-05-01T00:00:00.000000Z", "writer": False}])
    young = ms("young", "2024-01-01T00:00:00Z", [{"topic": "t", "since": "2024-02-01T00:00:00.000000Z",
                                                  "writer": True}])
    assert logic.writers([old, young])["t"] is young  # the holder keeps it, whatever its age
    young["status"]["writeClaims"] = []  # it stopped declaring, or never recorded: the earliest claim wins
    third = ms("third", "2019-01-01T00:00:00Z", [{"topic": "t", "since": "2024-06-01T00:00:00.000000Z",
                                                  "writer": False}])
    assert logic.writers([young, third, old])["t"] is old
    # nobody recorded yet (two services declared at once): the older, from any service's reconcile
    a, b = ms("a", "2024-01-01T00:00:00Z"), ms("b", "2024-01-02T00:00:00Z")
    assert logic.writers([a, b])["t"] is a and logic.writers([b, a])["t"] is a
    g = logic.grants(b, [a, b], "ns.b")
    assert g.denied_writes == {"t": "ns/a"} and g.claims[0]["writer"] is False and g.claims[0]["since"]
