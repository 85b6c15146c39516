"""Apache Kafka as a reference broker beside Strata: fetched from Maven Central, run as one KRaft node.

The broker's jars (org.apache.kafka:kafka_2.13 and its runtime dependencies, plus Log4j 2 to write
its log) come from `mvn dependency:copy-dependencies` on the small pom in tests/support/kafka-ref/, once, into
a cache outside the clone: ~/.cache/strata/kafka-<version>/lib (STRATA_CACHE_DIR moves
~/.cache/strata). Maven's own ~/.m2 keeps the downloads too, so a fresh clone on the same machine
copies instead of downloading. A file lock makes concurrent first fetches (pytest-xdist workers, a
benchmark) wait for one another instead of racing.

`KafkaBroker` then runs a single combined broker+controller (`process.roles=broker,controller`) on
two free loopback ports with its own temp dir: `kafka.tools.StorageTool format` with a random cluster
id and a static `controller.quorum.voters`, then `kafka.Kafka server.properties`, a small heap, and
Kafka's default flush policy (no log.flush.* setting: the page cache, no fsync per produce). It is
ready once an AdminClient sees the broker in its metadata.

Used by tests/integration/broker/test_kafka_differential.py, tests/integration/broker/test_java_clients.py
and bench/produce_consume.py.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

KAFKA_VERSION = os.environ.get("STRATA_KAFKA_VERSION", "4.4.0")
TESTS_DIR = Path(__file__).resolve().parent
POM = TESTS_DIR / "kafka-ref" / "pom.xml"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


class KafkaUnavailable(RuntimeError):
    """java or mvn is missing, or the Maven fetch failed: the message says which."""


def cache_root() -> Path:
    """Where fetched jars and built Java programs are kept between runs (outside any clone)."""
    base = os.environ.get("STRATA_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "strata"


def missing_tools() -> str | None:
    """The first of java / mvn that is not on PATH (None when both are): a skip reason names it."""
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            return f"{tool} not found on PATH (needed to fetch and run Apache Kafka)"
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_maven(args: list[str], what: str, timeout: float = 900.0, cwd: Path | None = None) -> None:
    """`mvn -B -q ARGS`; raises KafkaUnavailable with Maven's output tail when it fails."""
    missing = missing_tools()
    if missing:
        raise KafkaUnavailable(missing)
    proc = subprocess.run(["mvn", "-B", "-q", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise KafkaUnavailable(f"{what}: mvn exited with {proc.returncode}:\n{tail}")


def fetch_kafka(version: str = KAFKA_VERSION) -> Path:
    """The folder holding Kafka's broker jars, fetched with Maven on first use; cached afterwards."""
    home = cache_root() / f"kafka-{version}"
    lib = home / "lib"
    done = home / ".complete"
    if done.exists():
        return lib
    with _locked(home.parent / f"kafka-{version}.lock"):
        if done.exists():  # another process fetched it while this one waited
            return lib
        staging = Path(tempfile.mkdtemp(prefix=f"kafka-{version}-", dir=home.parent))
        try:
            run_maven(["-f", str(POM), f"{DEPENDENCY_PLUGIN}:copy-dependencies", f"-Dkafka.version={version}",
                      "-DincludeScope=runtime", f"-DoutputDirectory={staging}"],
                      f"fetching Apache Kafka {version} (org.apache.kafka:kafka_2.13) from Maven Central")
            if not any(staging.glob(f"kafka_2.13-{version}.jar")):
                raise KafkaUnavailable(f"Maven fetch left no kafka_2.13-{version}.jar in {staging}")
            shutil.rmtree(lib, ignore_errors=True)
            home.mkdir(parents=True, exist_ok=True)
            staging.rename(lib)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        done.write_text(f"{version}\n")
    return lib


def classpath(lib: Path) -> str:
    return os.pathsep.join(str(p) for p in sorted(lib.glob("*.jar")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_cluster_id() -> str:
    """What `kafka-storage.sh random-uuid` prints: 16 random bytes, URL-safe base64, no padding, and
    (as Kafka's Uuid.randomUuid) never starting with "-", which the tool's argument parser would
    take for an option (1 run in 64 failed with "--cluster-id: expected one argument")."""
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):
            return value


LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = OUT
logger.ready.name = kafka.server.KafkaRaftServer
logger.ready.level = INFO
"""


class KafkaBroker:
    """One Apache Kafka KRaft node (broker + controller) on loopback, in its own directory.

    `settings` are added to (or override) server.properties: tests pass what they need, such as
    auto.create.topics.enable. `heap` is the JVM's -Xmx and -Xms. `extra_listeners` adds PLAINTEXT
    listeners: name -> (port on 127.0.0.1, the host:port to advertise there, e.g. a proxy's).
    """

    NAME = "kafka"

    def __init__(self, work_dir: Path, settings: dict[str, str] | None = None, port: int | None = None,
                 heap: str = "512m", version: str = KAFKA_VERSION, log_level: str = "WARN",
                 extra_listeners: dict[str, tuple[int, str]] | None = None) -> None:
        self.work_dir = Path(work_dir)
        self.port = port or free_port()
        self.controller_port = free_port()
        self.settings = dict(settings or {})
        self.extra_listeners = dict(extra_listeners or {})
        self.heap = heap
        self.version = version
        self.log_level = log_level
        self.log_path = self.work_dir / "kafka.log"
        self.data_dir = self.work_dir / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self.name = self.NAME

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def properties(self) -> dict[str, str]:
        extra = self.extra_listeners.items()
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": ",".join([f"PLAINTEXT://127.0.0.1:{self.port}", f"CONTROLLER://127.0.0.1:{self.controller_port}",
                                   *(f"{name}://127.0.0.1:{port}" for name, (port, _) in extra)]),
            "advertised.listeners": ",".join([f"PLAINTEXT://127.0.0.1:{self.port}",
                                              *(f"{name}://{adv}" for name, (_, adv) in extra)]),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT",
                                                        *(f"{name}:PLAINTEXT" for name, _ in extra)]),
            "log.dirs": str(self.data_dir),
            # One node: every internal topic with one replica, as in config/server.properties.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        props.update(self.settings)
        return props

    def command(self, main: str, *args: str) -> list[str]:
        lib = fetch_kafka(self.version)
        return ["java", f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
                "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
                "-cp", classpath(lib), main, *args]

    def prepare(self) -> list[str]:
        """Write the config, format the storage; the server's command line (for bench/'s Broker)."""
        missing = missing_tools()
        if missing:
            raise KafkaUnavailable(missing)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "log4j2.properties").write_text(LOG4J2.format(level=self.log_level))
        config = self.work_dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        if not (self.data_dir / "meta.properties").exists():
            fmt = subprocess.run(
                self.command("kafka.tools.StorageTool", "format", "--config", str(config),
                             "--cluster-id", random_cluster_id(), "--ignore-formatted"),
                capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
            if fmt.returncode != 0:
                raise RuntimeError(f"kafka-storage format exited with {fmt.returncode}:\n"
                                   f"{(fmt.stdout + fmt.stderr)[-3000:]}")
        return self.command("kafka.Kafka", str(config))

    def start(self, timeout: float = 120.0) -> KafkaBroker:
        argv = self.prepare()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        try:
            wait_ready(self.bootstrap, timeout, self.proc, self.log_tail)
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (Kafka's controlled shutdown), SIGKILL if it takes longer than `timeout`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def wait_ready(bootstrap: str, timeout: float, proc: subprocess.Popen[bytes] | None = None,
               log_tail: Callable[[], str] | None = None) -> None:
    """Until an AdminClient's metadata lists a broker at `bootstrap` (the node is unfenced)."""
    from confluent_kafka.admin import AdminClient

    host, _, port = bootstrap.rpartition(":")
    deadline = time.monotonic() + timeout
    admin: AdminClient | None = None
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_tail() if log_tail else ""
            raise RuntimeError(f"Kafka exited with {proc.returncode} before it was ready:\n{tail}")
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                pass
        except OSError:
            time.sleep(0.2)
            continue
        admin = admin or AdminClient({"bootstrap.servers": bootstrap})
        try:
            md = admin.list_topics(timeout=2)
            if md.brokers:
                return
        except Exception as exc:  # not ready yet: the broker is still catching up with its controller
            last = str(exc)
        time.sleep(0.2)
    tail = log_tail() if log_tail else ""
    raise TimeoutError(f"Kafka at {bootstrap} not ready after {timeout:.0f}s ({last}):\n{tail}")


def build_java_program(project: Path) -> str:
    """Compile a small Maven project once per source content; its classpath (classes + dependencies).

    The build goes to cache_root()/<folder name>-<hash of pom and sources>, never into the clone.
    """
    digest = hashlib.sha256()
    for path in sorted([project / "pom.xml", *project.rglob("*.java")]):
        digest.update(path.relative_to(project).as_posix().encode())
        digest.update(path.read_bytes())
    out = cache_root() / f"{project.name}-{digest.hexdigest()[:12]}"
    done = out / ".complete"
    if not done.exists():
        with _locked(out.parent / f"{project.name}.lock"):
            if not done.exists():
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                run_maven(["-f", str(project / "pom.xml"), f"-Dbuild.out={out / 'target'}", "compile",
                           f"{DEPENDENCY_PLUGIN}:copy-dependencies", "-DincludeScope=runtime",
                           f"-DoutputDirectory={out / 'lib'}"], f"building {project.name}")
                done.write_text("ok\n")
    return os.pathsep.join([str(out / "target" / "classes"), *(str(p) for p in sorted((out / "lib").glob("*.jar")))])


def main() -> int:
    """`python tests/support/kafkaref.py`: fetch Kafka and build tests/support/java-clients now (make
    test/bench call it).

    Exits 0 when java or mvn is missing (the tests then skip, naming it) and 1 when a fetch fails.
    """
    missing = missing_tools()
    if missing:
        print(f"kafkaref: {missing}; the Kafka reference tests will be skipped")
        return 0
    started = time.monotonic()
    try:
        lib = fetch_kafka()
        build_java_program(TESTS_DIR / "java-clients")
    except (KafkaUnavailable, subprocess.TimeoutExpired) as exc:
        print(f"kafkaref: {exc}")
        return 1
    print(f"kafkaref: Apache Kafka {KAFKA_VERSION} in {lib} ({time.monotonic() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
