"""Issue 19: TLS EventBrokers (SASL_SSL and mutual TLS) and broker storage expansion.

Builders are checked against the Kubernetes schemas (kubernetes-validate); brokers are real processes
started with the configuration the operator's builder renders (its paths pointed at files written as
the kubelet would mount the Secrets); `strata operator` runs against kmock's emulated API. A test PKI
is made here with `cryptography`.

Proved here: the operator renders SASL_SSL and mTLS listeners (certificate from cert-manager or a
Secret); a Microservice's pod environment (its Secret, as the operator wrote it) connects with
confluent-kafka over SASL_SSL and produces; no client certificate the CA signs can be the operator's
principal; a storage size the StorageClass cannot expand is refused with a condition (the volumes keep
their size), and one it can expand is applied to each broker's PVC (never to the immutable
volumeClaimTemplates).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import socket
import ssl
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import secutil
from brokerproc import BrokerProcess, free_port
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kmockserver import KubeEmulatorProcess
from strata_operator import resources
from test_operator_reconcile import API, cond
from test_operator_reconcile import eventually as _eventually

K8S_VERSION = "1.35"
OPERATOR_USER = "strata-operator"
OPERATOR_PASSWORD = "operator-" + uuid.uuid4().hex
INTERVAL = 2.0
WAIT = 60.0  # generous: the machine may be loaded


def eventually(check: Any, what: str, timeout: float = WAIT, kube: Any = None) -> Any:
    return _eventually(check, what, timeout=timeout, kube=kube)


# -- a test CA -------------------------------------------------------------------------------


class Ca:
    """A self-signed CA that issues server and client certificates (PEM text), as cert-manager would."""

    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.now = datetime.datetime.now(datetime.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "strata-tls-test-ca")])
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(self.now - datetime.timedelta(minutes=5))
                     .not_valid_after(self.now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))

    @property
    def pem(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, cn: str | None = None, dns: list[str] | None = None, server: bool = False) -> tuple[str, str]:
        """(certificate PEM, key PEM)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(self.now - datetime.timedelta(minutes=5))
                   .not_valid_after(self.now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if dns:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return (cert.public_bytes(serialization.Encoding.PEM).decode(),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode())


@pytest.fixture(scope="module")
def ca() -> Ca:
    return Ca()


def broker_cr(name: str = "events", namespace: str = "strata", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "EventBroker", "metadata": {"name": name, "namespace": namespace, "uid": "u-1"},
            "spec": {"image": "strata-broker:0.1", **spec}}


SASL_TLS = {"name": "sasl-tls", "port": 9093, "tls": True, "authentication": "scram-sha-512"}
MTLS = {"name": "mtls", "port": 9094, "tls": True, "authentication": "tls"}


def microservice(name: str = "orders", namespace: str = "shop", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "Microservice", "metadata": {"name": name, "namespace": namespace, "uid": "u-2"},
            "spec": {"brokerRef": {"name": "events", "namespace": "strata"}, "team": "shop", "image": "shop:1",
                     **spec}}


# -- builders --------------------------------------------------------------------------------


def test_tls_broker_objects_from_a_cert_manager_issuer():
    cr = broker_cr(listeners=[SASL_TLS, MTLS], tls={"issuerRef": {"name": "strata-ca", "kind": "ClusterIssuer"}},
                   authorization={"type": "simple"}, config={"ssl.reserved.principals": ""})
    props = resources.broker_properties(cr)
    assert props["listener.security.protocol.map"] == "SASL-TLS:SASL_SSL,MTLS:SSL"
    assert props["ssl.certificate.location"] == f"{resources.TLS_DIR}/tls.crt"
    assert props["ssl.key.location"] == f"{resources.TLS_DIR}/tls.key"
    assert props["ssl.ca.location"] == f"{resources.TLS_DIR}/ca.crt"
    assert props["ssl.client.auth"] == "none" and props["ssl.client.auth.listener.map"] == "MTLS:required"
    # spec.config cannot take the operator's principal off the reserved list
    assert props["ssl.reserved.principals"] == f"User:{OPERATOR_USER}"
    assert props["sasl.enabled.mechanisms"] == resources.SASL_MECHANISMS

    objects = resources.eventbroker_objects(cr, users_file='{"users": {}}')
    (certificate,) = [o for o in objects if o["kind"] == "Certificate"]
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert certificate["spec"]["secretName"] == "events-broker-tls" == resources.tls_secret_name(cr)
    assert certificate["spec"]["issuerRef"] == {"name": "strata-ca", "kind": "ClusterIssuer",
                                                "group": "cert-manager.io"}
    assert {"events-bootstrap.strata.svc", "*.events-brokers.strata.svc",
            "*.events-brokers.strata.svc.cluster.local"} <= set(certificate["spec"]["dnsNames"])
    assert "commonName" not in certificate["spec"]  # the brokers' certificate maps to no principal
    for obj in objects:
        if obj["kind"] != "Certificate":
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    sts = next(o for o in objects if o["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == "events-broker-tls"
    assert {"name": "tls", "mountPath": resources.TLS_DIR, "readOnly": True} in pod["containers"][0]["volumeMounts"]


def test_tls_broker_from_a_named_secret_has_no_certificate():
    cr = broker_cr(listeners=[SASL_TLS], tls={"secretName": "my-tls"})
    objects = resources.eventbroker_objects(cr)
    assert not [o for o in objects if o["kind"] == "Certificate"]
    sts = next(o for o in objects if o["kind"] == "StatefulSet")
    assert any(v.get("secret", {}).get("secretName") == "my-tls" for v in sts["spec"]["template"]["spec"]["volumes"])
    assert "ssl.client.auth.listener.map" not in resources.broker_properties(cr)
    # without TLS nothing changes
    plain = resources.broker_properties(broker_cr())
    assert not [k for k in plain if k.startswith("ssl.")]


def test_microservice_on_tls_listeners(ca: Ca):
    broker = broker_cr(listeners=[SASL_TLS, MTLS], tls={"issuerRef": {"name": "strata-ca", "kind": "ClusterIssuer"}})
    # SASL_SSL (the first listener): the CA as PEM and as a mounted file
    ms = microservice()
    listener = resources.client_listener(broker)
    objects = resources.microservice_objects(ms, resources.listener_bootstrap(broker, listener), "pw", True, (),
                                             listener, ca.pem, None)
    secret = next(o for o in objects if o["kind"] == "Secret")["stringData"]
    assert secret["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert secret["KAFKA_BOOTSTRAP_SERVERS"] == "events-bootstrap.strata.svc:9093"
    assert secret[resources.CA_PEM_KEY] == ca.pem
    assert secret["KAFKA_SSL_CA_LOCATION"] == f"{resources.CLIENT_TLS_DIR}/ca.crt"
    assert "KAFKA_SSL_CERTIFICATE_LOCATION" not in secret
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["volumes"][0]["projected"]["sources"] == [
        {"secret": {"name": "orders-kafka", "items": [{"key": resources.CA_PEM_KEY, "path": "ca.crt"}]}}]
    assert pod["containers"][0]["volumeMounts"] == [
        {"name": "kafka-tls", "mountPath": resources.CLIENT_TLS_DIR, "readOnly": True}]

    # mutual TLS: a client Certificate whose common name is the principal name
    ms = microservice(listener="mtls")
    listener = resources.client_listener(broker, "mtls")
    objects = resources.microservice_objects(ms, resources.listener_bootstrap(broker, listener), "pw", True, (),
                                             listener, ca.pem, resources.issuer_ref(broker))
    assert [o["kind"] for o in objects] == ["ServiceAccount", "Secret", "Certificate", "Deployment"]
    certificate = objects[2]
    assert certificate["metadata"]["namespace"] == "shop"
    assert certificate["spec"]["commonName"] == "shop.orders" == resources.principal_name(ms)
    assert certificate["spec"]["usages"][0] == "client auth"
    secret = objects[1]["stringData"]
    assert secret["KAFKA_SECURITY_PROTOCOL"] == "SSL"
    assert secret["KAFKA_BOOTSTRAP_SERVERS"] == "events-bootstrap.strata.svc:9094"
    assert secret["KAFKA_SSL_CERTIFICATE_LOCATION"] == f"{resources.CLIENT_TLS_DIR}/tls.crt"
    deployment = objects[3]
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    sources = deployment["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"]
    assert sources[1]["secret"]["name"] == "orders-kafka-tls"
    # credentials only: the Secret and the Certificate
    bare = microservice(listener="mtls")
    del bare["spec"]["image"]
    assert [o["kind"] for o in resources.microservice_objects(
        bare, "b:9094", "pw", True, (), listener, ca.pem, resources.issuer_ref(broker))] == ["Secret", "Certificate"]
    with pytest.raises(KeyError):
        resources.client_listener(broker, "nope")


def test_storage_helpers():
    sts = resources.broker_statefulset(broker_cr(storage={"size": "20Gi"}))
    assert resources.claim_size(sts) == "20Gi"
    kept = resources.with_claim_size(sts, "10Gi")
    assert resources.claim_size(kept) == "10Gi" and resources.claim_size(sts) == "20Gi"
    kubernetes_validate.validate(kept, K8S_VERSION, strict=True)
    assert resources.broker_pvc_names(broker_cr(replicas=2)) == ["data-events-broker-0", "data-events-broker-1"]


# -- real brokers with the rendered configuration ------------------------------------------------


def materialise(props: dict[str, str], directory: Path, files: dict[str, str]) -> dict[str, str]:
    """The rendered broker properties with the Secret mounts pointed at files under `directory` (as the
    kubelet would mount them): `files` maps a mounted path to its content."""
    directory.mkdir(parents=True, exist_ok=True)
    local: dict[str, str] = {}
    for mounted, content in files.items():
        path = directory / mounted.strip("/").replace("/", "_")
        path.write_text(content)
        local[mounted] = str(path)
    return {k: local.get(v, v) for k, v in props.items()}


def local_listeners(props: dict[str, str], ports: dict[str, int]) -> dict[str, str]:
    """Each rendered listener on 127.0.0.1 at a free port, advertised as such."""
    out = dict(props)
    out["listeners"] = ",".join(f"{n}://127.0.0.1:{p}" for n, p in ports.items())
    out["advertised.listeners"] = out["listeners"]
    return out


def api_versions_answered(port: int, ca: Ca, cert: tuple[str, str], workdir: Path) -> bool:
    """Whether the broker answers an ApiVersions request on a TLS connection presenting `cert` (False
    when it closes the connection instead)."""
    cert_path, key_path = workdir / f"c-{uuid.uuid4().hex}.pem", workdir / f"k-{uuid.uuid4().hex}.pem"
    cert_path.write_text(cert[0])
    key_path.write_text(cert[1])
    ca_path = workdir / "ca.pem"
    ca_path.write_text(ca.pem)
    context = ssl.create_default_context(cafile=str(ca_path))
    context.load_cert_chain(str(cert_path), str(key_path))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        client_id = b"tls-test"
        body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id  # ApiVersions v0
        try:
            tls.sendall(struct.pack(">i", len(body)) + body)
            head = tls.recv(4)
        except (ConnectionError, ssl.SSLError):
            return False
        return len(head) == 4


def test_mtls_principal_and_the_reserved_operator_name(tmp_path: Path, ca: Ca):
    """A broker started with the rendered config: a workload's certificate works on the mTLS listener;
    a certificate naming the operator (which the same CA can sign for anyone who may request one) is
    refused; the operator itself logs in with SCRAM over TLS."""
    cr = broker_cr(listeners=[SASL_TLS, MTLS], tls={"issuerRef": {"name": "strata-ca"}})
    server = ca.issue(dns=[*resources.broker_dns_names(cr), "localhost"], server=True)
    creds = tmp_path / "users.json"
    secutil.write_credentials(creds, {OPERATOR_USER: OPERATOR_PASSWORD})
    props = materialise(resources.broker_properties(cr), tmp_path / "mounts", {
        f"{resources.TLS_DIR}/tls.crt": server[0], f"{resources.TLS_DIR}/tls.key": server[1],
        f"{resources.TLS_DIR}/ca.crt": ca.pem})
    props["sasl.credentials.file"] = str(creds)
    ports = {"SASL-TLS": free_port(), "MTLS": free_port()}
    proc = BrokerProcess(tmp_path / "broker", settings=local_listeners(props, ports)).start()
    try:
        workload = ca.issue("shop.orders")
        assert api_versions_answered(ports["MTLS"], ca, workload, tmp_path)
        assert not api_versions_answered(ports["MTLS"], ca, ca.issue(OPERATOR_USER), tmp_path)
        assert "reserved principal User:strata-operator" in proc.log_path.read_text()
        # the operator: SCRAM over TLS, verified against the CA
        (tmp_path / "ca.pem").write_text(ca.pem)
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{ports['SASL-TLS']}", "security.protocol": "SASL_SSL",
                             "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": OPERATOR_USER,
                             "sasl.password": OPERATOR_PASSWORD, "ssl.ca.location": str(tmp_path / "ca.pem")})
        admin.create_topics([NewTopic("mtls-topic", 1, 1)])["mtls-topic"].result(20)
        # the workload's certificate produces over mTLS
        cert, key = tmp_path / "w.pem", tmp_path / "w.key"
        cert.write_text(workload[0])
        key.write_text(workload[1])
        err = produce({"bootstrap.servers": f"127.0.0.1:{ports['MTLS']}", "security.protocol": "SSL",
                       "ssl.ca.location": str(tmp_path / "ca.pem"), "ssl.certificate.location": str(cert),
                       "ssl.key.location": str(key)}, "mtls-topic", b"hello")
        assert err is None, err
    finally:
        proc.stop()


def served_certificate(port: int) -> bytes:
    """The DER certificate a TLS listener presents (unverified: only which one it is matters)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der
    return der


def test_a_renewed_certificate_is_served_without_a_restart(tmp_path: Path, ca: Ca):
    """cert-manager renews the brokers' certificate in its Secret; the kubelet swaps the mounted files.
    New connections get the new certificate; a broken pair is refused and the previous one kept."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cr = broker_cr(listeners=[SASL_TLS], tls={"issuerRef": {"name": "strata-ca"}})
    first = ca.issue(dns=["localhost"], server=True)
    props = materialise(resources.broker_properties(cr), tmp_path / "mounts", {
        f"{resources.TLS_DIR}/tls.crt": first[0], f"{resources.TLS_DIR}/tls.key": first[1],
        f"{resources.TLS_DIR}/ca.crt": ca.pem})
    props["ssl.certificate.reload.ms"] = "200"
    props.pop("sasl.credentials.file")
    port = free_port()
    proc = BrokerProcess(tmp_path / "broker", settings=local_listeners(props, {"SASL-TLS": port})).start()

    def der(pem: str) -> bytes:
        return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)

    def swap(cert: str, key: str) -> None:  # as a Secret volume update: new files renamed into place
        for name, text in (("tls.crt", cert), ("tls.key", key)):
            path = Path(props[f"ssl.{'certificate' if name == 'tls.crt' else 'key'}.location"])
            tmp = path.with_suffix(".new")
            tmp.write_text(text)
            os.replace(tmp, path)

    try:
        assert served_certificate(port) == der(first[0])
        renewed = ca.issue(dns=["localhost"], server=True)
        swap(*renewed)
        eventually(lambda: served_certificate(port) == der(renewed[0]), "the renewed certificate served")
        refusals = proc.log_path.read_text().count("do not load, keeping the previous certificate")
        swap(ca.issue(dns=["localhost"], server=True)[0], renewed[1])  # a certificate with another's key
        eventually(lambda: proc.log_path.read_text().count("do not load, keeping the previous certificate")
                   > refusals, "the broken pair refused")
        assert served_certificate(port) == der(renewed[0])
    finally:
        proc.stop()


def produce(conf: dict[str, str], topic: str, value: bytes) -> KafkaError | None:
    producer = Producer({**conf, "message.timeout.ms": 20000})
    reports: list[KafkaError | None] = []
    producer.produce(topic, value=value, on_delivery=lambda err, _msg: reports.append(err))
    producer.flush(30)
    assert reports, "no delivery report"
    return reports[0]


# -- the operator against kmock ----------------------------------------------------------------


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEmulatorProcess]:
    workdir = tmp_path_factory.mktemp("kmock-tls")
    emulator = KubeEmulatorProcess(workdir).start()
    emulator.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    log = workdir / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(emulator.kubeconfig()),
           "STRATA_OPERATOR_RECONCILE_INTERVAL": str(INTERVAL), "STRATA_OPERATOR_RETRY_DELAY": "1",
           "STRATA_OPERATOR_DELETE_TIMEOUT": "30", "STRATA_OPERATOR_BROKER_TIMEOUT": "5",
           "STRATA_OPERATOR_KAFKA_SASL_USERNAME": OPERATOR_USER,
           "STRATA_OPERATOR_KAFKA_SASL_PASSWORD": OPERATOR_PASSWORD}
    proc = subprocess.Popen([sys.executable, "-m", "strata_cli", "operator", "--liveness", ""],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    emulator.operator_log = log  # type: ignore[attr-defined]
    try:
        yield emulator
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        emulator.stop()


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    """A Secret's values, as a pod sees them (the emulator may keep stringData as written)."""
    out = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    out.update(secret.get("stringData") or {})
    return out


def test_a_microservice_connects_over_sasl_ssl(kube: KubeEmulatorProcess, ca: Ca, tmp_path: Path):
    # The EventBroker's certificate Secret (what cert-manager or an admin provides), for its DNS names
    # (and 127.0.0.1, where the test runs the broker).
    managed = broker_cr(namespace="default", listeners=[SASL_TLS], tls={"secretName": "events-tls"},
                        authorization={"type": "simple"})
    managed["metadata"].pop("uid")
    server = ca.issue(dns=[*resources.broker_dns_names(managed), "localhost"], server=True)
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "events-tls"}, "type": "kubernetes.io/tls",
                 "data": {k: base64.b64encode(v.encode()).decode()
                          for k, v in {"tls.crt": server[0], "tls.key": server[1], "ca.crt": ca.pem}.items()}})
    kube.create(managed)
    configmap = eventually(lambda: kube.get("ConfigMap", "events-config"), "the brokers' ConfigMap", kube=kube)
    credentials = eventually(lambda: (s := kube.get("Secret", "events-credentials"))
                             and OPERATOR_USER in secret_data(s)[resources.CREDENTIALS_KEY] and s,
                             "the brokers' credentials with the operator's user", kube=kube)
    sts = eventually(lambda: kube.get("StatefulSet", "events-broker"), "the StatefulSet", kube=kube)
    mounts = {m["mountPath"]: m["name"] for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts[resources.TLS_DIR]]["secret"]["secretName"] == "events-tls"
    assert cond(eventually(lambda: (b := kube.get("EventBroker", "events")) and cond(b, "Ready") and b,
                           "EventBroker status", kube=kube), "Ready")["reason"] == "BrokersStarting"

    # A real broker with exactly that configuration; the mounted Secrets become files.
    props = dict(line.split("=", 1) for line in configmap["data"]["broker.properties"].splitlines() if line)
    tls_secret = secret_data(kube.get("Secret", "events-tls"))
    props = materialise(props, tmp_path / "mounts", {
        **{f"{resources.TLS_DIR}/{k}": tls_secret[k] for k in ("tls.crt", "tls.key", "ca.crt")},
        f"{resources.CREDENTIALS_DIR}/{resources.CREDENTIALS_KEY}":
            secret_data(credentials)[resources.CREDENTIALS_KEY]})
    port = free_port()
    proc = BrokerProcess(tmp_path / "broker", settings=local_listeners(props, {"SASL-TLS": port})).start()
    try:
        # kmock cannot resolve the Service names: the operator reaches that broker through an external
        # EventBroker at its local address, with the same listener and CA.
        kube.create({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": "events-local"}, "spec": {
            "external": {"bootstrapServers": f"127.0.0.1:{port}"}, "tls": {"secretName": "events-tls"},
            "listeners": [{**SASL_TLS, "port": port}]}})
        eb = eventually(lambda: (b := kube.get("EventBroker", "events-local"))
                        and cond(b, "Ready").get("status") == "True" and b, "EventBroker Ready over SASL_SSL",
                        kube=kube)
        assert eb["status"]["authorizer"] is True
        kube.create({"apiVersion": API, "kind": "Topic", "metadata": {"name": "payments"},
                     "spec": {"brokerRef": {"name": "events-local"}, "team": "shop"}})
        kube.create({"apiVersion": API, "kind": "Microservice", "metadata": {"name": "payments"},
                     "spec": {"brokerRef": {"name": "events-local"}, "team": "shop", "image": "shop/payments:1",
                              "produces": ["payments"]}})
        eventually(lambda: cond(kube.get("Microservice", "payments"), "AclsApplied").get("status") == "True",
                   "the service's credential and ACLs", kube=kube)

        env = secret_data(kube.get("Secret", "payments-kafka"))
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env[resources.CA_PEM_KEY] == ca.pem
        # the Deployment mounts the CA where KAFKA_SSL_CA_LOCATION says
        deployment = kube.get("Deployment", "payments")
        pod = deployment["spec"]["template"]["spec"]
        (mount,) = pod["containers"][0]["volumeMounts"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        (source,) = volume["projected"]["sources"]
        assert source["secret"]["name"] == "payments-kafka"
        (item,) = source["secret"]["items"]
        assert f"{mount['mountPath']}/{item['path']}" == env["KAFKA_SSL_CA_LOCATION"]
        ca_file = tmp_path / "pod" / item["path"]
        ca_file.parent.mkdir()
        ca_file.write_text(env[item["key"]])

        # the pod's environment, as an app hands it to confluent-kafka
        conf = {"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"],
                "security.protocol": env["KAFKA_SECURITY_PROTOCOL"],
                "sasl.mechanism": env["KAFKA_SASL_MECHANISM"], "sasl.username": env["KAFKA_SASL_USERNAME"],
                "sasl.password": env["KAFKA_SASL_PASSWORD"], "client.id": env["KAFKA_CLIENT_ID"],
                "ssl.ca.location": str(ca_file)}
        assert produce(conf, "payments", b"paid over TLS") is None
        # the same with the CA as PEM (librdkafka's ssl.ca.pem)
        pem_conf = {**{k: v for k, v in conf.items() if k != "ssl.ca.location"},
                    "ssl.ca.pem": env[resources.CA_PEM_KEY]}
        assert produce(pem_conf, "payments", b"paid again") is None
    finally:
        for kind, name in (("Microservice", "payments"), ("Topic", "payments"), ("EventBroker", "events-local")):
            kube.patch(kind, name, {"metadata": {"annotations": {"strata.dev/skip-cleanup": "true"}}})
            kube.delete(kind, name)
        eventually(lambda: kube.get("EventBroker", "events-local") is None, "cleanup", kube=kube)
        proc.stop()


