"""The schema registry of an EventBroker with TLS and authentication (issue 23): REST over HTTPS (a
cert-manager issuer or a Secret, as the listeners), basic auth and subject ACLs when the brokers' authorizer
is on, and the registry's own SCRAM login on a first listener that authenticates.

Builders are checked against the Kubernetes schemas (kubernetes-validate); the handler runs as `strata
operator` against kmock; a real broker and a real registry are then started with exactly the configuration
the operator wrote (the ConfigMap's properties, the Deployment's command and environment, the Secrets as
files, as the kubelet mounts them), and a Confluent client registers through it over HTTPS."""

from __future__ import annotations

import base64
import os
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
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from crd_admission import admission_errors
from kmockserver import KubeEmulatorProcess
from registryproc import RegistryProcess
from strata_operator import registry_objects, resources
from test_operator_reconcile import API, cond
from test_operator_reconcile import eventually as _eventually
from test_operator_tls import SASL_TLS, local_listeners, materialise, secret_data
from waiting import wait_until

K8S_VERSION = "1.35"
OPERATOR_USER = "strata-operator"
OPERATOR_PASSWORD = "operator-" + uuid.uuid4().hex
WAIT = 60.0


def eventually(check: Any, what: str, kube: Any = None) -> Any:
    return _eventually(check, what, timeout=WAIT, kube=kube)


def broker_cr(name: str = "events", namespace: str = "strata", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "EventBroker", "metadata": {"name": name, "namespace": namespace, "uid": "u-1"},
            "spec": {"image": "strata-broker:0.1", **spec}}


def command_options(command: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i, arg in enumerate(command):
        if arg.startswith("--") and i + 1 < len(command) and not command[i + 1].startswith("--"):
            out.setdefault(arg, []).append(command[i + 1])
        elif arg.startswith("--"):
            out.setdefault(arg, []).append("")
    return out


# -- builders --------------------------------------------------------------------------------


def test_https_from_an_issuer_login_and_authentication_with_the_authorizer():
    eb = broker_cr(listeners=[SASL_TLS], tls={"issuerRef": {"name": "brokers-ca"}},
                   authorization={"type": "simple", "superUsers": ["User:admin"]},
                   schemaRegistry={"enabled": True, "replicas": 2,
                                   "tls": {"issuerRef": {"name": "registry-ca", "kind": "ClusterIssuer"}}})
    assert admission_errors(eb) == []
    objs = resources.eventbroker_objects(eb, OPERATOR_USER)
    certificate, service, deployment = objs[-3:]
    assert certificate["kind"] == "Certificate" and certificate["metadata"]["name"] == "events-schema-registry-tls"
    assert certificate["spec"]["issuerRef"] == {"name": "registry-ca", "kind": "ClusterIssuer",
                                                "group": "cert-manager.io"}
    assert "events-schema-registry.strata.svc" in certificate["spec"]["dnsNames"]
    for obj in (service, deployment, registry_objects.password_secret(eb, "pw")):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    options = command_options(container["command"])
    assert options["--kafka"] == ["security.protocol=SASL_SSL", "sasl.mechanism=SCRAM-SHA-512",
                                  f"sasl.username={registry_objects.REGISTRY_USER}",
                                  f"ssl.ca.location={registry_objects.KAFKA_CA_DIR}/ca.crt"]
    assert options["--tls-cert"] == [f"{registry_objects.TLS_DIR}/tls.crt"]
    assert options["--advertised-url"] == ["https://$(POD_IP):8081"]
    assert options["--auth-bootstrap"] == ["events-bootstrap.strata.svc:9093"]
    assert "--authorize" in options
    assert set(options["--super-users"][0].split(";")) == {
        f"User:{OPERATOR_USER}", "User:admin", f"User:{registry_objects.REGISTRY_USER}"}
    assert "password" not in " ".join(container["command"]).lower()
    (password_env,) = [e for e in container["env"] if e["name"] == registry_objects.PASSWORD_ENV]
    assert password_env["valueFrom"]["secretKeyRef"] == {"name": "events-schema-registry", "key": "password"}
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    volumes = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    mounts = {m["mountPath"]: volumes.get(m["name"]) for m in container["volumeMounts"]}
    assert mounts[registry_objects.TLS_DIR] == "events-schema-registry-tls"
    assert mounts[registry_objects.KAFKA_CA_DIR] == "events-broker-tls"
    props = resources.broker_properties(eb, OPERATOR_USER)
    assert props["schema.registry.principal"] == f"User:{registry_objects.REGISTRY_USER}"
    assert f"User:{registry_objects.REGISTRY_USER}" in props["super.users"].split(";")
    assert registry_objects.registry_url(eb) == "https://events-schema-registry.strata.svc:8081"
    assert registry_objects.credentials(eb, "pw") == {registry_objects.REGISTRY_USER: "pw"}


def test_a_plain_first_listener_keeps_anonymous_http_without_authentication():
    eb = broker_cr(schemaRegistry={"enabled": True, "tls": {"secretName": "my-registry-cert"}})
    assert admission_errors(eb) == []
    service, deployment = resources.eventbroker_objects(eb)[-2:]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    options = command_options(container["command"])
    assert "--kafka" not in options and "--auth-bootstrap" not in options and "--authorize" not in options
    assert options["--tls-key"] == [f"{registry_objects.TLS_DIR}/tls.key"]  # HTTPS from the given Secret
    assert [e["name"] for e in container["env"]] == ["POD_IP"]
    assert resources.broker_properties(eb)["schema.registry.principal"] == "User:ANONYMOUS"
    assert registry_objects.credentials(eb, "pw") == {}
    assert "Certificate" not in [o["kind"] for o in resources.eventbroker_objects(eb)]


def test_admission_of_registry_tls_and_listeners():
    both = broker_cr(schemaRegistry={"enabled": True, "tls": {"secretName": "a", "issuerRef": {"name": "b"}}})
    assert any("exactly one of issuerRef and secretName" in e for e in admission_errors(both))
    mtls = broker_cr(listeners=[{"name": "mtls", "port": 9094, "tls": True, "authentication": "tls"}],
                     tls={"issuerRef": {"name": "ca"}}, schemaRegistry={"enabled": True})
    assert any("without mutual TLS" in e for e in admission_errors(mtls))
    sasl = broker_cr(listeners=[SASL_TLS], tls={"secretName": "t"}, schemaRegistry={"enabled": True})
    assert admission_errors(sasl) == []


# -- the operator against kmock, then the rendered configuration for real ----------------------------


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEmulatorProcess]:
    workdir = tmp_path_factory.mktemp("kmock-registry")
    emulator = KubeEmulatorProcess(workdir).start()
    emulator.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    log = workdir / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(emulator.kubeconfig()),
           "STRATA_OPERATOR_RECONCILE_INTERVAL": "2", "STRATA_OPERATOR_RETRY_DELAY": "1",
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


