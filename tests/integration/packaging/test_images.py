"""The container images' Dockerfiles (no Docker engine needed).

The build stage of broker-image/Dockerfile and operator/Dockerfile is replayed here: the files its COPY
lines bring in (checked against .dockerignore) are copied into a scratch build context, and the image's
own `python -m venv ... && pip install ...` step runs into a fresh virtualenv, one per image. The
installed console scripts must then work (`strata-broker --help` in the broker image, `strata --help`
and `strata operator --help` in the operator image), and the broker image must hold nothing the broker
does not run (no kopf, no moto).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILES = {"broker": ROOT / "broker-image" / "Dockerfile", "operator": ROOT / "operator" / "Dockerfile"}


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def install_step(path: Path) -> str:
    (run,) = [arg for word, arg in stages(path)[0] if word == "RUN" and "pip install" in arg]
    return run


def dockerignore_excludes(rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a directory match covers its files."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*", "\0").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = regex.replace("\0/", "(.*/)?").replace("\0", ".*")
        parts = rel.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_conventions(image):
    path = DOCKERFILES[image]
    ins = instructions(path)
    (arg,) = [a for w, a in ins if w == "ARG" and a.startswith("PYTHON_IMAGE=")]
    base = arg.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), \
        f"{image}: base image must be a slim image pinned to a patch release (or digest), got {base}"
    final = stages(path)[-1]
    assert final[0] == ("FROM", "${PYTHON_IMAGE}")
    (user,) = [a for w, a in final if w == "USER"]
    assert user.split(":")[0] not in {"0", "root"} and user.split(":")[0].isdigit(), user
    assert user == "10001:10001", "the operator's and the chart's pods run as uid/gid 10001"
    assert any(w == "HEALTHCHECK" for w, _ in final)
    assert any(w == "ENTRYPOINT" for w, _ in final)
    # Nothing is installed or fetched in the final stage: the virtualenv is copied from the build stage.
    assert not [a for w, a in final if w == "RUN" and re.search(r"pip|curl|wget|apt-get", a)]
    assert ("COPY", "--from=build /opt/strata /opt/strata") in final


def test_both_images_copy_the_same_sources():
    copies = {image: [a for w, a in stages(path)[0] if w == "COPY"] for image, path in DOCKERFILES.items()}
    assert len({tuple(c) for c in copies.values()}) == 1, copies


_VENVS: dict[str, Path] = {}


def installed(image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's build stage replayed: its COPY lines into a scratch context, then its install step."""
    if image not in _VENVS:
        _VENVS[image] = _install(DOCKERFILES[image], tmp_path_factory.mktemp(image))
    return _VENVS[image]


def _install(path: Path, work: Path) -> Path:
    workdir = "/"
    for word, arg in stages(path)[0]:
        if word == "WORKDIR":
            workdir = arg
        elif word == "COPY":
            *sources, dest = shlex.split(arg)
            for src in sources:
                files = [p for p in ((ROOT / src).rglob("*") if (ROOT / src).is_dir() else [ROOT / src])
                         if p.is_file() and "__pycache__" not in p.parts]
                assert files, f"COPY {src}: nothing to copy"
                for f in files:
                    rel = f.relative_to(ROOT).as_posix()
                    assert not dockerignore_excludes(rel), f".dockerignore excludes {rel}, which the image copies"
                    target_root = work / (dest if dest.startswith("/") else f"{workdir}/{dest}").lstrip("/")
                    inner = f.relative_to(ROOT / src) if (ROOT / src).is_dir() else Path(f.name)
                    target = target_root / inner if (ROOT / src).is_dir() or dest.endswith("/") else target_root
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, target)
    step = install_step(path)
    venv_cmd, pip_cmd = (shlex.split(s) for s in step.split("&&"))
    assert venv_cmd[:3] == ["python", "-m", "venv"] and pip_cmd[1:2] == ["install"], step
    venv = work / venv_cmd[3].lstrip("/")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # The image's pip arguments, with paths moved into the scratch tree. pip's own cache is allowed here
    # (the image passes --no-cache-dir to keep the layer small; that does not change what is installed).
    args = [str(work / a.lstrip("/")) if a.startswith("/") else a for a in pip_cmd[2:] if a != "--no-cache-dir"]
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return venv


@pytest.mark.parametrize(("image", "command"), [("broker", ["strata-broker", "--help"]),
                                                ("broker", ["strata-registry", "--help"]),
                                                ("operator", ["strata", "--help"]),
                                                ("operator", ["strata", "operator", "--help"])],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_installed_console_scripts_run(image, command, tmp_path_factory):
    venv = installed(image, tmp_path_factory)
    proc = subprocess.run([str(venv / "bin" / command[0]), *command[1:]], capture_output=True, text=True,
                          timeout=60, cwd=venv)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Usage:" in proc.stdout


def python_in(venv: Path, code: str) -> str:
    """What `code` prints, run by the image's interpreter outside the source tree."""
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=venv)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_installed_package_is_not_the_source_tree_and_carries_its_data(tmp_path_factory):
    out = python_in(installed("operator", tmp_path_factory),
                    "import strata_broker, strata_operator; from strata_operator.billing import prices; "
                    "assert prices.default_text().startswith('#'); "
                    "print(strata_broker.__file__, strata_operator.__file__)")
    assert str(ROOT) not in out and "site-packages" in out


def test_the_broker_image_holds_only_what_the_broker_and_registry_run(tmp_path_factory):
    out = python_in(installed("broker", tmp_path_factory),
                    "import importlib.util as u, strata_broker.broker, strata_registry.app; print(sorted(m for m in "
                    "('kopf', 'kubernetes_asyncio', 'moto', 'boto3', 'rich', 'yaml') if u.find_spec(m)))")
    assert out == "[]", f"the broker image installs what neither the broker nor the registry imports: {out}"
