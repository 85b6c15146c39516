"""`strata local`: the laptop stack. One broker plus an embedded S3 endpoint, both on loopback.

moto's S3 server runs as a subprocess and holds the bucket in memory, so the stack mirrors the
bucket to `<data-dir>/s3/<bucket>/` every few seconds and once more at shutdown, and loads the
mirror back into the fresh endpoint at start-up: stopping and starting `make run` keeps the cold
data as well as the hot data. (After a hard kill the mirror may miss the last few seconds of
uploads.)

The schema registry (`strata-registry`, Confluent's REST API) runs beside them on --registry-port
(8081), storing its schemas in the broker's `_schemas` topic, so they are tiered and mirrored too.

The children run in their own sessions, so Ctrl-C reaches only this process, which stops them in
order: the registry, the broker (it finishes its uploads), a last mirror pass, then the S3 endpoint. On
Linux the children also get SIGTERM if this process dies without cleaning up.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from strata_contract.s3 import S3Settings, sync_client

BUCKET = "strata-local"
REGION = "us-east-1"
# moto accepts any credentials; these only have to exist so that the broker's requests are signed.
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "strata-local", "AWS_SECRET_ACCESS_KEY": "strata-local",
                     "AWS_DEFAULT_REGION": REGION}
MIRROR_INTERVAL = 5.0


def local_settings(bucket: str, s3_endpoint: str, local_retention_bytes: int) -> dict[str, str]:
    """Small segments, a short upload interval and small local retention: offload shows within a minute."""
    return {
        "auto.create.topics.enable": "true",
        "num.partitions": "6",
        "segment.bytes": str(1 << 20),
        "tiered.upload.interval.ms": "10000",
        "local.retention.bytes": str(local_retention_bytes),
        "retention.ms": "-1",  # S3 keeps everything: replay from the beginning, always
        "log.retention.check.interval.ms": "5000",
        "tiered.s3.bucket": bucket,
        "tiered.s3.endpoint": s3_endpoint,
        "tiered.s3.region": REGION,
    }


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float, what: str,
                   stop: threading.Event | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop is not None and stop.is_set():
            raise click.Abort()  # Ctrl-C during start-up: the caller stops what is running
        if proc.poll() is not None:
            raise click.ClickException(f"{what} exited with status {proc.returncode} during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise click.ClickException(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def s3_client(endpoint: str) -> Any:
    """A client of the local S3 endpoint, with the dummy credentials moto takes."""
    return sync_client(S3Settings(endpoint, REGION, {
        "aws_access_key_id": DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}))


class BucketMirror:
    """Keeps `directory` equal to the bucket (one file per key) and can load it back."""

    def __init__(self, endpoint: str, bucket: str, directory: Path) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.directory = directory
        self.etags: dict[str, str] = {}
        self.lock = threading.Lock()
        self.warned = False

    def _path(self, key: str) -> Path | None:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            return None  # never produced by the broker's layout; not worth a file
        return self.directory.joinpath(*parts)

    def restore(self) -> int:
        if not self.directory.is_dir():
            return 0
        client = s3_client(self.endpoint)
        count = 0
        with self.lock:
            for path in sorted(self.directory.rglob("*")):
                if not path.is_file() or path.name.endswith(".mirror-tmp"):
                    continue
                key = path.relative_to(self.directory).as_posix()
                response = client.put_object(Bucket=self.bucket, Key=key, Body=path.read_bytes())
                self.etags[key] = response["ETag"]
                count += 1
        return count

    def sync(self) -> None:
        client = s3_client(self.endpoint)
        with self.lock:
            listed: dict[str, str] = {}
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
                for obj in page.get("Contents", []):
                    listed[obj["Key"]] = obj["ETag"]
            for key, etag in listed.items():
                if self.etags.get(key) == etag:
                    continue
                path = self._path(key)
                if path is None:
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".mirror-tmp")
                try:
                    tmp.write_bytes(client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
                except client.exceptions.NoSuchKey:
                    continue  # deleted since the listing
                os.replace(tmp, path)
                self.etags[key] = etag
            for key in [k for k in self.etags if k not in listed]:
                del self.etags[key]
                path = self._path(key)
                if path is None:
                    continue
                path.unlink(missing_ok=True)
                parent = path.parent
                while parent != self.directory and parent.is_dir() and not any(parent.iterdir()):
                    parent.rmdir()
                    parent = parent.parent

    def run(self, stop: threading.Event, interval: float = MIRROR_INTERVAL) -> None:
        while not stop.wait(interval):
            try:
                self.sync()
                self.warned = False
            except Exception as exc:  # keep mirroring; say so once per outage
                if not self.warned:
                    click.echo(f"strata local: mirroring the bucket to {self.directory} failed: {exc}", err=True)
                    self.warned = True


def _strata_command() -> str:
    found = shutil.which("strata")
    if found:
        return "strata"
    candidate = Path(sys.prefix) / "bin" / "strata"
    if candidate.exists():
        try:
            rel = os.path.relpath(candidate)
            return rel if not rel.startswith("..") else str(candidate)
        except ValueError:
            return str(candidate)
    return f"{sys.executable} -m strata_cli"


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


stop_process = _stop


# ---- pieces shared with `strata dev` (dev.py) -----------------------------------------


def parse_settings(settings: tuple[str, ...]) -> dict[str, str]:
    """--set KEY=VALUE options -> dict (click.BadParameter on a malformed one)."""
    extra: dict[str, str] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        extra[key.strip()] = value.strip()
    return extra


def check_ports_free(ports: dict[int, str]) -> None:
    """port -> what uses it (for the message); ClickException when one is taken or two are equal."""
    if len(set(ports)) != len(ports):
        raise click.UsageError("the ports must differ: " + ", ".join(f"{what}={p}" for p, what in ports.items()))
    for p, what in ports.items():
        if not port_free(p):
            raise click.ClickException(f"127.0.0.1:{p} ({what}) is in use; stop what listens there or pick "
                                       "another port")


def start_s3(root: Path, s3_port: int, bucket: str, stop: threading.Event | None = None
             ) -> subprocess.Popen[bytes]:
    """moto's S3 server on 127.0.0.1:s3_port (log in root/moto.log), listening, with the bucket.
    The caller stops it (stop_process) whatever happens, including when this raises."""
    with open(root / "moto.log", "ab") as moto_log:
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                                stdout=moto_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_die_with_parent)
    try:
        wait_listening(s3_port, moto, 30, "the S3 endpoint (moto)", stop)
        client = s3_client(f"http://127.0.0.1:{s3_port}")
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
    except BaseException:
        _stop(moto, 15)
        raise
    return moto


def broker_env() -> dict[str, str]:
    """The environment of a local broker: this one, with moto's dummy credentials."""
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_SESSION_TOKEN", "AWS_PROFILE")}
    env.update(DUMMY_CREDENTIALS)
    return env