# -- storage expansion -------------------------------------------------------------------------


def storage_class(kube: KubeEmulatorProcess, name: str, expandable: bool) -> None:
    kube.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
                 "provisioner": "example.com/disk", "allowVolumeExpansion": expandable})


def test_storage_growth_the_class_cannot_expand_is_refused(kube: KubeEmulatorProcess):
    storage_class(kube, "fixed", False)
    kube.create({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": "fixed-disk"},
                 "spec": {"image": "strata-broker:0.1", "storage": {"size": "10Gi", "class": "fixed"}}})
    eventually(lambda: resources.claim_size(kube.get("StatefulSet", "fixed-disk-broker")) == "10Gi", "StatefulSet",
               kube=kube)
    kube.patch_spec("EventBroker", "fixed-disk", {"storage": {"size": "20Gi", "class": "fixed"}})
    eb = eventually(lambda: (b := kube.get("EventBroker", "fixed-disk"))
                    and cond(b, "StorageExpansionRefused").get("status") == "True" and b,
                    "StorageExpansionRefused", kube=kube)
    assert cond(eb, "StorageExpansionRefused")["reason"] == "ExpansionNotAllowed"
    assert "fixed" in cond(eb, "StorageExpansionRefused")["message"]
    assert eb["status"]["storageSize"] == "10Gi"
    # the StatefulSet (whose claim templates are immutable) keeps the size it was made with
    assert resources.claim_size(kube.get("StatefulSet", "fixed-disk-broker")) == "10Gi"
    # back to the volumes' size: no longer refused
    kube.patch_spec("EventBroker", "fixed-disk", {"storage": {"size": "10Gi", "class": "fixed"}})
    eventually(lambda: cond(kube.get("EventBroker", "fixed-disk"), "StorageExpansionRefused").get("reason")
               == "SizeUnchanged", "StorageExpansionRefused=False", kube=kube)


