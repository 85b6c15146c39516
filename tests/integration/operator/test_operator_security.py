"""The operator and broker security end to end: `strata operator` (a real process, against kmock's
emulated Kubernetes API) manages a real broker that requires SASL/SCRAM and enforces ACLs, as the
broker's super user; real clients then use the credentials from each Microservice's Secret.

Proved here: the operator authenticates with its own admin credentials (STRATA_OPERATOR_KAFKA_*);
each Microservice's SCRAM credential is created on the broker with AlterUserScramCredentials and
matches its Secret; exactly the declared ACLs are applied (AclsApplied=True); the single writer
produces, the second claimant gets TOPIC_AUTHORIZATION_FAILED, a consumer reads its topic in its
group and cannot write; deleting the Secret rotates the password; deleting a Microservice removes
its ACLs and its credential; without the admin password the condition says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import secutil
from brokerproc import BrokerProcess
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from kmockserver import KubeEmulatorProcess
from test_operator_reconcile import API, cond, eventually

INTERVAL = 1.5
OPERATOR_USER = "strata-operator"
OPERATOR_PASSWORD = "operator-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def sbroker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """SASL_PLAINTEXT (SCRAM only), the authorizer on, the operator the only super user and the only
    user in the credentials file."""
    creds = tmp_path_factory.mktemp("op-sec-creds") / "users.json"
    secutil.write_credentials(creds, {OPERATOR_USER: OPERATOR_PASSWORD})
    proc = BrokerProcess(tmp_path_factory.mktemp("op-sec") / "broker", listeners={"SASL_PLAINTEXT": None}, settings={
        "sasl.credentials.file": str(creds), "sasl.enabled.mechanisms": "SCRAM-SHA-512,SCRAM-SHA-256",
        "authorizer.enable": "true", "super.users": f"User:{OPERATOR_USER}",
        "auto.create.topics.enable": "false"}).start()
    yield proc
    proc.stop()


def start_operator(workdir: Path, emulator: KubeEmulatorProcess, password: str) -> subprocess.Popen[bytes]:
    log = workdir / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(emulator.kubeconfig()),
           "STRATA_OPERATOR_RECONCILE_INTERVAL": str(INTERVAL), "STRATA_OPERATOR_RETRY_DELAY": "1",
           "STRATA_OPERATOR_DELETE_TIMEOUT": "30", "STRATA_OPERATOR_BROKER_TIMEOUT": "5",
           "STRATA_OPERATOR_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
           "STRATA_OPERATOR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "STRATA_OPERATOR_KAFKA_SASL_USERNAME": OPERATOR_USER,
           "STRATA_OPERATOR_KAFKA_SASL_PASSWORD": password}
    emulator.operator_log = log  # type: ignore[attr-defined]
    return subprocess.Popen([sys.executable, "-m", "strata_cli", "operator", "--liveness", ""],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory, sbroker: BrokerProcess) -> Iterator[KubeEmulatorProcess]:
    """The operator stops before the broker (which otherwise waits for its connections)."""
    workdir = tmp_path_factory.mktemp("kmock-sec")
    emulator = KubeEmulatorProcess(workdir).start()
    emulator.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    proc = start_operator(workdir, emulator, OPERATOR_PASSWORD)
    try:
        yield emulator
    finally:
        stop(proc)
        emulator.stop()


def operator_admin(broker: BrokerProcess) -> AdminClient:
    return AdminClient(secutil.confluent(broker.address("SASL_PLAINTEXT"), secutil.Auth(
        "SASL_PLAINTEXT", "SCRAM-SHA-512", OPERATOR_USER, OPERATOR_PASSWORD)))


def secure_broker_cr(kube: KubeEmulatorProcess, name: str, broker: BrokerProcess) -> None:
    kube.create({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": name}, "spec": {
        "external": {"bootstrapServers": broker.address("SASL_PLAINTEXT")},
        "listeners": [{"name": "sasl", "port": broker.listeners["SASL_PLAINTEXT"],
                       "authentication": "scram-sha-512"}]}})


def service(kube: KubeEmulatorProcess, name: str, broker: str, **spec: Any) -> None:
    kube.create({"apiVersion": API, "kind": "Microservice", "metadata": {"name": name},
                 "spec": {"brokerRef": {"name": broker}, "team": "shipping", "image": "example/app:1", **spec}})
    time.sleep(0.01)  # a distinct creation order (first come, first served)


def client_config(secret: dict[str, Any]) -> dict[str, str]:
    """What an app does with the Secret's KAFKA_* variables (envFrom)."""
    env = secret["stringData"]
    return {"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"], "security.protocol": env["KAFKA_SECURITY_PROTOCOL"],
            "sasl.mechanism": env["KAFKA_SASL_MECHANISM"], "sasl.username": env["KAFKA_SASL_USERNAME"],
            "sasl.password": env["KAFKA_SASL_PASSWORD"], "client.id": env["KAFKA_CLIENT_ID"]}


