"""The chart against a real cluster: `helm install`, then every ci/ values file's objects through
`kubectl apply --dry-run=server` (the API server's own validation, CEL rules included). Runs only when
KUBECONFIG names a reachable cluster; skipped with that reason otherwise.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import chart_tools
import pytest
from test_chart import ensure_tools

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "strata"
CI_FILES = sorted((CHART / "ci").glob("*.yaml"))

pytestmark = pytest.mark.skipif(not os.environ.get("KUBECONFIG"),
                                reason="KUBECONFIG is not set: no real cluster to install the chart into")


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    try:
        found = ensure_tools()
    except chart_tools.ToolsUnavailable as exc:
        pytest.skip(f"helm/kubectl are not on PATH and could not be fetched: {exc}")
    probe = subprocess.run([found["kubectl"], "version", "--request-timeout=10s"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"KUBECONFIG={os.environ['KUBECONFIG']} names no reachable cluster: {probe.stderr.strip()[:200]}")
    return found


def run(*args: str, input: str | None = None) -> str:
    proc = subprocess.run(list(args), input=input, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args[:4])}...: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def release(tools):
    ns = f"strata-chart-{uuid.uuid4().hex[:6]}"
    name = f"s{uuid.uuid4().hex[:6]}"
    run(tools["kubectl"], "create", "namespace", ns)
    try:
        run(tools["helm"], "install", name, str(CHART), "--namespace", ns)
        yield name, ns
    finally:
        subprocess.run([tools["helm"], "uninstall", name, "--namespace", ns], capture_output=True, timeout=300)
        subprocess.run([tools["kubectl"], "delete", "namespace", ns, "--wait=false"], capture_output=True,
                       timeout=60)


def test_install_creates_the_operator_and_its_rbac(tools, release):
    name, ns = release
    out = run(tools["kubectl"], "get", "deployment,serviceaccount,configmap", "-n", ns, "-o", "name",
              "-l", f"app.kubernetes.io/instance={name}")
    assert f"deployment.apps/{name}-strata-operator" in out
    assert "eventbrokers.strata.dev" in run(tools["kubectl"], "get", "crd", "-o", "name")
    can = subprocess.run([tools["kubectl"], "auth", "can-i", "create", "statefulsets.apps", "-n", ns,
                          f"--as=system:serviceaccount:{ns}:{name}-strata-operator"], capture_output=True, text=True)
    assert can.stdout.strip() == "yes"
    cannot = subprocess.run([tools["kubectl"], "auth", "can-i", "delete", "secrets", "-n", ns,
                             f"--as=system:serviceaccount:{ns}:{name}-strata-operator"], capture_output=True,
                            text=True)
    assert cannot.stdout.strip() == "no"


@pytest.mark.parametrize("values", CI_FILES, ids=lambda p: p.stem)
def test_every_ci_values_file_passes_server_side_dry_run(tools, release, values):
    _, ns = release
    manifests = run(tools["helm"], "template", f"dry{uuid.uuid4().hex[:4]}", str(CHART), "--namespace", ns,
                    "-f", str(values))
    run(tools["kubectl"], "apply", "--dry-run=server", "--namespace", ns, "-f", "-", input=manifests)
