"""Topic spec.schema: the operator (a real process, kmock's Kubernetes API) registers the schema in a real
strata-registry, reports subject, version and id in status, and turns an incompatible change into
Ready=False with the registry's message."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from brokerproc import BrokerProcess
from registryproc import RegistryProcess
from test_operator_reconcile import API, cond, eventually, kube  # noqa: F401 - kube is a fixture
from waiting import wait_until

V1 = {"type": "record", "name": "Order", "fields": [{"name": "id", "type": "long"}]}
V2 = {**V1, "fields": [*V1["fields"], {"name": "note", "type": "string", "default": ""}]}
V3_BAD = {**V1, "fields": [{"name": "id", "type": "string"}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerProcess, RegistryProcess]]:
    base = tmp_path_factory.mktemp("topic-schema")
    broker = BrokerProcess(base / "broker", settings={"schema.registry.principal": "User:ANONYMOUS"}).start()
    registry = RegistryProcess(broker.bootstrap, base / "registry.log").start()
    wait_until(registry.leads, 30, "the registry to lead")
    yield broker, registry
    registry.stop()
    broker.stop()


def test_topic_schema_registered_evolved_and_refused(kube, stack):  # noqa: F811 - the fixture
    broker, registry = stack
    kube.create({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": "sr"},
                 "spec": {"external": {"bootstrapServers": broker.bootstrap},
                          "schemaRegistry": {"url": registry.url}}})
    kube.create({"apiVersion": API, "kind": "Topic", "metadata": {"name": "orders-sr"},
                 "spec": {"brokerRef": {"name": "sr"}, "team": "orders",
                          "schema": {"type": "AVRO", "compatibility": "FULL", "schema": json.dumps(V1)}}})
    topic = eventually(lambda: (t := kube.get("Topic", "orders-sr")) and cond(t, "Ready").get("status") == "True"
                       and t, "Topic Ready with its schema", timeout=30, kube=kube)
    assert topic["status"]["schemaSubject"] == "orders-sr-value" and topic["status"]["schemaVersion"] == 1
    first_id = topic["status"]["schemaId"]
    assert registry.get(f"/schemas/ids/{first_id}")["schema"] == json.dumps(V1)
    assert registry.get("/config/orders-sr-value")["compatibilityLevel"] == "FULL"

    # A compatible change is registered as version 2.
    kube.patch_spec("Topic", "orders-sr", {"schema": {"type": "AVRO", "compatibility": "FULL",
                                                      "schema": json.dumps(V2)}})
    topic = eventually(lambda: (t := kube.get("Topic", "orders-sr"))["status"].get("schemaVersion") == 2 and t,
                       "version 2", timeout=30, kube=kube)
    assert topic["status"]["schemaId"] != first_id and cond(topic, "Ready")["status"] == "True"

    # An incompatible one is refused: Ready=False with the registry's 409 message; nothing registered.
    kube.patch_spec("Topic", "orders-sr", {"schema": {"type": "AVRO", "compatibility": "FULL",
                                                      "schema": json.dumps(V3_BAD)}})
    ready = eventually(lambda: (c := cond(kube.get("Topic", "orders-sr"), "Ready")).get("reason")
                       == "SchemaIncompatible" and c, "SchemaIncompatible", timeout=30, kube=kube)
    assert ready["status"] == "False"
    assert "Schema being registered is incompatible with an earlier schema" in ready["message"]
    assert registry.get("/subjects/orders-sr-value/versions") == [1, 2]


def test_topic_schema_from_a_config_map(kube, stack):  # noqa: F811 - the fixture
    broker, registry = stack
    kube.create({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": "sr2"},
                 "spec": {"external": {"bootstrapServers": broker.bootstrap},
                          "schemaRegistry": {"url": registry.url}}})
    kube.create({"apiVersion": API, "kind": "Topic", "metadata": {"name": "events-sr"},
                 "spec": {"brokerRef": {"name": "sr2"}, "team": "orders",
                          "schema": {"type": "JSON", "configMapRef": {"name": "event-schemas", "key": "e.json"}}}})
    ready = eventually(lambda: (c := cond(kube.get("Topic", "events-sr"), "Ready")).get("reason")
                       == "SchemaNotFound" and c, "SchemaNotFound before the ConfigMap exists", timeout=30, kube=kube)
    assert "event-schemas" in ready["message"]
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "event-schemas"},
                 "data": {"e.json": json.dumps({"type": "object", "properties": {"id": {"type": "integer"}}})}})
    topic = eventually(lambda: (t := kube.get("Topic", "events-sr")) and cond(t, "Ready").get("status") == "True"
                       and t, "Topic Ready once the ConfigMap exists", timeout=30, kube=kube)
    assert registry.get(f"/subjects/events-sr-value/versions/{topic['status']['schemaVersion']}")["schemaType"] \
        == "JSON"


def test_microservice_status_lists_the_subjects_it_may_write(kube, stack):  # noqa: F811 - the fixture
    broker, _ = stack
    kube.create({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": "sr3"},
                 "spec": {"external": {"bootstrapServers": broker.bootstrap}}})
    kube.create({"apiVersion": API, "kind": "Microservice", "metadata": {"name": "shipper"},
                 "spec": {"brokerRef": {"name": "sr3"}, "team": "shipping", "produces": ["shipments"],
                          "consumes": ["orders-sr"]}})
    service = eventually(lambda: (m := kube.get("Microservice", "shipper")) and "schemaSubjects" in (
        m.get("status") or {}) and m, "the Microservice reconciled", timeout=30, kube=kube)
    assert service["status"]["schemaSubjects"] == ["shipments-key", "shipments-value"]
