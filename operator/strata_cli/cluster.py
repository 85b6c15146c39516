"""`strata cluster show|rebalance`: the placement of a broker cluster, and asking to rebalance it.

Local (`strata dev`, tests): `--placement FILE`, the file the controller writes. `rebalance`
creates `FILE.rebalance`, which the controller consumes on its next tick (and deletes), and waits
for that (`--wait`, 0 to return at once).

Kubernetes: `-n NAMESPACE --eventbroker NAME` reads the ConfigMap `<name>-placement`; `rebalance`
sets the annotation `strata.dev/rebalance` on the EventBroker, which the operator removes once
the rebalance is done.

`show` prints one row per broker: partitions led, bytes in (from the brokers' leases, with
`--bucket`; they report bytes/s per partition they lead), and the partitions themselves.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from strata_contract.placement import Placement, read_placement
from strata_operator.billing.report import human_bytes


def _compact(parts: list[tuple[str, int]]) -> str:
    """[("orders", 0), ("orders", 1), ("orders", 2), ("pay", 5)] -> 'orders/0-2 pay/5'."""
    by_topic: dict[str, list[int]] = {}
    for topic, p in sorted(parts):
        by_topic.setdefault(topic, []).append(p)
    out = []
    for topic, ps in by_topic.items():
        ranges: list[str] = []
        start = prev = ps[0]
        for p in [*ps[1:], None]:
            if p is not None and p == prev + 1:
                prev = p
                continue
            ranges.append(str(start) if start == prev else f"{start}-{prev}")
            if p is not None:
                start = prev = p
        out.append(f"{topic}/{','.join(ranges)}")
    return " ".join(out)


def _leases(bucket: str, endpoint: str | None, region: str, prefix: str, cluster: str) -> dict[int, Any]:
    from strata_operator.cluster.controller import BucketReader

    async def read() -> dict[int, Any]:
        reader = BucketReader(bucket, endpoint, region)
        try:
            return await reader.members(prefix, cluster)
        finally:
            await reader.close()

    return asyncio.run(read())


async def _kube_call(fn: Any) -> Any:
    from strata_operator.kube import as_user

    return await as_user(fn)


def _load(placement_file: str | None, namespace: str, eventbroker: str | None) -> Placement:
    if placement_file:
        placement = read_placement(placement_file)
        if placement is None:
            raise click.ClickException(f"{placement_file}: no placement yet (missing or unreadable)")
        return placement
    if not eventbroker:
        raise click.UsageError("give --placement FILE (local) or --eventbroker NAME (Kubernetes)")
    from strata_operator.cluster import kube_objects

    name = kube_objects.placement_configmap_name(eventbroker)
    found = asyncio.run(_kube_call(lambda kube: kube.get("v1", "ConfigMap", namespace, name)))
    placement = kube_objects.placement_from_configmap(found)
    if placement is None:
        raise click.ClickException(f"ConfigMap {namespace}/{name} holds no placement (is the EventBroker clustered?)")
    return placement


@click.group("cluster")
def cluster() -> None:
    """Broker clusters: partition placement and rebalancing."""


@cluster.command("show")
@click.option("--placement", "placement_file", type=click.Path(dir_okay=False), help="Placement file (local mode).")
@click.option("-n", "--namespace", default="default", show_default=True, help="Namespace of the EventBroker.")
@click.option("--eventbroker", help="EventBroker name (Kubernetes): reads its <name>-placement ConfigMap.")
@click.option("--bucket", help="Read the brokers' leases from this bucket for bytes in and renewals.")
@click.option("--endpoint", help="S3 endpoint URL (with --bucket).")
@click.option("--region", default="us-east-1", show_default=True)
@click.option("--prefix", default="", help="Key prefix (tiered.s3.prefix).")
@click.option("--cluster-id", "cluster_id", default="strata-local", show_default=True,
              help="The brokers' cluster.id (Kubernetes: <namespace>.<name>).")
@click.option("--json", "as_json", is_flag=True, help="Print the placement document and loads as JSON.")
def show(placement_file: str | None, namespace: str, eventbroker: str | None, bucket: str | None,
         endpoint: str | None, region: str, prefix: str, cluster_id: str, as_json: bool) -> None:
    """Print the placement: per broker, the partitions it leads and their bytes in."""
    from strata_operator.cluster.assign import broker_loads
    from strata_operator.cluster.controller import bytes_in_of

    placement = _load(placement_file, namespace, eventbroker)
    leases: dict[int, Any] = {}
    if bucket:
        try:
            leases = _leases(bucket, endpoint, region, prefix, cluster_id)
        except Exception as exc:
            raise click.ClickException(f"cannot read leases from s3://{bucket}: {exc}") from None
    rates = bytes_in_of(leases, placement)
    loads = broker_loads(placement, rates)
    led: dict[int, list[tuple[str, int]]] = {b: [] for b in loads}
    for name, t in placement.topics.items():
        for p, a in enumerate(t.partitions):
            led.setdefault(a.leader, []).append((name, p))
    if as_json:
        click.echo(json.dumps({"placement": placement.to_dict(), "brokers": {
            str(b): {"partitions": n, "bytes_in": rate, "listed": placement.broker(b) is not None,
                     "renewals": leases[b].renewals if b in leases else None}
            for b, (n, rate) in sorted(loads.items())}}, indent=1, sort_keys=True))
        return
    total = sum(len(t.partitions) for t in placement.topics.values())
    table = Table(title=f"placement v{placement.version}: {len(placement.brokers)} broker(s), "
                        f"{len(placement.topics)} topic(s), {total} partition(s)")
    for col, justify in (("broker", "right"), ("address", "left"), ("partitions", "right"),
                         ("bytes in/s", "right"), ("leads", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for b, (n, rate) in sorted(loads.items()):
        address = placement.broker(b)
        where = f"{address.host}:{address.port}" if address else "(not live)"
        table.add_row(str(b), where, str(n), human_bytes(int(rate)) if bucket else "-", _compact(led.get(b, [])))
    Console(width=max(100, Console().width)).print(table)


@cluster.command("rebalance")
@click.option("--placement", "placement_file", type=click.Path(dir_okay=False),
              help="Placement file (local mode): creates FILE.rebalance for the controller.")
@click.option("-n", "--namespace", default="default", show_default=True, help="Namespace of the EventBroker.")
@click.option("--eventbroker", help="EventBroker name (Kubernetes): annotates it with strata.dev/rebalance.")
@click.option("--wait", default=15.0, show_default=True, type=click.FloatRange(min=0),
              help="Local mode: seconds to wait for the controller to take the request (0: do not wait).")
def rebalance(placement_file: str | None, namespace: str, eventbroker: str | None, wait: float) -> None:
    """Move the fewest partitions needed for every broker to lead within one of every other."""
    if placement_file:
        before = read_placement(placement_file)
        request = placement_file + ".rebalance"
        with open(request, "w") as f:
            f.write(f"{time.time():.3f}\n")
        if wait <= 0:
            click.echo(f"rebalance requested ({request})")
            return
        deadline = time.monotonic() + wait
        while os.path.exists(request):
            if time.monotonic() > deadline:
                raise click.ClickException(f"the controller did not take {request} within {wait:.0f}s "
                                           "(is it running?); the request stays for it")
            time.sleep(0.1)
        after = read_placement(placement_file)
        if before is not None and after is not None and after.version == before.version:
            click.echo(f"already balanced (placement v{after.version})")
        elif after is not None:
            click.echo(f"rebalanced: placement v{after.version}")
        return
    if not eventbroker:
        raise click.UsageError("give --placement FILE (local) or --eventbroker NAME (Kubernetes)")
    from strata_operator.cluster.handlers import rebalance_patch
    from strata_operator.crds import GROUP, VERSION
    from strata_operator.kube import KubeError, path

    async def annotate(kube: Any) -> Any:
        return await kube.request("PATCH", path(f"{GROUP}/{VERSION}", "EventBroker", namespace, eventbroker),
                                  rebalance_patch(), content_type="application/merge-patch+json")

    try:
        found = asyncio.run(_kube_call(annotate))
    except (KubeError, OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    if found is None:
        raise click.ClickException(f"EventBroker {namespace}/{eventbroker} not found")
    click.echo(f"rebalance requested: EventBroker {namespace}/{eventbroker} annotated strata.dev/rebalance")
