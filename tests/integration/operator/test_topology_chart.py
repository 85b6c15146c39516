"""The chart's Topology view, run: the CronJob's container command exactly as `helm template` renders it,
against the emulated API server (kmock) holding the Topics and Microservices and a moto bucket holding
today's usage records, writes the HTML page into the bucket where the chart says it is.

(The CronJob's shape is checked in test_chart.py; here its command does the job.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from kmockserver import KubeEmulatorProcess
from s3server import CREDENTIALS, S3Bucket
from strata_operator.billing.usage import UsageRecord
from test_chart import of_kind, render
from topology_scenario import MANIFESTS


def _usage_today() -> bytes:
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    if start.date() != datetime.now(UTC).date():
        start += timedelta(minutes=30)  # just after midnight: stay within today
    rows = [("User:shop.checkout", "orders", (2_000_000, 20_000, 40), (0, 0, 0)),
            ("User:shop.fulfilment", "orders", (0, 0, 0), (2_000_000, 20_000, 80)),
            ("User:finance.billing", "invoices", (40_000, 400, 4), (0, 0, 0))]
    lines = []
    for i, (principal, topic, produced, fetched) in enumerate(rows):
        lines.append(UsageRecord(
            id=f"c/0/1/1/{i}", kind="client", cluster="c", broker="0", window_start=start,
            window_end=start + timedelta(minutes=30), principal=principal, client_id="app", topic=topic,
            produced_bytes=produced[0], produced_records=produced[1], produce_requests=produced[2],
            fetched_bytes=fetched[0], fetched_records=fetched[1], fetch_requests=fetched[2]).to_json())
    return "".join(line + "\n" for line in lines).encode()


def test_the_cronjobs_command_writes_the_page_into_the_bucket(tmp_path: Path, s3: S3Bucket) -> None:
    client = s3.server.client()
    cluster = "strata.events"
    today = datetime.now(UTC)
    client.put_object(Bucket=s3.name, Key=f"views/clusters/{cluster}/usage/{today:%Y/%m/%d}/0-1.jsonl",
                      Body=_usage_today())
    docs = render((), ("--set", f"topology.enabled=true,topology.bucket={s3.name},topology.prefix=views,"
                                f"topology.endpoint={s3.server.endpoint},topology.clusterId={cluster}"))
    (job,) = of_kind(docs, "CronJob")
    (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    args = list(container["args"])
    # the price file the CronJob mounts from the chart's ConfigMap
    (prices,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-prices")]
    price_file = tmp_path / "prices.yaml"
    price_file.write_text(prices["data"]["prices.yaml"])
    args[args.index("--prices") + 1] = str(price_file)

    kube = KubeEmulatorProcess(tmp_path).start()
    try:
        for doc in yaml.safe_load_all(MANIFESTS):
            kube.create(doc)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBERNETES_"))}
        env.update({**CREDENTIALS, "KUBECONFIG": str(kube.kubeconfig())})
        proc = subprocess.run([sys.executable, "-m", "strata_cli", *args], env=env, capture_output=True, text=True,
                              timeout=120)
    finally:
        kube.stop()
    assert proc.returncode == 0, proc.stderr
    key = args[args.index("--upload") + 1]
    assert key == f"views/clusters/{cluster}/topology/topology.html" and proc.stdout == ""
    page = client.get_object(Bucket=s3.name, Key=key)
    body = page["Body"].read().decode()
    assert page["ContentType"].startswith("text/html")
    for node in ("service:shop.checkout", "service:shop.fulfilment", "service:finance.billing",
                 "service:finance.ledger", "topic:orders", "topic:invoices"):
        assert f'data-id="{node}"' in body, node
    assert 'data-id="write:service:shop.checkout-&gt;orders"' in body
