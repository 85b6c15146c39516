"""`strata topology`: the business topology, declared and observed, with traffic, cost and findings.

    strata topology -f examples/ --usage data/usage --from 2025-03-01 --to 2025-03-31 --format html -o t.html
    strata topology --bucket B --endpoint URL --prefix P --cluster C --format json
    strata topology --bucket B --cluster C --days 7 --format html --upload clusters/C/topology/topology.html

Sources are those of `strata cost report`: Topic and Microservice manifests (`-f`, repeatable)
or, without `-f`, the cluster's Topic and Microservice resources (kubeconfig or in-cluster);
usage records from `--usage DIR` or `--bucket`. The window is whole UTC days, `--to` inclusive
(default today), `--from` defaulting to six days before `--to` (or `--days` days ending `--to`).
`--upload KEY` writes the output into the bucket instead (the chart's Topology CronJob does).
Problems are one-line errors with exit status 1; a window without usage gives the declared graph
and a warning.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from strata_operator.billing import BillingError, ownership, prices
from strata_operator.crds import API_VERSION
from strata_operator.topology import model, render

from .output import check_usage_source, read_usage, upload_text, usage_source_options, write_table, write_text

FORMATS = ("table", "json", "html", "svg", "dot", "mermaid")
CONTENT_TYPES = {"json": "application/json", "html": "text/html; charset=utf-8", "svg": "image/svg+xml"}



def _cluster_ownership(namespaces: tuple[str, ...]) -> ownership.Ownership:
    """Topic and Microservice resources from the API server the kubeconfig points at."""
    from strata_operator.kube import Kube

    async def fetch() -> list[dict[str, Any]]:
        kube = Kube()
        try:
            objects = []
            for kind in ("Topic", "Microservice"):
                for namespace in namespaces or (None,):
                    objects.extend({**item, "apiVersion": item.get("apiVersion") or API_VERSION, "kind": kind}
                                   for item in await kube.list(API_VERSION, kind, namespace))
            return objects
        finally:
            await kube.close()

    try:
        objects = asyncio.run(fetch())
    except Exception as exc:  # no kubeconfig, API unreachable, RBAC: the message is what the user needs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BillingError(f"cannot read Topic/Microservice resources from the cluster ({first}); "
                           "pass -f MANIFESTS instead") from None
    return ownership.Ownership.from_objects(objects, source="the cluster")


def render_table(topo: model.Topology, console: Console) -> None:
    window = topo.to_json()["window"]
    console.print(f"[bold]Strata topology[/bold] · {topo.cluster or 'cluster'} · {window['from']} .. {window['to']}"
                  f" · {render.counts(topo)}")
    table = Table("team", "service", "edge", "topic", "declared", "bytes/day", "records/day", "lag", "cost")
    for e in sorted(topo.edges.values(), key=lambda e: (topo.nodes[e.source].team, e.source, e.kind, e.topic)):
        node = topo.nodes[e.source]
        lag = ", ".join(f"{g}:{s[-1].lag}" for g, s in sorted(e.groups.items()))
        table.add_row(node.team, node.name, e.kind, e.topic, "yes" if e.declared else "NO",
                      render.human_bytes(e.bytes / topo.days) if e.observed else "-",
                      f"{e.records / topo.days:.0f}" if e.observed else "-", lag, model.money(e.cost))
    console.print(table)
    if topo.findings:
        console.print(f"[bold]Findings ({len(topo.findings)})[/bold]")
        for f in topo.findings:
            console.print(f"  {f.kind:20} {f.message}", highlight=False, markup=False)
    else:
        console.print("No findings.")


@click.command("topology")
@click.option("--from", "start", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="First day (UTC), YYYY-MM-DD; default six days before --to.")
@click.option("--to", "end", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Last day (UTC, inclusive), YYYY-MM-DD; default today.")
@click.option("--days", type=click.IntRange(1, 366),
              help="Days in the window, ending --to (instead of --from).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file instead of stdout.")
@click.option("-f", "--filename", "manifests", multiple=True, type=click.Path(path_type=Path),
              help="Topic and Microservice manifests (files or directories); repeatable. "
                   "Default: the cluster's resources.")
@click.option("--namespace", "-n", "namespaces", multiple=True,
              help="Without -f: read resources of this namespace only (repeatable; default: all).")
@click.option("--prices", "price_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Price model YAML for the edges' cost (as `strata cost report`).")
@usage_source_options
@click.option("--upload", "upload_key", metavar="KEY",
              help="Write the output into --bucket under this key (not to stdout or -o); not with --format table.")
def topology(start: datetime | None, end: datetime | None, days: int | None, fmt: str, output: Path | None,
             manifests: tuple[Path, ...], namespaces: tuple[str, ...], price_file: Path | None, usage_dir: Path | None,
             bucket: str | None, endpoint: str | None, prefix: str, region: str, cluster: str,
             upload_key: str | None) -> None:
    """Services and topics by team: declared and observed writes and reads, traffic, lag, cost, findings."""
    if start is not None and days is not None:
        raise click.UsageError("give --from or --days, not both")
    last: date = end.date() if end else datetime.now(UTC).date()
    first: date = start.date() if start else last - timedelta(days=(days or 7) - 1)
    if last < first:
        raise click.BadParameter(f"--to {last} is before --from {first}", param_hint="--to")
    check_usage_source(usage_dir, bucket)
    if upload_key is not None and (bucket is None or fmt == "table" or output is not None):
        raise click.ClickException("--upload needs --bucket and a --format other than table, and no -o")
    window_end = last + timedelta(days=1)
    try:
        model_prices = prices.load(price_file)
        owners = ownership.load_manifests(manifests) if manifests else _cluster_ownership(namespaces)
        records = read_usage(usage_dir, bucket, cluster, first, window_end, prefix=prefix, endpoint=endpoint,
                             region=region)
        topo = model.build(records.records, owners, model_prices, first, window_end, cluster=cluster,
                           schema_subjects=owners.schema_subjects)
        topo.warnings[:0] = records.warnings
    except BillingError as exc:
        raise click.ClickException(str(exc)) from None

    for warning in topo.warnings:
        click.echo(f"warning: {warning}", err=True)
    if fmt == "table":
        write_table(lambda console: render_table(topo, console), output)
        return
    text = render.RENDERERS[fmt](topo)
    if upload_key is not None:
        assert bucket is not None
        upload_text(bucket, upload_key, text, CONTENT_TYPES.get(fmt, "text/plain; charset=utf-8"),
                    endpoint=endpoint, region=region)
        click.echo(f"wrote s3://{bucket}/{upload_key} ({fmt}: {render.counts(topo)}, {len(topo.findings)} findings)",
                   err=True)
        return
    write_text(text, output)
    if output is None:
        return
    click.echo(f"wrote {output} ({fmt}: {render.counts(topo)}, {len(topo.findings)} findings)", err=True)
