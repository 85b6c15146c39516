"""Metering and /metrics stay bounded whatever client ids clients choose, and /metrics can require a
bearer token. Client ids come in raw Produce frames, each with a fresh id."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import metrics
import pytest
import rawclient as rc
from brokerproc import BrokerProcess, free_port
from fuzz_auth import proc_rss_kb
from waiting import wait_until

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def mbroker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    base: Path = tmp_path_factory.mktemp("metering-bounds")
    (base / "token").write_text(TOKEN + "\n")
    proc = BrokerProcess(base / "broker", settings={
        "auto.create.topics.enable": "true", "num.partitions": "1", "metrics.listen": f":{free_port()}",
        "metrics.bearer.token.file": str(base / "token"), "metering.client.ids.per.principal": "50",
        "metering.idle.expiry.ms": "3000", "metering.sample.interval.ms": "500"}).start()
    yield proc
    proc.kill()


def scrape(proc: BrokerProcess, token: str | None = TOKEN) -> str:
    return metrics.scrape(proc.settings["metrics.listen"], token)


def client_ids(text: str, topic: str) -> set[str]:
    ids = set()
    for line in text.splitlines():
        if line.startswith("strata_client_produced_bytes_total{") and f'topic="{topic}"' in line:
            ids.add(line.split('client_id="', 1)[1].split('"', 1)[0])
    return ids


def produce_as(port: int, topic: str, client_ids_: list[str]) -> None:
    with rc.connect(port) as sock:
        sock.sendall(rc.encode(rc.metadata([topic]), correlation_id=-1))  # auto-creates the topic
        assert not rc.outcome(sock, 1).closed
        for i, client_id in enumerate(client_ids_):
            sock.sendall(rc.encode(rc.produce(topic, rc.record_batch(1)), correlation_id=i, client_id=client_id))
            assert not rc.outcome(sock, 1).closed


def test_metrics_need_the_bearer_token(mbroker: BrokerProcess) -> None:
    for token in (None, "wrong"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape(mbroker, token)
        assert refused.value.code == 401
    assert "strata_connections_open" in scrape(mbroker)


def test_fresh_client_ids_fold_into_other_and_expire(mbroker: BrokerProcess) -> None:
    topic = f"ids-{uuid.uuid4().hex[:8]}"
    produce_as(mbroker.port, topic, ["warmup"])
    time.sleep(0.5)
    rss0 = proc_rss_kb(mbroker.pid)
    produce_as(mbroker.port, topic, [f"{i:05d}-" + "x" * 4000 for i in range(3000)])
    ids = client_ids(scrape(mbroker), topic)
    assert "other" in ids and len(ids) <= 51, f"{len(ids)} client ids in /metrics"
    grown_mib = (proc_rss_kb(mbroker.pid) - rss0) / 1024
    assert grown_mib < 40, f"3,000 fresh 4,000-character client ids grew RSS by {grown_mib:.0f} MiB"
    # Idle ids are forgotten: their series go, and new ids get slots of their own again.
    wait_until(lambda: not client_ids(scrape(mbroker), topic), timeout=30, what="idle client ids expired")
    produce_as(mbroker.port, topic, ["after-expiry"])
    assert client_ids(scrape(mbroker), topic) == {"after-expiry"}
