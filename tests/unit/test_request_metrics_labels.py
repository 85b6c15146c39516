"""The request timers' labels stay bounded whatever acks a client sends."""

from strata_broker.request_metrics import RequestMetrics


def test_acks_outside_kafkas_values_share_one_label() -> None:
    metrics = RequestMetrics()
    for acks in (-1, 0, 1, 2, 5, -7, 32767):
        metrics.timer("Produce", acks).observe(0.001)
    (family,) = metrics.families()
    labels = sorted({sample.labels["acks"] for sample in family.samples})
    assert labels == ["0", "1", "all", "invalid"]
    invalid = [s for s in family.samples if s.name.endswith("_count") and s.labels["acks"] == "invalid"]
    assert [s.value for s in invalid] == [4]
