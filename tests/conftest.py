from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from brokerproc import BrokerProcess
from kafkaref import KafkaBroker, missing_tools
from s3server import S3Bucket, S3Server

# The longest modules, run first. `make test` spreads whole modules over pytest-xdist workers in
# collection order (--dist loadfile --no-loadscope-reorder): started early, these overlap the many
# short ones instead of running alone at the end. Everything else keeps pytest's order. Paths are
# relative to tests/, without ".py".
LONG_MODULES_FIRST = ("integration/broker/test_cluster", "integration/operator/test_operator_tenancy",
                      "integration/packaging/test_images", "integration/broker/test_tiered",
                      "integration/broker/test_kafka_differential", "integration/broker/test_compaction",
                      "integration/broker/test_log_compat",
                      "integration/operator/test_operator_reconcile", "integration/registry/test_schema_registry",
                      "integration/operator/test_operator_security", "integration/broker/test_security_sasl",
                      "integration/broker/test_groups_clients", "integration/operator/test_operator_costreport",
                      "integration/broker/test_security_limits", "integration/broker/test_hostile",
                      "integration/broker/test_idempotence", "integration/broker/test_durability",
                      "integration/broker/test_security_acl", "integration/broker/test_security_quota",
                      "integration/cli/test_local_stack", "integration/cli/test_cli_tier",
                      "integration/broker/test_quixstreams", "integration/broker/test_exactly_once")
TESTS_DIR = Path(__file__).resolve().parent


def _module_rank(item: pytest.Item) -> int:
    module = item.path.relative_to(TESTS_DIR).with_suffix("").as_posix()
    return LONG_MODULES_FIRST.index(module) if module in LONG_MODULES_FIRST else len(LONG_MODULES_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_module_rank)  # stable: the order inside a module is untouched


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker shared by the tests that only need a live broker (each uses its own topics)."""
    proc = BrokerProcess(tmp_path_factory.mktemp("shared") / "broker",
                         settings={"auto.create.topics.enable": "true", "num.partitions": "1"}).start()
    yield proc
    proc.stop()


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., BrokerProcess]]:
    """Brokers of the test's own, for tests that kill, restart or configure them."""
    started: list[BrokerProcess] = []

    def make(settings: dict[str, str] | None = None, name: str = "broker", port: int | None = None,
             advertise: str | None = None, env: dict[str, str] | None = None,
             listeners: dict[str, int | None] | None = None) -> BrokerProcess:
        proc = BrokerProcess(tmp_path / name, port=port, settings=settings, advertise=advertise, env=env,
                             listeners=listeners).start()
        started.append(proc)
        return proc

    yield make
    for proc in started:
        if proc.alive():
            proc.kill()


@pytest.fixture
def topic_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 HTTP endpoint on loopback: moto in server mode, as its own process."""
    server = S3Server(tmp_path_factory.mktemp("moto") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: S3Server) -> S3Bucket:
    """A fresh bucket for one test."""
    return s3_server.new_bucket()


@pytest.fixture(scope="module")
def kafka_ref(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """Apache Kafka (tests/support/kafkaref.py: fetched with Maven on first use), one per module that asks.

    Skipped, with the reason, only when java or mvn is not installed.
    """
    missing = missing_tools()
    if missing:
        pytest.skip(missing)
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka-ref"),
                         settings={"auto.create.topics.enable": "true", "num.partitions": "1"}).start()
    yield broker
    broker.stop()
