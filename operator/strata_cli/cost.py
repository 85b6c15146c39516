"""`strata cost report`: the microservice tax, per team, from recorded usage.

    strata cost report --from 2025-03-01 --to 2025-03-31 -f examples/ --usage data/usage
    strata cost report --from ... --to ... --bucket B --endpoint URL --prefix P --cluster C \\
        --format html --output report.html

`--to` is inclusive (whole UTC days). Problems (bad price file, unreadable usage, unknown team)
are one-line errors with exit status 1; a period without usage is an explicit empty report.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import click
from strata_operator.billing import BillingError, allocation, ownership, prices, report

from .output import check_usage_source, read_usage, usage_source_options, write_table, write_text

FORMATS = ("table", "csv", "json", "focus", "html")


def _date(value: datetime) -> date:
    return value.date()


@click.group()
def cost() -> None:
    """Cost reports: what each team's services cost (the microservice tax)."""


@cost.command("report")
@click.option("--from", "start", required=True, type=click.DateTime(formats=["%Y-%m-%d"]),
              help="First day (UTC), YYYY-MM-DD.")
@click.option("--to", "end", required=True, type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Last day (UTC, inclusive), YYYY-MM-DD.")
@click.option("--by", type=click.Choice(report.VIEWS), default="team", show_default=True,
              help="One row per team, per microservice, or per topic.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file instead of stdout.")
@click.option("--prices", "price_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Price model YAML (overrides the built-in list prices key by key).")
@click.option("--policy", type=click.Choice(prices.POLICIES),
              help="How the shared platform cost is split (default: the price file's tax.policy).")
@click.option("-f", "--filename", "manifests", multiple=True, type=click.Path(path_type=Path),
              help="Topic and Microservice manifests (files or directories); repeatable.")
@usage_source_options
@click.option("--team", "teams", multiple=True, help="Show only this team's rows (repeatable).")
def report_cmd(start: datetime, end: datetime, by: str, fmt: str, output: Path | None, price_file: Path | None,
               policy: str | None, manifests: tuple[Path, ...], usage_dir: Path | None, bucket: str | None,
               endpoint: str | None, prefix: str, region: str, cluster: str, teams: tuple[str, ...]) -> None:
    """Per-team cost report for the UTC days --from .. --to."""
    first, last = _date(start), _date(end)
    if last < first:
        raise click.BadParameter(f"--to {last} is before --from {first}", param_hint="--to")
    check_usage_source(usage_dir, bucket)
    period_end = last + timedelta(days=1)
    try:
        model = prices.load(price_file, policy=policy)
        owners = ownership.load_manifests(manifests) if manifests else ownership.Ownership()
        unknown = sorted(set(teams) - set(owners.teams) - set(ownership.RESERVED_TEAMS))
        if unknown:
            known = ", ".join(owners.teams) or "none (pass -f MANIFESTS)"
            raise BillingError(f"unknown team(s) {', '.join(unknown)}; known teams: {known}")
        records = read_usage(usage_dir, bucket, cluster, first, period_end, prefix=prefix, endpoint=endpoint,
                             region=region)
        alloc = allocation.allocate(records.records, model, owners, first, period_end)
        alloc.warnings[:0] = records.warnings
        if records.duplicates:
            alloc.warnings.append(f"{records.duplicates} duplicate usage record(s) ignored (same id seen again)")
        result = report.build(alloc, by=by, cluster=cluster, billing=model.billing)
        if teams:
            result = result.restrict(set(teams))
    except BillingError as exc:
        raise click.ClickException(str(exc)) from None

    for warning in alloc.warnings:
        click.echo(f"warning: {warning}", err=True)
    if fmt == "table":
        write_table(lambda console: report.render_table(result, console), output)
        return
    text = {"csv": report.render_csv, "json": report.render_json, "focus": report.render_focus,
            "html": report.render_html}[fmt](result)
    write_text(text, output)
    if output is not None:
        click.echo(f"wrote {output} ({fmt}, total {report.money(result.total)} {result.currency})", err=True)
