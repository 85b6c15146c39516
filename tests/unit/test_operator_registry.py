"""spec.schemaRegistry of an EventBroker: the registry's Deployment and Service, the brokers' setting."""

from __future__ import annotations

import kubernetes_validate
from crd_admission import admission_errors
from strata_operator import registry_objects, resources

K8S_VERSION = "1.35"


def broker(**spec):
    return {"apiVersion": "strata.dev/v1alpha1", "kind": "EventBroker",
            "metadata": {"name": "events", "namespace": "strata", "uid": "u-1"},
            "spec": {"image": "strata-broker:0.1", **spec}}


def test_registry_objects_validate_and_point_at_the_brokers():
    eb = broker(schemaRegistry={"enabled": True, "replicas": 2, "port": 8085}, imagePullPolicy="IfNotPresent")
    assert admission_errors(eb) == []
    objs = resources.eventbroker_objects(eb, default_pull_secrets=["regcred"])
    assert [o["kind"] for o in objs][-2:] == ["Service", "Deployment"]
    service, deployment = objs[-2:]
    for obj in (service, deployment):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        assert obj["metadata"]["name"] == "events-schema-registry"
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert service["spec"]["ports"][0]["port"] == 8085
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    command = pod["containers"][0]["command"]
    assert command[:3] == ["strata-registry", "--bootstrap", "events-bootstrap.strata.svc:9092"]
    assert "--advertised-url" in command and "http://$(POD_IP):8085" in command
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert resources.broker_properties(eb)["schema.registry.principal"] == "User:ANONYMOUS"
    assert registry_objects.registry_url(eb) == "http://events-schema-registry.strata.svc:8085"


def test_off_by_default():
    eb = broker()
    assert [o["kind"] for o in resources.eventbroker_objects(eb)][-1] == "StatefulSet"
    assert "schema.registry.principal" not in resources.broker_properties(eb)
    assert registry_objects.registry_objects(broker(schemaRegistry={"enabled": False})) == []