def produce(conf: dict[str, str], topic: str, value: bytes) -> KafkaError | None:
    """One record; the delivery error (None when delivered)."""
    producer = Producer({**conf, "enable.idempotence": False, "message.timeout.ms": 10000, "retries": 0})
    reports: list[KafkaError | None] = []
    producer.produce(topic, value=value, on_delivery=lambda err, _msg: reports.append(err))
    producer.flush(15)
    assert reports, "no delivery report"
    return reports[0]


def consume(conf: dict[str, str], topic: str, group: str, want: bytes, timeout: float = 20.0) -> KafkaError | None:
    """Join `group` on `topic` and read until `want` arrives; the first error instead, if any."""
    consumer = Consumer({**conf, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                return msg.error()
            if msg.value() == want:
                consumer.commit(msg, asynchronous=False)
                return None
        raise AssertionError(f"{want!r} not consumed from {topic} in {timeout}s")
    finally:
        consumer.close()


def authenticates(bootstrap: str, user: str, password: str) -> bool:
    """Whether the broker accepts this SCRAM-SHA-512 login (librdkafka reports a refusal at once)."""
    errors: list[KafkaError] = []
    client = AdminClient({**secutil.confluent(bootstrap, secutil.Auth("SASL_PLAINTEXT", "SCRAM-SHA-512", user,
                                                                      password)), "error_cb": errors.append})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            client.list_topics(timeout=0.5)
            return True
        except KafkaException:
            client.poll(0)
        if any(e.code() == KafkaError._AUTHENTICATION for e in errors):
            return False
    raise AssertionError(f"no answer to the login of {user}: {errors}")


def acls_of(admin: AdminClient, principal: str) -> set[tuple[str, str, str, str]]:
    flt = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, principal, None, AclOperation.ANY,
                           AclPermissionType.ANY)
    return {(b.restype.name, b.name, b.operation.name, b.permission_type.name)
            for b in admin.describe_acls(flt).result(10)}


def scram_users(admin: AdminClient) -> dict[str, list[str]]:
    out = admin.describe_user_scram_credentials().result(10)
    return {user: sorted(i.mechanism.name for i in desc.scram_credential_infos) for user, desc in out.items()}


def test_microservices_get_exactly_what_they_declared(kube, sbroker):
    admin = operator_admin(sbroker)
    bootstrap = sbroker.address("SASL_PLAINTEXT")
    secure_broker_cr(kube, "secure", sbroker)
    eb = eventually(lambda: (b := kube.get("EventBroker", "secure")) and cond(b, "Ready").get("status") == "True"
                    and b, "EventBroker Ready over SASL", kube=kube)
    assert eb["status"]["authorizer"] is True

    # topics, created by the operator as the broker's super user
    for topic in ("orders", "invoices"):
        kube.create({"apiVersion": API, "kind": "Topic", "metadata": {"name": topic},
                     "spec": {"brokerRef": {"name": "secure"}, "team": "shipping", "deletionPolicy": "Delete"}})
    eventually(lambda: {"orders", "invoices"} <= set(admin.list_topics(timeout=10).topics), "topics", kube=kube)

    service(kube, "order-service", "secure", produces=["orders"])
    service(kube, "order-service-v2", "secure", produces=["orders"])
    service(kube, "billing", "secure", consumes=["orders"], produces=["invoices"])
    for name in ("order-service", "order-service-v2", "billing"):
        eventually(lambda n=name: cond(kube.get("Microservice", n), "AclsApplied").get("status") == "True",
                   f"{name}: AclsApplied", kube=kube)
        # Ready follows the Deployment's availability (the emulator runs no pods: its status is set here)
        kube.patch("Deployment", name, {"status": {"availableReplicas": 1}})
    eventually(lambda: cond(kube.get("Microservice", "order-service"), "Ready").get("status") == "True",
               "order-service Ready", timeout=INTERVAL * 6, kube=kube)
    second = kube.get("Microservice", "order-service-v2")
    assert cond(second, "WriterConflict")["status"] == "True" and cond(second, "Ready")["status"] == "False"

    # exactly the declared ACLs
    assert acls_of(admin, "User:default.order-service") == {
        ("TOPIC", "orders", "WRITE", "ALLOW"), ("TOPIC", "orders", "DESCRIBE", "ALLOW")}
    assert acls_of(admin, "User:default.order-service-v2") == {("TOPIC", "orders", "DESCRIBE", "ALLOW")}
    assert acls_of(admin, "User:default.billing") == {
        ("TOPIC", "orders", "READ", "ALLOW"), ("TOPIC", "orders", "DESCRIBE", "ALLOW"),
        ("TOPIC", "invoices", "WRITE", "ALLOW"), ("TOPIC", "invoices", "DESCRIBE", "ALLOW"),
        ("GROUP", "default.billing", "READ", "ALLOW"), ("GROUP", "default.billing", "DESCRIBE", "ALLOW")}
    # one SCRAM credential per service, set through the admin API
    users = scram_users(admin)
    for name in ("order-service", "order-service-v2", "billing"):
        assert users.get(f"default.{name}") == ["SCRAM_SHA_512"], users

    # real clients with the Secrets' credentials
    writer = client_config(kube.get("Secret", "order-service-kafka"))
    claimant = client_config(kube.get("Secret", "order-service-v2-kafka"))
    billing = client_config(kube.get("Secret", "billing-kafka"))
    assert writer["bootstrap.servers"] == bootstrap and writer["security.protocol"] == "SASL_PLAINTEXT"
    assert writer["sasl.username"] == "default.order-service"
    assert kube.get("Secret", "billing-kafka")["stringData"]["KAFKA_GROUP_ID"] == "default.billing"

    first = f"order-{uuid.uuid4().hex}".encode()
    assert produce(writer, "orders", first) is None
    err = produce(claimant, "orders", b"not allowed")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    assert consume(billing, "orders", "default.billing", first) is None  # Read topic + Read group
    err = produce(billing, "orders", b"not allowed either")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    assert produce(billing, "invoices", b"invoice-1") is None
    err = consume(billing, "orders", "someone-elses-group", first)
    assert err is not None and err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, err
    err = consume(writer, "orders", "order-service", first)  # Write does not imply Read
    assert err is not None and err.code() in {KafkaError.GROUP_AUTHORIZATION_FAILED,
                                              KafkaError.TOPIC_AUTHORIZATION_FAILED}, err

    # rotation: deleting the Secret makes the operator generate a new password and set it on the broker
    old = writer["sasl.password"]
    kube.delete("Secret", "order-service-kafka")
    rotated = eventually(lambda: (s := kube.get("Secret", "order-service-kafka"))
                         and s["stringData"]["KAFKA_SASL_PASSWORD"] != old and s,
                         "a new Secret", timeout=INTERVAL * 20, kube=kube)
    new = client_config(rotated)
    eventually(lambda: authenticates(bootstrap, new["sasl.username"], new["sasl.password"]),
               "the new password works", kube=kube)
    assert not authenticates(bootstrap, new["sasl.username"], old)
    assert produce(new, "orders", b"after rotation") is None

    # deleting a Microservice removes its ACLs and its credential
    kube.delete("Microservice", "billing")
    eventually(lambda: kube.get("Microservice", "billing") is None, "billing gone", kube=kube)
    assert acls_of(admin, "User:default.billing") == set()
    assert "default.billing" not in scram_users(admin)
    assert not authenticates(bootstrap, billing["sasl.username"], billing["sasl.password"])

    # the writer goes: the second claimant gets Write on the next timed reconcile, and can produce
    kube.delete("Microservice", "order-service")
    eventually(lambda: kube.get("Microservice", "order-service") is None, "writer gone", kube=kube)
    eventually(lambda: ("TOPIC", "orders", "WRITE", "ALLOW") in acls_of(admin, "User:default.order-service-v2"),
               "Write moves to the second claimant", timeout=INTERVAL * 20, kube=kube)
    assert acls_of(admin, "User:default.order-service") == set()
    assert produce(claimant, "orders", b"now the writer") is None
    eventually(lambda: cond(kube.get("Microservice", "order-service-v2"), "Ready").get("status") == "True",
               "order-service-v2 Ready", timeout=INTERVAL * 6, kube=kube)


def test_without_the_admin_password_the_condition_says_so(tmp_path, sbroker):
    emulator = KubeEmulatorProcess(tmp_path).start()
    proc = None
    try:
        emulator.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        proc = start_operator(tmp_path, emulator, password="")
        secure_broker_cr(emulator, "secure", sbroker)
        service(emulator, "lonely", "secure", produces=["orders"])
        c = eventually(lambda: (r := cond(emulator.get("Microservice", "lonely"), "AclsApplied")).get("reason")
                       == "NoAdminCredentials" and r, "NoAdminCredentials", kube=emulator)
        assert "STRATA_OPERATOR_KAFKA_SASL_PASSWORD" in c["message"]
        assert cond(emulator.get("EventBroker", "secure"), "Ready")["status"] == "False"
    finally:
        if proc is not None:
            stop(proc)
        emulator.stop()


def test_wrong_admin_password_is_a_condition_not_a_crash(tmp_path, sbroker):
    emulator = KubeEmulatorProcess(tmp_path).start()
    proc = None
    try:
        emulator.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        proc = start_operator(tmp_path, emulator, password="wrong")
        secure_broker_cr(emulator, "secure", sbroker)
        c = eventually(lambda: (r := cond(emulator.get("EventBroker", "secure"), "Ready")).get("status") == "False"
                       and r, "EventBroker not Ready", kube=emulator)
        assert c["reason"] == "BrokerUnavailable"
        assert proc.poll() is None
    finally:
        if proc is not None:
            stop(proc)
        emulator.stop()



def test_managed_broker_pods_get_working_security_settings(tmp_path):
    """What the operator renders for a managed EventBroker with a SCRAM listener and authorization
    simple — the ConfigMap's properties, the pod's start script and the credentials Secret — run
    for real: the script starts `strata-broker`, the operator's user logs in with SCRAM and is a
    super user, PLAIN is refused, and an unauthenticated client on the plain listener sees nothing."""
    import shutil

    import kubernetes_validate
    from brokerproc import free_port
    from strata_operator import resources, scram

    plain_port, sasl_port = free_port(), free_port()
    cr = {"apiVersion": API, "kind": "EventBroker", "metadata": {"name": "events", "namespace": "strata", "uid": "u"},
          "spec": {"replicas": 1, "image": "strata-broker:0.1",
                   "listeners": [{"name": "sasl", "port": sasl_port, "authentication": "scram-sha-512"},
                                 {"name": "plain", "port": plain_port}],
                   "authorization": {"type": "simple", "superUsers": ["User:admin"]}}}
    users = scram.credentials_file({OPERATOR_USER: OPERATOR_PASSWORD})
    assert scram.credentials_file({OPERATOR_USER: OPERATOR_PASSWORD}, users) == users  # stable across reconciles
    assert OPERATOR_PASSWORD not in users
    objs = resources.eventbroker_objects(cr, OPERATOR_USER, users)
    for obj in objs:
        kubernetes_validate.validate(obj, "1.35", strict=True)
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    secret = by_kind[("Secret", "events-credentials")]
    props = dict(line.split("=", 1) for line in
                 by_kind[("ConfigMap", "events-config")]["data"]["broker.properties"].splitlines())
    assert props["super.users"] == f"User:{OPERATOR_USER};User:admin" and props["authorizer.enable"] == "true"
    assert "PLAIN" not in props["sasl.enabled.mechanisms"].split(",")
    sts = by_kind[("StatefulSet", "events-broker")]
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "credentials")
    assert props["sasl.credentials.file"] == f"{mount['mountPath']}/{resources.CREDENTIALS_KEY}"
    assert next(v for v in pod["volumes"] if v["name"] == "credentials")["secret"]["secretName"] == "events-credentials"
    assert [p["containerPort"] for p in container["ports"]] == [sasl_port, plain_port]
    assert [p["port"] for p in by_kind[("Service", "events-bootstrap")]["spec"]["ports"]] == [sasl_port, plain_port]

    # run the pod's script, with the pod's paths and DNS names mapped onto this machine
    data, config, creds = tmp_path / "data", tmp_path / "config", tmp_path / "credentials"
    for d in (data, config, creds):
        d.mkdir()
    (creds / resources.CREDENTIALS_KEY).write_text(secret["stringData"][resources.CREDENTIALS_KEY])
    text = by_kind[("ConfigMap", "events-config")]["data"]["broker.properties"]
    (config / "broker.properties").write_text(text.replace(resources.CREDENTIALS_DIR, str(creds))
                                              .replace("0.0.0.0", "127.0.0.1"))
    script = (container["command"][2].replace(resources.DATA_DIR, str(data))
              .replace(resources.CONFIG_DIR + "/", str(config) + "/")
              .replace("${HOSTNAME}.events-brokers.strata.svc", "127.0.0.1"))
    bindir = Path(sys.executable).parent
    assert shutil.which("strata-broker", path=str(bindir))
    log = open(tmp_path / "broker.log", "w")
    proc = subprocess.Popen(["/bin/sh", "-c", script], env={**os.environ, "HOSTNAME": "events-broker-0",
                                                            "PATH": f"{bindir}:{os.environ['PATH']}"},
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        bootstrap = f"127.0.0.1:{sasl_port}"

        def login() -> bool:
            if proc.poll() is not None:
                raise RuntimeError("the broker exited:\n" + (tmp_path / "broker.log").read_text())
            return authenticates(bootstrap, OPERATOR_USER, OPERATOR_PASSWORD)

        assert eventually(login, "the operator logs in")
        admin = AdminClient(secutil.confluent(bootstrap, secutil.Auth("SASL_PLAINTEXT", "SCRAM-SHA-512",
                                                                      OPERATOR_USER, OPERATOR_PASSWORD)))
        assert acls_of(admin, "User:nobody") == set()  # DescribeAcls: the authorizer is on, the operator super
        plain = Producer({**secutil.confluent(bootstrap, secutil.Auth("SASL_PLAINTEXT", "PLAIN", OPERATOR_USER,
                                                                      OPERATOR_PASSWORD))})
        with pytest.raises(KafkaException):
            plain.list_topics(timeout=3)
        anonymous = AdminClient({"bootstrap.servers": f"127.0.0.1:{plain_port}"})
        assert set(anonymous.list_topics(timeout=10).topics) == set()
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.parametrize(("spec", "message"), [
    ({"image": "b:1", "authorization": {"type": "simple"}}, "needs the first listener to authenticate"),
    ({"image": "b:1", "listeners": [{"name": "plain", "port": 9092, "authentication": "none"},
                                    {"name": "sasl", "port": 9093, "authentication": "scram-sha-512"}],
      "authorization": {"type": "simple"}}, "needs the first listener to authenticate"),
    ({"external": {"bootstrapServers": "h:9092"}, "authorization": {"type": "none"}}, "configured on that broker"),
    ({"image": "b:1", "listeners": [{"name": "sasl", "port": 9092, "authentication": "scram-sha-512"}],
      "authorization": {"type": "simple", "superUsers": ["admin"]}}, "superUsers"),
])
def test_admission_refuses_incoherent_security(spec, message):
    from crd_admission import admission_errors

    errors = admission_errors({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": "b"}, "spec": spec})
    assert any(message in e for e in errors), errors
    ok = {"apiVersion": API, "kind": "EventBroker", "metadata": {"name": "b"}, "spec": {
        "image": "b:1", "listeners": [{"name": "sasl", "port": 9092, "authentication": "scram-sha-512"}],
        "authorization": {"type": "simple", "superUsers": ["User:admin"]}}}
    assert admission_errors(ok) == []
