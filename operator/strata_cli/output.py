"""What the report commands (`strata cost report`, `strata topology`) share: where usage is read
from, and how a rendered table or text reaches the terminal or a file."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

import click
from rich.console import Console
from strata_operator.billing import usage


def usage_source_options(command: Callable) -> Callable:
    """The options that say where usage records are read from: `--usage DIR`, or `--bucket` with
    its endpoint, prefix, region and the cluster's name."""
    options = [
        click.option("--usage", "usage_dir", type=click.Path(path_type=Path),
                     help="Directory of usage files (*.jsonl, searched recursively)."),
        click.option("--bucket", help="Read usage from this S3 bucket instead."),
        click.option("--endpoint", help="S3 endpoint URL (MinIO, moto, ...); default AWS."),
        click.option("--prefix", default="", help="Key prefix inside the bucket (the brokers' tiered.s3.prefix)."),
        click.option("--region", default="us-east-1", show_default=True),
        click.option("--cluster", default="strata-local", show_default=True,
                     help="Cluster name (the brokers' cluster.id)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def check_usage_source(usage_dir: Path | None, bucket: str | None) -> None:
    if (usage_dir is None) == (bucket is None):
        raise click.UsageError("give exactly one usage source: --usage DIR or --bucket BUCKET")


def read_usage(usage_dir: Path | None, bucket: str | None, cluster: str, first: date, end: date, *,
               prefix: str, endpoint: str | None, region: str) -> usage.UsageSet:
    """The usage records of the UTC days [first, end) from a directory or the bucket (BillingError)."""
    if usage_dir is not None:
        return usage.read_dir(usage_dir)
    assert bucket is not None
    return usage.read_s3(bucket, cluster, first, end, prefix=prefix, endpoint=endpoint, region=region)


def upload_text(bucket: str, key: str, text: str, content_type: str, *, endpoint: str | None,
                region: str) -> None:
    """Put the text into the bucket (credentials from the usual AWS chain); a one-line error if it fails."""
    import asyncio

    from aiobotocore.session import get_session

    async def put() -> None:
        async with get_session().create_client("s3", endpoint_url=endpoint or None, region_name=region) as client:
            await client.put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"), ContentType=content_type)

    try:
        asyncio.run(put())
    except Exception as exc:  # botocore raises many types; the user needs the message, not a traceback
        raise click.ClickException(f"cannot write s3://{bucket}/{key}: {exc}") from None


def write_table(render: Callable[[Console], None], output: Path | None) -> None:
    """A rich table on the terminal (200 columns when piped), or plain in a file."""
    if output is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=200)
        render(console)
        return
    with open(output, "w", encoding="utf-8") as fh:
        render(Console(file=fh, width=160, no_color=True))


def write_text(text: str, output: Path | None) -> None:
    """Rendered text on stdout, or in a file (a one-line error when it cannot be written)."""
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc}") from None
