"""A real Kubernetes API server for the operator's e2e tests: etcd + kube-apiserver as local processes.

The binaries are built from Go modules by tests/support/kube-apiserver/build.sh (`make kube-apiserver`) into
~/.cache/strata/kube-<version>/bin, outside the clone. `binaries()` finds them (or STRATA_KUBE_BIN)
and raises KubeUnavailable naming what is missing or which build command failed.

`KubeAPIServer(directory).start()` runs, on loopback only and on free ports:
  - etcd with a data dir under `directory` (no fsync: a throwaway store);
  - kube-apiserver with TLS on its secure port (a throwaway CA and a serving certificate for
    127.0.0.1), a static token for an admin identity (group system:masters), RBAC authorization,
    and a service-account signing key and issuer, so the TokenRequest API (`kubectl create token`)
    issues tokens for ServiceAccounts.
It waits for /readyz and writes `directory/kubeconfig` (the admin). Nothing else runs: no kubelet
(Pods are stored, never run), no controller-manager (no garbage collector, no namespace deletion,
no Deployment/StatefulSet controllers, no ServiceAccount token Secrets), no scheduler.

    python tests/support/kubeapi.py DIR     # start one, print the kubeconfig path, run until Ctrl-C
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from brokerproc import free_port
from secutil import make_pki

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "tests" / "support" / "kube-apiserver" / "build.sh"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


class KubeUnavailable(RuntimeError):
    """The binaries are not there, or the server did not come up; the message says what failed."""


def binaries() -> Path:
    """The directory holding kube-apiserver and etcd: STRATA_KUBE_BIN, else the build cache."""
    override = os.environ.get("STRATA_KUBE_BIN")
    if override:
        bin_dir = Path(override)
        missing = [b for b in ("kube-apiserver", "etcd") if not os.access(bin_dir / b, os.X_OK)]
        if missing:
            raise KubeUnavailable(f"STRATA_KUBE_BIN={override} lacks {', '.join(missing)}")
        return bin_dir
    proc = subprocess.run(["bash", str(BUILD), "--check"], capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise KubeUnavailable(proc.stderr.strip() or f"{BUILD} --check failed")
    return Path(proc.stdout.strip().splitlines()[-1])


def _sa_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def kubeconfig(server: str, ca_pem: bytes, user: str, token: str, namespace: str = "default") -> dict[str, Any]:
    """A one-context kubeconfig with a bearer token."""
    return {"apiVersion": "v1", "kind": "Config", "current-context": user,
            "clusters": [{"name": "strata-e2e", "cluster": {
                "server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "strata-e2e", "user": user,
                                                     "namespace": namespace}}]}


class KubeAPIServer:
    """etcd + kube-apiserver under `directory`; see the module docstring."""

    def __init__(self, directory: Path, bin_dir: Path | None = None) -> None:
        self.directory = directory
        self.bin_dir = bin_dir or binaries()
        self.etcd: subprocess.Popen[bytes] | None = None
        self.apiserver: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.admin_token = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
        self.kubeconfig = directory / "kubeconfig"
        self.ca_pem = b""

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _log(self, name: str) -> Any:
        return open(self.directory / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child process

    def start(self, timeout: float = 180.0) -> KubeAPIServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        pki = make_pki(self.directory / "pki", client_cn="unused")
        self.ca_pem = pki.ca.read_bytes()
        sa_key = self.directory / "pki" / "sa.key"
        _sa_key(sa_key)
        tokens = self.directory / "pki" / "tokens.csv"
        tokens.write_text(f'{self.admin_token},admin,admin-uid,"system:masters"\n')
        client, peer = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{client}"
        self.etcd = subprocess.Popen(
            [str(self.bin_dir / "etcd"), "--name", "e2e", "--data-dir", str(self.directory / "etcd"),
             "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"e2e=http://127.0.0.1:{peer}", "--unsafe-no-fsync", "--log-level", "warn"],
            stdout=self._log("etcd"), stderr=subprocess.STDOUT)
        self._wait(lambda: self._http_ok(f"{etcd_url}/health"), timeout, "etcd /health", self.etcd, "etcd")
        self.port = free_port()
        self.apiserver = subprocess.Popen(
            [str(self.bin_dir / "kube-apiserver"), "--etcd-servers", etcd_url,
             "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", str(self.port),
             "--cert-dir", str(self.directory / "pki"),
             "--tls-cert-file", str(pki.server_cert), "--tls-private-key-file", str(pki.server_key),
             "--client-ca-file", str(pki.ca), "--token-auth-file", str(tokens),
             "--authorization-mode", "RBAC",
             "--service-account-issuer", SA_ISSUER, "--service-account-key-file", str(sa_key),
             "--service-account-signing-key-file", str(sa_key),
             "--service-cluster-ip-range", "10.96.0.0/16",
             # No controller-manager keeps the `kubernetes` Service's endpoints, and loopback is no
             # valid endpoint address anyway.
             "--endpoint-reconciler-type", "none",
             "--profiling=false", "--v", "1"],
            stdout=self._log("kube-apiserver"), stderr=subprocess.STDOUT)
        self._wait(self._ready, timeout, "kube-apiserver /readyz", self.apiserver, "kube-apiserver")
        self.kubeconfig.write_text(json.dumps(kubeconfig(self.server, self.ca_pem, "admin", self.admin_token)))
        return self

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem.decode())

    def _http_ok(self, url: str, token: str | None = None) -> bool:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=5,
                                        context=self._ssl() if url.startswith("https") else None) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    def _ready(self) -> bool:
        return self._http_ok(f"{self.server}/readyz", self.admin_token)

    def _wait(self, check: Any, timeout: float, what: str, proc: subprocess.Popen[bytes], name: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.stop()
                raise KubeUnavailable(f"{name} exited with {proc.returncode} before {what}:\n{self.log_tail(name)}")
            if check():
                return
            time.sleep(0.5)
        self.stop()
        raise KubeUnavailable(f"no {what} within {timeout:.0f}s:\n{self.log_tail(name)}")

    def log_tail(self, name: str = "kube-apiserver", lines: int = 30) -> str:
        path = self.directory / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        for proc in (self.apiserver, self.etcd):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)

    def __enter__(self) -> KubeAPIServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def service_account_kubeconfig(admin_kubeconfig: Path, kubectl: str, namespace: str, name: str, path: Path,
                               hours: int = 6) -> Path:
    """A kubeconfig that acts as ServiceAccount namespace/name: a token from the TokenRequest API
    (`kubectl create token`), with the admin kubeconfig's cluster (server and CA)."""
    env = {**os.environ, "KUBECONFIG": str(admin_kubeconfig)}
    token = subprocess.run([kubectl, "create", "token", name, "-n", namespace, f"--duration={hours}h"], env=env,
                           capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    view = json.loads(subprocess.run([kubectl, "config", "view", "--raw", "--minify", "-o", "json"], env=env,
                                     capture_output=True, text=True, check=True, timeout=60).stdout)
    cluster = view["clusters"][0]["cluster"]
    config = {"apiVersion": "v1", "kind": "Config", "current-context": name,
              "clusters": [{"name": "cluster", "cluster": cluster}],
              "users": [{"name": name, "user": {"token": token}}],
              "contexts": [{"name": name, "context": {"cluster": "cluster", "user": name, "namespace": namespace}}]}
    path.write_text(json.dumps(config))
    return path


def _main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else Path(f"/tmp/strata-kubeapi-{datetime.datetime.now():%H%M%S}")
    try:
        server = KubeAPIServer(directory).start()
    except KubeUnavailable as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={server.kubeconfig}   # {server.server}; Ctrl-C stops it", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops the children too
    try:
        while server.apiserver and server.apiserver.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