def broker_argv(data_dir: str | os.PathLike[str], listen: str | Sequence[str], settings: Mapping[str, str],
                extra_args: Sequence[str] = ()) -> list[str]:
    """The command line of one broker: `python -m strata_broker.cli --data-dir D --listen L... [extra]
    --set K=V...`. The one way a broker process is started here, in the tests (tests/support/brokerproc.py)
    and in bench/."""
    cmd = [sys.executable, "-m", "strata_broker.cli", "--data-dir", str(data_dir)]
    for address in [listen] if isinstance(listen, str) else listen:
        cmd += ["--listen", address]
    cmd += extra_args
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def start_broker(data_dir: Path, port: int, settings: dict[str, str], extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`python -m strata_broker.cli` on 127.0.0.1:port with `--set` settings (not waited for)."""
    cmd = broker_argv(data_dir, f"127.0.0.1:{port}", settings, extra_args)
    return subprocess.Popen(cmd, env=env or broker_env(), stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_die_with_parent)


def start_registry(root: Path, port: int, kafka_port: int) -> subprocess.Popen[bytes]:
    """`strata-registry` on 127.0.0.1:port against the local broker (log in root/registry.log)."""
    with open(root / "registry.log", "ab") as registry_log:
        return subprocess.Popen([sys.executable, "-m", "strata_registry.cli", "--bootstrap", f"127.0.0.1:{kafka_port}",
                                 "--listen", f"127.0.0.1:{port}"], stdout=registry_log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)


@click.command("local")
@click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False),
              help="Broker data under DIR/broker-0, the bucket's mirror under DIR/s3, moto's log in DIR/moto.log.")
@click.option("--port", default=9092, show_default=True, type=click.IntRange(1, 65535), help="Kafka port.")
@click.option("--s3-port", default=9000, show_default=True, type=click.IntRange(1, 65535), help="S3 endpoint port.")
@click.option("--bucket", default=BUCKET, show_default=True, help="Bucket the broker offloads to.")
@click.option("--local-retention-bytes", default=2 << 20, show_default=True, type=click.IntRange(min=-2),
              help="Hot bytes kept on disk per partition (two 1 MiB segments); the rest lives in S3 only.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Extra broker property, as strata-broker --set (applied last). Repeatable.")
@click.option("--registry-port", default=8081, show_default=True, type=click.IntRange(0, 65535),
              help="Schema registry port (Confluent's REST API); 0 = no registry.")
@click.option("--no-mirror", is_flag=True, help="Do not persist the bucket to DATA_DIR/s3 (it dies with the stack).")
def local(data_dir: str, port: int, s3_port: int, bucket: str, local_retention_bytes: int,
          settings: tuple[str, ...], registry_port: int, no_mirror: bool) -> None:
    """Run a broker with tiered storage and an embedded S3 endpoint (moto) on loopback."""
    extra = parse_settings(settings)
    if port == s3_port:
        raise click.UsageError("--port and --s3-port must differ")
    ports = {port: "--port", s3_port: "--s3-port"}
    if registry_port:
        ports[registry_port] = "--registry-port"
    check_ports_free(ports)
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    endpoint = f"http://127.0.0.1:{s3_port}"
    stop = threading.Event()
    moto: subprocess.Popen[bytes] | None = None
    broker: subprocess.Popen[bytes] | None = None
    registry: subprocess.Popen[bytes] | None = None
    mirror = None if no_mirror else BucketMirror(endpoint, bucket, root / "s3" / bucket)
    mirror_thread: threading.Thread | None = None

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    exit_code = 0
    try:
        moto = start_s3(root, s3_port, bucket, stop)
        restored = mirror.restore() if mirror is not None else 0

        broker = start_broker(root / "broker-0", port,
                              {**local_settings(bucket, endpoint, local_retention_bytes),
                               **({"schema.registry.principal": "User:ANONYMOUS"} if registry_port else {}),
                               **extra})
        wait_listening(port, broker, 120, "the broker", stop)
        if registry_port:
            registry = start_registry(root, registry_port, port)
            wait_listening(registry_port, registry, 120, f"the schema registry (see {root / 'registry.log'})", stop)
        if mirror is not None:
            mirror_thread = threading.Thread(target=mirror.run, args=(stop,), name="bucket-mirror", daemon=True)
            mirror_thread.start()

        strata = _strata_command()
        kafka = f"127.0.0.1:{port}"
        click.echo(
            f"\nStrata is running (Ctrl-C stops it)\n"
            f"  Kafka bootstrap  {kafka}   topics auto-created with 6 partitions\n"
            f"  S3 endpoint      {endpoint}   bucket {bucket} (moto"
            + (f"; mirrored to {mirror.directory}" + (f", {restored} object(s) restored" if restored else "")
               if mirror is not None else "; in memory only") + ")\n"
            f"  data             {root / 'broker-0'}   1 MiB segments, uploaded within 10 s, "
            f"{local_retention_bytes:,} hot bytes per partition\n"
            + (f"  schema registry  http://127.0.0.1:{registry_port}   Confluent's REST API, stored in _schemas\n"
               if registry_port else "") + "\n"
            f"  produce        echo 'order-1:{{\"total\": 12}}' | kcat -b {kafka} -P -t orders -K:\n"
            f"  watch offload  {strata} tier ls --bucket {bucket} --endpoint {endpoint} --bootstrap {kafka}\n"
            f"  replay         {strata} replay --bootstrap {kafka} --topic orders --from-offset 0\n",
            err=False)
        sys.stdout.flush()

        while not stop.is_set():
            if moto.poll() is not None:
                click.echo(f"strata local: the S3 endpoint exited ({moto.returncode}); see {root / 'moto.log'}",
                           err=True)
                exit_code = 1
                break
            if broker.poll() is not None:
                click.echo(f"strata local: the broker exited ({broker.returncode})", err=True)
                exit_code = 1
                break
            if registry is not None and registry.poll() is not None:
                click.echo(f"strata local: the schema registry exited ({registry.returncode}); see "
                           f"{root / 'registry.log'}", err=True)
                exit_code = 1
                break
            stop.wait(0.5)
    finally:
        stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # Ctrl-C again during shutdown should not leave children behind: ignore it until we are done.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            _stop(registry, 20)
            _stop(broker, 60)
            if mirror_thread is not None:
                mirror_thread.join(30)
            if mirror is not None and moto is not None and moto.poll() is None:
                try:
                    mirror.sync()
                except Exception as exc:
                    click.echo(f"strata local: last mirror pass failed: {exc}", err=True)
            _stop(moto, 15)
        finally:
            signal.signal(signal.SIGINT, previous[signal.SIGINT])
    if exit_code:
        sys.exit(exit_code)
    click.echo("strata local: stopped", err=True)