def tls_secret(name: str, pki: secutil.Pki) -> dict[str, Any]:
    data = {"tls.crt": pki.server_cert.read_text(), "tls.key": pki.server_key.read_text(), "ca.crt": pki.ca.read_text()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "kubernetes.io/tls",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def test_the_operators_registry_serves_https_with_authentication_and_goes_when_disabled(
        kube: KubeEmulatorProcess, tmp_path: Path):
    brokers_pki, registry_pki = secutil.make_pki(tmp_path / "brokers"), secutil.make_pki(tmp_path / "registry")
    kube.create(tls_secret("events-tls", brokers_pki))
    kube.create(tls_secret("registry-tls", registry_pki))
    managed = broker_cr(namespace="default", listeners=[SASL_TLS], tls={"secretName": "events-tls"},
                        authorization={"type": "simple"},
                        schemaRegistry={"enabled": True, "tls": {"secretName": "registry-tls"}})
    managed["metadata"].pop("uid")
    kube.create(managed)
    password = eventually(lambda: (s := kube.get("Secret", "events-schema-registry")) and secret_data(s)["password"],
                          "the registry's password Secret", kube=kube)
    credentials = eventually(lambda: (s := kube.get("Secret", "events-credentials"))
                             and registry_objects.REGISTRY_USER in secret_data(s)[resources.CREDENTIALS_KEY] and s,
                             "the brokers' credentials with the registry's user", kube=kube)
    deployment = eventually(lambda: kube.get("Deployment", "events-schema-registry"), "the Deployment", kube=kube)
    assert kube.get("Service", "events-schema-registry") is not None
    eventually(lambda: kube.get("EventBroker", "events")["status"]["schemaRegistryUrl"]
               == "https://events-schema-registry.default.svc:8081", "status.schemaRegistryUrl", kube=kube)

    # A real broker with the ConfigMap's properties, the Secrets as the kubelet mounts them.
    configmap = kube.get("ConfigMap", "events-config")
    props = dict(line.split("=", 1) for line in configmap["data"]["broker.properties"].splitlines() if line)
    brokers_tls = secret_data(kube.get("Secret", "events-tls"))
    users = secret_data(credentials)[resources.CREDENTIALS_KEY]
    props = materialise(props, tmp_path / "broker-mounts", {
        **{f"{resources.TLS_DIR}/{k}": brokers_tls[k] for k in ("tls.crt", "tls.key", "ca.crt")},
        f"{resources.CREDENTIALS_DIR}/{resources.CREDENTIALS_KEY}": users})
    port = free_port()
    broker = BrokerProcess(tmp_path / "broker", settings=local_listeners(props, {"SASL-TLS": port})).start()
    registry = None
    try:
        # The registry with the Deployment's command and environment (the Service name -> the local broker).
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        registry_tls = secret_data(kube.get("Secret", "registry-tls"))
        files = {f"{registry_objects.TLS_DIR}/{k}": registry_tls[k] for k in ("tls.crt", "tls.key", "ca.crt")}
        files[f"{registry_objects.KAFKA_CA_DIR}/ca.crt"] = brokers_tls["ca.crt"]
        local = materialise({path: path for path in files}, tmp_path / "registry-mounts", files)
        rest_port = free_port()
        args = []
        for arg in container["command"][1:]:  # mounted paths (also inside KEY=VALUE) -> the files
            for path, file in local.items():
                arg = arg.replace(path, file)
            args.append(arg.replace("events-bootstrap.default.svc:9093", f"127.0.0.1:{port}")
                        .replace("$(POD_IP)", "127.0.0.1").replace("0.0.0.0:8081", f"127.0.0.1:{rest_port}")
                        .replace(":8081", f":{rest_port}"))
        bootstrap = args[args.index("--bootstrap") + 1]
        args = args[:args.index("--bootstrap")] + args[args.index("--bootstrap") + 2:]
        args = args[:args.index("--listen")] + args[args.index("--listen") + 2:]
        registry = RegistryProcess(bootstrap, tmp_path / "registry.log", port=rest_port, args=args,
                                   env={registry_objects.PASSWORD_ENV: password}, tls_ca=registry_pki.ca,
                                   login=(OPERATOR_USER, OPERATOR_PASSWORD)).start()
        wait_until(registry.leads, 60, "the registry to lead")
        # The operator's login (a super user) registers over HTTPS; no credentials: 401.
        client = SchemaRegistryClient({"url": registry.url, "ssl.ca.location": str(registry_pki.ca),
                                       "basic.auth.user.info": f"{OPERATOR_USER}:{OPERATOR_PASSWORD}"})
        schema_id = client.register_schema("payments-value", Schema('"string"', "AVRO"))
        assert registry.get(f"/schemas/ids/{schema_id}")["schema"] == '"string"'
        anonymous = RegistryProcess(bootstrap, tmp_path / "x.log", port=rest_port, tls_ca=registry_pki.ca)
        assert anonymous.request("GET", "/subjects")[0] == 401
    finally:
        if registry is not None:
            registry.kill()
        broker.kill()

    # Turned off: the Deployment and Service go, the registry's user leaves the brokers' credentials file,
    # and the status says so.
    kube.patch_spec("EventBroker", "events", {"schemaRegistry": {"enabled": False}})
    eventually(lambda: kube.get("Deployment", "events-schema-registry") is None
               and kube.get("Service", "events-schema-registry") is None, "the registry's objects deleted", kube=kube)
    eventually(lambda: registry_objects.REGISTRY_USER not in secret_data(kube.get("Secret", "events-credentials"))[
        resources.CREDENTIALS_KEY], "the registry's user removed from the credentials file", kube=kube)
    eb = eventually(lambda: (b := kube.get("EventBroker", "events"))
                    and "schemaRegistryUrl" not in (b.get("status") or {}) and b, "status without the URL", kube=kube)
    assert cond(eb, "Ready")["status"] in ("True", "False")
    assert kube.get("Secret", "registry-tls") is not None  # the user's own Secret is left alone
