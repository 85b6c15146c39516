"""Run a real `strata-broker` process for tests: start, stop (SIGTERM), kill -9, restart."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrokerProcess:
    def __init__(self, data_dir: Path, port: int | None = None, settings: dict[str, str] | None = None,
                 log_path: Path | None = None, advertise: str | None = None,
                 env: dict[str, str] | None = None, listeners: dict[str, int | None] | None = None,
                 broker_id: int | None = None, open_files: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.open_files = open_files  # the process's open-files limit (soft and hard), as `ulimit -n`
        self.broker_id = broker_id
        # Listeners beside the PLAINTEXT one on `port`: name (SASL_PLAINTEXT, SSL, ...) -> port.
        self.listeners = {name: p or free_port() for name, p in (listeners or {}).items()}
        self.advertise = advertise
        self.env = env
        self.port = port or free_port()
        self.settings = dict(settings or {})
        self.log_path = log_path or self.data_dir.parent / f"{self.data_dir.name}.broker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def address(self, listener: str) -> str:
        """bootstrap.servers for one of the extra listeners."""
        return f"127.0.0.1:{self.listeners[listener]}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> BrokerProcess:
        cmd = [sys.executable, "-m", "strata_broker.cli", "--data-dir", str(self.data_dir),
               "--listen", self.bootstrap]
        for name, port in self.listeners.items():
            cmd += ["--listen", f"{name}://127.0.0.1:{port}"]
        if self.advertise:
            cmd += ["--advertise", self.advertise]
        if self.broker_id is not None:
            cmd += ["--broker-id", str(self.broker_id)]
        for key, value in self.settings.items():
            cmd += ["--set", f"{key}={value}"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        env = {**os.environ, **self.env} if self.env else None
        limit = self.open_files

        def set_limit() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=set_limit if limit is not None else None)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"broker did not listen on {self.bootstrap}:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait: a clean shutdown."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        """SIGKILL: the crash that recovery must survive."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> BrokerProcess:
        self.stop()
        return self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
