"""REST basic authentication of strata-registry, checked against the broker's own SASL/SCRAM users."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest
import secutil
from brokerproc import BrokerProcess, free_port
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from registryproc import RegistryProcess
from waiting import wait_until

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


def test_https_sasl_login_and_forwarding_between_two_instances(tmp_path):
    """The registry as the operator runs it next to brokers with an authorizer: it logs in to a SASL listener
    with its own SCRAM user (password from STRATA_REGISTRY_KAFKA_PASSWORD, a super user), serves HTTPS
    (--tls-cert/--tls-key), requires basic auth checked against the broker, and a follower forwards writes to
    the leader over HTTPS verified against --tls-ca."""
    pki = secutil.make_pki(tmp_path / "pki")
    creds = tmp_path / "users.json"
    secutil.write_credentials(creds, {**USERS, "registry": "registry-secret"})
    broker = BrokerProcess(tmp_path / "broker", listeners={"SASL_PLAINTEXT": None}, settings={
        "sasl.credentials.file": str(creds), "schema.registry.principal": "User:registry",
        "authorizer.enable": "true", "super.users": "User:registry;User:alice"}).start()
    sasl = broker.address("SASL_PLAINTEXT")
    args = ["--kafka", "security.protocol=SASL_PLAINTEXT", "--kafka", "sasl.mechanism=SCRAM-SHA-512",
            "--kafka", "sasl.username=registry", "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
            "--tls-ca", str(pki.ca), "--auth-bootstrap", sasl, "--authorize", "--super-users",
            "User:registry;User:alice"]
    env = {"STRATA_REGISTRY_KAFKA_PASSWORD": "registry-secret"}
    instances = []
    try:
        for name in ("a", "b"):
            port = free_port()
            instances.append(RegistryProcess(sasl, tmp_path / f"{name}.log", port=port, env=env, tls_ca=pki.ca,
                                             login=("alice", "alice-secret"),
                                             args=[*args, "--advertised-url", f"https://localhost:{port}"]).start())
        a, b = instances
        wait_until(lambda: a.leads() != b.leads(), 60, "exactly one instance to lead")
        follower = b if a.leads() else a
        assert "password" not in " ".join(follower.proc.args)  # type: ignore[union-attr]
        client = SchemaRegistryClient({"url": follower.url, "ssl.ca.location": str(pki.ca),
                                       "basic.auth.user.info": "alice:alice-secret"})
        schema_id = client.register_schema("tls-value", Schema('"string"', "AVRO"))  # forwarded over HTTPS
        leader = a if follower is b else b
        wait_until(lambda: leader.request("GET", f"/schemas/ids/{schema_id}")[0] == 200, 15, "the id on the leader")
        # bob authenticates but holds no ACL on topic tls: 403; without credentials: 401.
        with pytest.raises(SchemaRegistryError) as info:
            SchemaRegistryClient({"url": leader.url, "ssl.ca.location": str(pki.ca),
                                  "basic.auth.user.info": "bob:bob-secret"}).get_latest_version("tls-value")
        assert info.value.http_status_code == 403
        assert RegistryProcess(sasl, tmp_path / "x.log", port=leader.port, tls_ca=pki.ca).request(
            "GET", "/subjects")[0] == 401
        # Plain HTTP is not served on the TLS port.
        import urllib.request

        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{leader.port}/", timeout=5).close()
    finally:
        for instance in instances:
            instance.kill()
        broker.kill()


def test_a_renewed_certificate_is_loaded_for_new_connections(tmp_path):
    """cert-manager rewrites the Secret's files in place: the next look loads them (a half-written pair is
    skipped, the old certificate stays)."""
    import os
    import shutil

    from strata_registry.cli import ServerTls

    first, second = secutil.make_pki(tmp_path / "one"), secutil.make_pki(tmp_path / "two")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(first.server_cert, cert)
    shutil.copy(first.server_key, key)
    tls = ServerTls(str(cert), str(key))
    assert tls.reload_if_changed() is False
    cert.write_text(second.server_cert.read_text())  # the key does not match yet
    os.utime(cert, (time.time() + 5, time.time() + 5))
    assert tls.reload_if_changed() is False
    key.write_text(second.server_key.read_text())
    os.utime(key, (time.time() + 10, time.time() + 10))
    assert tls.reload_if_changed() is True
