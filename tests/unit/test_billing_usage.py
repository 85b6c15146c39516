"""Usage records: parsing, de-duplication across retries and restarts, torn writes, the S3 reader."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from billing_scenario import DAY, GIB, scenario_records
from s3server import S3Server
from strata_operator.billing import BillingError, allocation, ownership, prices, report, usage


def _lines(records: list[dict[str, object]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _produced(records: usage.UsageSet) -> int:
    return sum(r.produced_bytes for r in records.records)


def test_round_trip_to_json() -> None:
    parsed = usage.read_lines([("a", _lines(scenario_records()))])
    again = usage.read_lines([("b", "".join(r.to_json() + "\n" for r in parsed.records))])
    assert again.records == parsed.records and len(parsed.records) == 8


def test_retried_upload_and_restart_are_not_double_counted(tmp_path: Path) -> None:
    records = scenario_records()
    before, after = records[:4], records[4:]
    # Epoch 1 wrote its file twice (a retried PUT, and a copy left in the data dir); after a
    # restart (epoch 2) the broker re-sent its last unconfirmed snapshot (r4) with the same id.
    (tmp_path / "2025/03/01").mkdir(parents=True)
    (tmp_path / "2025/03/01/0-1.jsonl").write_text(_lines(before))
    (tmp_path / "0-1.jsonl").write_text(_lines(before))
    (tmp_path / "2025/03/01/0-2.jsonl").write_text(_lines([before[-1], *after]))
    got = usage.read_dir(tmp_path)
    once = usage.read_lines([("x", _lines(records))])
    assert got.records == once.records
    assert got.duplicates == 5 and got.conflicts == 0
    assert _produced(got) == 110 * GIB


def test_conflicting_duplicate_is_kept_once_deterministically() -> None:
    a = {**scenario_records()[0], "produced_bytes": 1}
    b = {**scenario_records()[0], "produced_bytes": 2}
    one = usage.read_lines([("1", _lines([a])), ("2", _lines([b]))])
    two = usage.read_lines([("2", _lines([b])), ("1", _lines([a]))])
    assert one.records == two.records and one.conflicts == 1
    assert any("different contents" in w for w in one.warnings)


def test_torn_last_line_is_skipped_but_garbage_mid_file_is_an_error() -> None:
    text = _lines(scenario_records()[:2])
    got = usage.read_lines([("f", text + '{"v":1,"id":"r9","kin')])
    assert len(got.records) == 2 and "torn" in got.warnings[0]
    with pytest.raises(BillingError, match="f:2: not valid JSON"):
        usage.read_lines([("f", _lines(scenario_records()[:1]) + "{oops\n" + text)])


@pytest.mark.parametrize("change, message", [
    ({"v": 2}, "unsupported usage record version"),
    ({"produced_bytes": -1}, "non-negative integer"),
    ({"window_start": "2025-03-01T00:00:00"}, "no time zone"),
    ({"principal": None}, "missing `principal`"),
    ({"id": ""}, "`id` must not be empty"),
])
def test_invalid_records_are_clear_errors(change: dict[str, object], message: str) -> None:
    record = {**scenario_records()[0], **change}
    with pytest.raises(BillingError, match=message):
        usage.read_lines([("f", json.dumps(record) + "\n")])


def test_unknown_kind_is_ignored_with_a_warning() -> None:
    got = usage.read_lines([("f", _lines([{**scenario_records()[0], "kind": "future-thing"}]))])
    assert got.records == [] and "unknown kind" in got.warnings[0]


def test_period_filter_and_day_prefixes() -> None:
    got = usage.read_lines([("f", _lines(scenario_records()))])
    assert len(got.between(DAY, date(2025, 3, 2)).records) == 8
    assert got.between(date(2025, 3, 2), date(2025, 3, 3)).records == []
    assert usage.day_prefixes("events", DAY, date(2025, 3, 2), prefix="/p/") == [
        "p/clusters/events/usage/2025/02/28/", "p/clusters/events/usage/2025/03/01/",
        "p/clusters/events/usage/2025/03/02/"]


def test_read_from_s3_dedupes(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    records = scenario_records()
    base = "team-x/clusters/events/usage/2025/03/01"
    client.put_object(Bucket=bucket.name, Key=f"{base}/0-1740787200.jsonl", Body=_lines(records[:5]).encode())
    client.put_object(Bucket=bucket.name, Key=f"{base}/0-1740790000.jsonl", Body=_lines(records[3:]).encode())
    # another cluster and another day far away are not read
    client.put_object(Bucket=bucket.name, Key="team-x/clusters/other/usage/2025/03/01/0-1.jsonl",
                      Body=_lines(records).encode())
    got = usage.read_s3(bucket.name, "events", DAY, date(2025, 3, 2), prefix="team-x",
                        endpoint=s3_server.endpoint)
    assert got.files == 2 and got.duplicates == 2 and len(got.records) == 8
    model = prices.load()
    alloc = allocation.allocate(got.records, model, ownership.Ownership(), DAY, date(2025, 3, 2))
    assert report.build(alloc).total > 0


def test_s3_errors_are_billing_errors(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with pytest.raises(BillingError, match="cannot read usage from s3://no-such-bucket"):
        usage.read_s3("no-such-bucket", "events", DAY, date(2025, 3, 2), endpoint=s3_server.endpoint)
