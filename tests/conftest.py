from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from brokerproc import BrokerProcess


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
             advertise: str | None = None) -> BrokerProcess:
        proc = BrokerProcess(tmp_path / name, port=port, settings=settings, advertise=advertise).start()
        started.append(proc)
        return proc

    yield make
    for proc in started:
        if proc.alive():
            proc.kill()


@pytest.fixture
def topic_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"
