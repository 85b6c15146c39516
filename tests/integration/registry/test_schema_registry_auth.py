"""REST basic authentication of strata-registry, checked against the broker's own SASL/SCRAM users."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest
import secutil
from brokerproc import BrokerProcess
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from registryproc import RegistryProcess

USERS = {"alice": "alice-secret", "bob": "bob-secret"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    base = tmp_path_factory.mktemp("registry-auth")
    creds = base / "users.json"
    secutil.write_credentials(creds, USERS)
    broker = BrokerProcess(base / "broker", listeners={"SASL_PLAINTEXT": None}, settings={
        "sasl.credentials.file": str(creds), "schema.registry.principal": "User:ANONYMOUS"}).start()
    reg = RegistryProcess(broker.bootstrap, base / "registry.log",
                          args=["--auth-bootstrap", broker.address("SASL_PLAINTEXT")]).start()
    yield reg
    reg.stop()
    broker.stop()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_brokers_users_are_the_registrys_users(registry):
    import urllib.error
    import urllib.request

    def status(headers: dict[str, str]) -> tuple[int, dict]:
        req = urllib.request.Request(registry.url + "/subjects", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert status({}) == (401, {"error_code": 401, "message": "Unauthorized"})
    started = time.monotonic()
    assert status({"Authorization": basic("alice", "wrong")})[0] == 401
    assert time.monotonic() - started < 10, "a refused login should not take the whole login timeout"
    assert status({"Authorization": basic("nobody", "x")})[0] == 401
    assert status({"Authorization": "Bearer abc"})[0] == 401
    assert status({"Authorization": basic("alice", "alice-secret")}) == (200, [])
    # Confluent's client with basic.auth.user.info registers and reads; without credentials it is refused.
    client = SchemaRegistryClient({"url": registry.url, "basic.auth.user.info": "bob:bob-secret"})
    schema_id = client.register_schema("auth-value", Schema('"string"', "AVRO"))
    assert client.get_schema(schema_id).schema_str == '"string"'
    with pytest.raises(SchemaRegistryError) as info:
        SchemaRegistryClient({"url": registry.url}).get_subjects()
    assert info.value.http_status_code == 401
    # The health check stays open (Kubernetes probes it without credentials).
    with urllib.request.urlopen(registry.url + "/", timeout=10) as resp:
        assert resp.status == 200


def test_subjects_follow_the_brokers_topic_acls(tmp_path):
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    creds = tmp_path / "users.json"
    secutil.write_credentials(creds, {**USERS, "carol": "carol-secret"})
    # The registry connects on the plaintext listener as User:ANONYMOUS, a super user here (it reads the ACLs).
    broker = BrokerProcess(tmp_path / "broker", listeners={"SASL_PLAINTEXT": None}, settings={
        "sasl.credentials.file": str(creds), "authorizer.enable": "true", "super.users": "User:ANONYMOUS",
        "schema.registry.principal": "User:ANONYMOUS"}).start()
    registry = None
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        for user, op in (("alice", AclOperation.WRITE), ("bob", AclOperation.READ)):
            binding = AclBinding(ResourceType.TOPIC, "orders", ResourcePatternType.LITERAL, f"User:{user}", "*", op,
                                 AclPermissionType.ALLOW)
            for future in admin.create_acls([binding]).values():
                future.result(15)
        del admin
        registry = RegistryProcess(broker.bootstrap, tmp_path / "registry.log",
                                   args=["--auth-bootstrap", broker.address("SASL_PLAINTEXT"), "--authorize",
                                         "--super-users", "User:ANONYMOUS"]).start()

        def client(user: str) -> SchemaRegistryClient:
            password = USERS.get(user, "carol-secret")
            return SchemaRegistryClient({"url": registry.url, "basic.auth.user.info": f"{user}:{password}"})

        schema_id = client("alice").register_schema("orders-value", Schema('"string"', "AVRO"))
        assert client("bob").get_latest_version("orders-value").schema_id == schema_id  # Read on the topic
        for user, call in (("bob", lambda c: c.register_schema("orders-value", Schema('"int"', "AVRO"))),
                           ("carol", lambda c: c.get_latest_version("orders-value")),
                           ("alice", lambda c: c.set_compatibility(level="NONE")),  # global: super users only
                           ("alice", lambda c: c.register_schema("misc", Schema('"int"', "AVRO")))):
            with pytest.raises(SchemaRegistryError) as info:
                call(client(user))
            assert (info.value.http_status_code, info.value.error_code) == (403, 40301), (user, info.value)
        assert client("alice").set_compatibility("orders-value", "FULL")["compatibility"] == "FULL"
    finally:
        if registry is not None:
            registry.kill()
        broker.kill()
