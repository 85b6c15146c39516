"""The broker's time per request on /metrics (`strata_request_seconds{request, acks}`, a histogram):
counted per request type and, for Produce, per acks; a long poll's wait is in its time. And the
group commit's fsync rounds by the thread that ran them (`strata_group_commit_rounds`)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import metrics
import pytest
import rawclient as rc
from brokerproc import BrokerProcess, free_port
from waiting import wait_until

TOPIC = "request-metrics"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("request-metrics") / "broker", settings={
        "num.partitions": "1", "auto.create.topics.enable": "true",
        "metrics.listen": f"127.0.0.1:{free_port()}"}).start()
    yield proc
    proc.kill()


def histogram(proc: BrokerProcess, request: str, acks: str = "") -> tuple[list[tuple[float, float]], float, float]:
    """(cumulative buckets as (upper bound, count), count, sum) of one request type's histogram."""
    labels = f'acks="{acks}",request="{request}"'
    buckets: list[tuple[float, float]] = []
    count = total = 0.0
    for name, value in metrics.samples(metrics.scrape(proc.settings["metrics.listen"])).items():
        if not name.startswith("strata_request_seconds_"):
            continue
        if name == f"strata_request_seconds_count{{{labels}}}":
            count = value
        elif name == f"strata_request_seconds_sum{{{labels}}}":
            total = value
        else:
            m = re.fullmatch(r'strata_request_seconds_bucket\{acks="(.*)",le="(.*)",request="(.*)"\}', name)
            if m and (m.group(1), m.group(3)) == (acks, request):
                buckets.append((float(m.group(2)), value))
    buckets.sort()
    return buckets, count, total


def test_produce_is_counted_by_acks(broker: BrokerProcess) -> None:
    with rc.RawConnection(broker.bootstrap) as conn:
        conn.request(rc.metadata([TOPIC]))
        for acks, n in ((-1, 5), (1, 3)):
            for _ in range(n):
                response = conn.request(rc.produce(TOPIC, rc.record_batch(2), acks=acks))
                assert response.responses[0].partition_responses[0].error_code == 0
        for _ in range(2):
            conn.send(rc.produce(TOPIC, rc.record_batch(2), acks=0))  # no answer
    for acks, n in (("all", 5), ("1", 3), ("0", 2)):
        # Observed once the answer is written (acks=0: handled), which may be just after the client read it.
        wait_until(lambda acks=acks, n=n: histogram(broker, "Produce", acks)[1] >= n, 30, f"acks={acks} counted")
        buckets, count, total = histogram(broker, "Produce", acks)
        assert count == n, (acks, count)
        assert buckets[-1] == (float("inf"), count)
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:], strict=False)), buckets  # cumulative
        assert 0 < total < 30 * n
    assert histogram(broker, "Metadata")[1] >= 1
    found = metrics.samples(metrics.scrape(broker.settings["metrics.listen"]))
    rounds = [found.get(f'strata_group_commit_rounds_total{{thread="{t}"}}') for t in ("loop", "fsync")]
    assert None not in rounds and sum(rounds) >= 1, rounds  # type: ignore[arg-type]  # the acks=all fdatasyncs


def test_long_poll_wait_is_in_the_fetch_time(broker: BrokerProcess) -> None:
    with rc.RawConnection(broker.bootstrap) as conn:
        conn.request(rc.produce(TOPIC, rc.record_batch(1), acks=1))
        end = conn.request(rc.list_offsets(TOPIC)).topics[0].partitions[0].offset
        before = histogram(broker, "Fetch")
        # Nothing at the end offset: the fetch parks for its max_wait_ms before it is answered.
        conn.request(rc.fetch(TOPIC, offset=end, max_wait_ms=400))
    wait_until(lambda: histogram(broker, "Fetch")[1] > before[1], 30, "the fetch counted")
    buckets, count, total = histogram(broker, "Fetch")
    assert count == before[1] + 1
    assert total - before[2] >= 0.35
    under_quarter = dict(buckets)[0.25] - dict(before[0]).get(0.25, 0.0)
    assert under_quarter == 0  # the one new fetch lies above 0.25 s
