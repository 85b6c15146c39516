"""strata_operator.lazyclient: the Kubernetes client's generated classes imported on first use, in a
fresh interpreter (this one may have imported the client already)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from strata_operator import lazyclient
installed = lazyclient.install()
import kopf  # imports kubernetes_asyncio to offer its credentials
from strata_operator import kube
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException
models_before = sum(1 for m in sys.modules if m.startswith("kubernetes_asyncio.client.models."))
apis_before = sum(1 for m in sys.modules if m.startswith("kubernetes_asyncio.client.api."))
pod = client.V1Pod(metadata=client.V1ObjectMeta(name="p"))
print(json.dumps({"installed": installed, "models_before": models_before, "apis_before": apis_before,
                  "pod": pod.to_dict()["metadata"]["name"], "api": ApiClient.__name__,
                  "core": client.CoreV1Api.__name__,
                  "host": Configuration().host, "exc": ApiException.__name__, "version": client.__version__,
                  "same": kube.k8s_client is client}))
"""


def probe(env_value: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True,
                         env={"PATH": "/usr/bin:/bin", "STRATA_OPERATOR_LAZY_CLIENT": env_value})
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_classes_load_on_first_use_and_work() -> None:
    lazy = probe("1")
    assert lazy["installed"] is True and lazy["same"] is True
    assert int(str(lazy["models_before"])) < 10 and lazy["apis_before"] == 0  # (the client imports two itself)
    assert lazy["pod"] == "p" and lazy["core"] == "CoreV1Api" and lazy["api"] == "ApiClient"
    assert lazy["exc"] == "ApiException"
    eager = probe("0")  # the switch off: the package's own __init__, every class imported
    assert eager["installed"] is False and int(str(eager["models_before"])) > 500
    assert (eager["pod"], eager["host"], eager["version"]) == (lazy["pod"], lazy["host"], lazy["version"])
