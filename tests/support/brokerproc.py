"""Server processes for tests and benchmarks: a `strata-broker` (start, stop with SIGTERM, kill -9,
restart), or any other server started from a command line (bench/: Apache Kafka, Tansu).

The broker's command line comes from `strata_cli.local.broker_argv`, the same as `strata local`'s;
a process counts as started once its port accepts a connection.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path

from strata_cli.local import broker_argv

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class ServerProcess:
    """A child process serving on 127.0.0.1:port, stdout and stderr appended to `log_path`.

    `env` is added to this process's environment. `open_files` sets the child's open-files limit
    (soft and hard, as `ulimit -n`). With `strict_stop` (the default) a stop() that times out kills
    the process and raises; without it, it kills and returns the exit code.
    """

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path, env: dict[str, str] | None = None,
                 open_files: int | None = None, strict_stop: bool = True) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = Path(log_path)
        self.env = env
        self.open_files = open_files
        self.strict_stop = strict_stop
        self.version = ""  # of the server software, where known (bench/ prints it)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        """The command line start() runs."""
        return self.argv

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Start the process and wait until its port accepts a connection."""
        argv = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        log.write(f"==== start {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        env = {**os.environ, **self.env} if self.env else None
        limit = self.open_files

        def set_limit() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                     preexec_fn=set_limit if limit is not None else None)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not listen on {self.bootstrap}:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait: a clean shutdown. On a timeout, SIGKILL (and raise when strict_stop)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            if self.strict_stop:
                raise
            return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the crash that recovery must survive."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> ServerProcess:
        self.stop()
        return self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class BrokerProcess(ServerProcess):
    """A real `strata-broker` on 127.0.0.1:port (PLAINTEXT, or the listener `protocol` names), with
    optional extra listeners.

    `settings` become `--set` options, read at each start (a test may change them before a restart);
    `listeners` maps a listener name (SASL_PLAINTEXT, SSL, ...) to its port (None: a free one).
    The log is `<data_dir>.broker.log` beside the data dir unless `log_path` is given.
    """

    def __init__(self, data_dir: Path, port: int | None = None, settings: dict[str, str] | None = None,
                 log_path: Path | None = None, advertise: str | None = None,
                 env: dict[str, str] | None = None, listeners: dict[str, int | None] | None = None,
                 broker_id: int | None = None, open_files: int | None = None, log_level: str | None = None,
                 name: str = "broker", strict_stop: bool = True, protocol: str = "PLAINTEXT") -> None:
        self.data_dir = Path(data_dir)
        self.protocol = protocol
        super().__init__(name, [], port or free_port(),
                         log_path or self.data_dir.parent / f"{self.data_dir.name}.broker.log", env=env,
                         open_files=open_files, strict_stop=strict_stop)
        self.broker_id = broker_id
        self.listeners = {name: p or free_port() for name, p in (listeners or {}).items()}
        self.advertise = advertise
        self.log_level = log_level
        self.settings = dict(settings or {})

    def address(self, listener: str) -> str:
        """bootstrap.servers for one of the extra listeners."""
        return f"{HOST}:{self.listeners[listener]}"

    def command(self) -> list[str]:
        extra: list[str] = []
        if self.advertise:
            extra += ["--advertise", self.advertise]
        if self.broker_id is not None:
            extra += ["--broker-id", str(self.broker_id)]
        if self.log_level:
            extra += ["--log-level", self.log_level]
        main = self.bootstrap if self.protocol == "PLAINTEXT" else f"{self.protocol}://{self.bootstrap}"
        listen = [main, *(f"{name}://{HOST}:{port}" for name, port in self.listeners.items())]
        return broker_argv(self.data_dir, listen, self.settings, extra)

    def start(self, timeout: float = 30.0) -> BrokerProcess:
        super().start(timeout)
        return self

    def restart(self) -> BrokerProcess:
        self.stop()
        return self.start()