def test_storage_growth_expands_each_pvc_when_the_class_allows(kube: KubeEmulatorProcess):
    storage_class(kube, "elastic", True)
    kube.create({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": "elastic-disk"},
                 "spec": {"image": "strata-broker:0.1", "storage": {"size": "10Gi", "class": "elastic"}}})
    eventually(lambda: kube.get("StatefulSet", "elastic-disk-broker"), "StatefulSet", kube=kube)
    # the PVC the StatefulSet controller would have made (the emulator runs no controllers)
    kube.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                 "metadata": {"name": "data-elastic-disk-broker-0"},
                 "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "elastic",
                          "resources": {"requests": {"storage": "10Gi"}}}})
    kube.patch_spec("EventBroker", "elastic-disk", {"storage": {"size": "20Gi", "class": "elastic"}})
    pvc = eventually(lambda: (p := kube.get("PersistentVolumeClaim", "data-elastic-disk-broker-0"))
                     and p["spec"]["resources"]["requests"]["storage"] == "20Gi" and p, "the PVC expanded", kube=kube)
    assert pvc["spec"]["storageClassName"] == "elastic"
    eb = eventually(lambda: (b := kube.get("EventBroker", "elastic-disk"))
                    and cond(b, "StorageExpansionRefused").get("reason") == "VolumesExpanded" and b,
                    "VolumesExpanded", kube=kube)
    assert cond(eb, "StorageExpansionRefused")["status"] == "False"
    assert eb["status"]["storageSize"] == "20Gi"
    assert resources.claim_size(kube.get("StatefulSet", "elastic-disk-broker")) == "10Gi"
