"""Run a real `strata-registry` process for tests: start (waits until it answers), stop, kill -9."""

from __future__ import annotations

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


class RegistryProcess:
    def __init__(self, bootstrap: str, log_path: Path, port: int | None = None,
                 args: list[str] | None = None, env: dict[str, str] | None = None,
                 tls_ca: Path | None = None, login: tuple[str, str] | None = None) -> None:
        """`tls_ca`: the registry serves HTTPS (args carry --tls-cert/--tls-key); requests trust this CA.
        `login`: (user, password) sent as HTTP basic auth by `request`."""
        self.bootstrap = bootstrap
        self.port = port or free_port()
        self.log_path = log_path
        self.args = list(args or [])
        self.env = dict(env or {})
        self.tls_ca = tls_ca
        self.login = login
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_ca else 'http'}://127.0.0.1:{self.port}"

    def _context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.tls_ca)) if self.tls_ca else None

    def start(self, timeout: float = 60.0) -> RegistryProcess:
        cmd = [sys.executable, "-m", "strata_registry.cli", "--bootstrap", self.bootstrap,
               "--listen", f"127.0.0.1:{self.port}", *self.args]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"registry exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                # open even with authentication
                urllib.request.urlopen(self.url + "/", timeout=5, context=self._context()).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"registry did not answer on {self.url}:\n{self.log_tail()}")

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/vnd.schemaregistry.v1+json"}
        if self.login is not None:
            import base64

            headers["Authorization"] = "Basic " + base64.b64encode(":".join(self.login).encode()).decode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30, context=self._context()) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise AssertionError(f"GET {path}: {status} {body}")
        return body

    def leads(self) -> bool:
        try:
            return bool(self.get("/v1/strata/leader")["leader"])
        except (OSError, AssertionError):
            return False

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
