"""The operator's scenarios against a real cluster: runs whenever KUBECONFIG is set (and kubectl is on
PATH), skipped otherwise. The operator runs locally (`strata operator`) against that cluster; the
broker is a local process too, referenced by an external EventBroker, so no image is needed.
Unlike the emulator, a real API server also enforces the CRDs' schemas and CEL rules.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from brokerproc import free_port
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="KUBECONFIG is not set: no real cluster to run on"),
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH"),
]


def kubectl(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", *args], input=input, text=True, capture_output=True, check=check, timeout=60)


def wait_for(check, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def condition(kind: str, name: str, ns: str, type_: str) -> dict:
    out = kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    if out.returncode:
        return {}
    return next((c for c in json.loads(out.stdout).get("status", {}).get("conditions", []) if c["type"] == type_), {})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    ns = f"strata-e2e-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    log = tmp_path_factory.mktemp("e2e") / "operator.log"
    env = {**os.environ, "STRATA_OPERATOR_RECONCILE_INTERVAL": "3", "STRATA_OPERATOR_RETRY_DELAY": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "strata_operator.cli", "operator", "-n", ns, "--liveness",
                             f"http://127.0.0.1:{free_port()}/healthz"], env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)
    try:
        yield ns
    finally:
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
        proc.terminate()
        proc.wait(30)


def apply(doc: dict) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(doc))


def test_topic_and_writer_conflict_on_a_real_cluster(cluster, broker_factory):
    ns = cluster
    broker = broker_factory({"auto.create.topics.enable": "false"})
    apply({"apiVersion": "strata.dev/v1alpha1", "kind": "EventBroker", "metadata": {"name": "b", "namespace": ns},
           "spec": {"external": {"bootstrapServers": broker.bootstrap}}})
    topic = {"apiVersion": "strata.dev/v1alpha1", "kind": "Topic", "metadata": {"name": "orders", "namespace": ns},
             "spec": {"brokerRef": {"name": "b"}, "team": "orders", "partitions": 2, "deletionPolicy": "Delete"}}
    apply(topic)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    wait_for(lambda: "orders" in admin.list_topics(timeout=5).topics, "topic created")
    topic["spec"]["partitions"] = 1
    rejected = kubectl("apply", "-f", "-", input=json.dumps(topic), check=False)
    assert rejected.returncode != 0 and "never decreased" in rejected.stderr
    for name in ("writer-a", "writer-b"):
        apply({"apiVersion": "strata.dev/v1alpha1", "kind": "Microservice", "metadata": {"name": name, "namespace": ns},
               "spec": {"brokerRef": {"name": "b"}, "team": "orders", "image": "busybox", "replicas": 0,
                        "produces": ["orders"]}})
        time.sleep(1.1)  # creationTimestamp has one-second resolution
    wait_for(lambda: condition("microservice", "writer-b", ns, "WriterConflict").get("status") == "True",
             "WriterConflict")
    kubectl("delete", "topic", "orders", "-n", ns)
    wait_for(lambda: "orders" not in admin.list_topics(timeout=5).topics, "topic deleted")
