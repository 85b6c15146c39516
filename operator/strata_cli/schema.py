"""`strata schema ls|show|check`: the schema registry for people and CI pipelines.

Talks to any registry speaking Confluent's REST API (Strata's `strata-registry`, docs/schema-registry.md).
`check FILE --subject S` runs the subject's compatibility test without registering anything: exit 0 when
the schema is valid and compatible, 1 when it is incompatible, 2 when it is invalid or the registry
refused the request.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

DEFAULT_REGISTRY = os.environ.get("STRATA_SCHEMA_REGISTRY", "http://127.0.0.1:8081")
TYPES_BY_SUFFIX = {".avsc": "AVRO", ".avro": "AVRO", ".json": "JSON", ".proto": "PROTOBUF"}


class RegistryError(click.ClickException):
    """A registry answer other than 2xx: its status, Confluent error code and message."""

    exit_code = 2

    def __init__(self, status: int, code: int | None, message: str) -> None:
        super().__init__(f"{message} (HTTP {status}" + (f", error {code})" if code is not None else ")"))
        self.status = status
        self.code = code


def call(registry: str, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    """One REST call; the decoded JSON answer, or RegistryError."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(registry.rstrip("/") + path, data=data, method=method,
                                     headers={"Content-Type": "application/vnd.schemaregistry.v1+json",
                                              "Accept": "application/vnd.schemaregistry.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            error = json.loads(raw)
            raise RegistryError(exc.code, error.get("error_code"), str(error.get("message"))) from None
        except (ValueError, AttributeError):
            raise RegistryError(exc.code, None, raw.decode(errors="replace")[:300] or str(exc)) from None
    except urllib.error.URLError as exc:
        raise click.ClickException(f"cannot reach the schema registry at {registry}: {exc.reason}") from exc


def _quote(subject: str) -> str:
    return urllib.parse.quote(subject, safe="")


def subject_rows(registry: str, prefix: str = "", deleted: bool = False) -> list[dict[str, Any]]:
    """One row per subject: versions, the latest's id and type, the effective compatibility."""
    query = urllib.parse.urlencode({"subjectPrefix": prefix, "deleted": str(deleted).lower()})
    rows = []
    default_level = call(registry, "GET", "/config")["compatibilityLevel"]
    for subject in call(registry, "GET", f"/subjects?{query}"):
        versions = call(registry, "GET", f"/subjects/{_quote(subject)}/versions?deleted={str(deleted).lower()}")
        latest = call(registry, "GET", f"/subjects/{_quote(subject)}/versions/{versions[-1]}?deleted=true") \
            if versions else {}
        try:
            level = call(registry, "GET", f"/config/{_quote(subject)}")["compatibilityLevel"]
        except RegistryError:
            level = default_level
        rows.append({"subject": subject, "versions": versions, "latest_version": latest.get("version"),
                     "id": latest.get("id"), "type": latest.get("schemaType", "AVRO"), "compatibility": level,
                     "references": len(latest.get("references") or [])})
    return rows


@click.group("schema")
def schema() -> None:
    """Schemas in the schema registry: list, show, check compatibility (docs/schema-registry.md)."""


_registry_option = click.option("--registry", default=DEFAULT_REGISTRY, show_default=True,
                                help="Schema registry URL (env STRATA_SCHEMA_REGISTRY).")


@schema.command("ls")
@_registry_option
@click.option("--prefix", default="", help="Only subjects starting with this.")
@click.option("--deleted", is_flag=True, help="Include soft-deleted subjects and versions.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls(registry: str, prefix: str, deleted: bool, as_json: bool) -> None:
    """List subjects: versions, latest id and type, compatibility level."""
    rows = subject_rows(registry, prefix, deleted)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Subjects in {registry}")
    for column in ("subject", "versions", "latest", "id", "type", "compatibility", "refs"):
        table.add_column(column, justify="right" if column in ("versions", "latest", "id", "refs") else "left")
    for row in rows:
        table.add_row(row["subject"], str(len(row["versions"])), str(row["latest_version"]), str(row["id"]),
                      row["type"], row["compatibility"], str(row["references"]))
    Console().print(table)
    if not rows:
        click.echo("no subjects")


@schema.command("show")
@_registry_option
@click.argument("subject")
@click.option("--version", default="latest", show_default=True, help="A version number or latest.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the registry's answer).")
def show(registry: str, subject: str, version: str, as_json: bool) -> None:
    """Show one version of SUBJECT: id, type, references and the schema."""
    found = call(registry, "GET", f"/subjects/{_quote(subject)}/versions/{urllib.parse.quote(version)}")
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    schema_type = found.get("schemaType", "AVRO")
    console = Console()
    console.print(f"[bold]{found['subject']}[/bold] version {found['version']}  id {found['id']}  {schema_type}")
    for ref in found.get("references") or []:
        console.print(f"  reference {ref['name']} -> {ref['subject']} version {ref['version']}")
    text = found["schema"]
    if schema_type in ("AVRO", "JSON"):
        try:
            text = json.dumps(json.loads(text), indent=2)
        except ValueError:
            pass
    console.print(Syntax(text, "json" if schema_type != "PROTOBUF" else "protobuf", word_wrap=True))


def _parse_reference(value: str) -> dict[str, Any]:
    name, sep, target = value.partition("=")
    subject, sep2, version = target.rpartition(":")
    if not sep or not sep2 or not name or not subject:
        raise click.BadParameter(f"expected NAME=SUBJECT:VERSION, got {value!r}", param_hint="--reference")
    try:
        return {"name": name, "subject": subject, "version": int(version)}
    except ValueError:
        raise click.BadParameter(f"version of {value!r} is not a number", param_hint="--reference") from None


@schema.command("check")
@_registry_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--subject", required=True, help="Subject whose compatibility rules the schema must pass.")
@click.option("--type", "schema_type", type=click.Choice(["AVRO", "JSON", "PROTOBUF"], case_sensitive=False),
              help="Schema type (default: from the file's suffix: .avsc AVRO, .json JSON, .proto PROTOBUF).")
@click.option("--reference", "references", multiple=True, metavar="NAME=SUBJECT:VERSION",
              help="A schema this one references. Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(registry: str, file: Path, subject: str, schema_type: str | None, references: tuple[str, ...],
          as_json: bool) -> None:
    """Test FILE against SUBJECT's versions under its compatibility level, registering nothing.

    Exit status 0: valid and compatible; 1: incompatible; 2: invalid schema or refused request."""
    schema_type = (schema_type or TYPES_BY_SUFFIX.get(file.suffix.lower(), "AVRO")).upper()
    body: dict[str, Any] = {"schema": file.read_text(), "schemaType": schema_type}
    if references:
        body["references"] = [_parse_reference(r) for r in references]
    result = call(registry, "POST", f"/compatibility/subjects/{_quote(subject)}/versions?verbose=true", body)
    compatible = bool(result.get("is_compatible"))
    try:
        level = call(registry, "GET", f"/config/{_quote(subject)}?defaultToGlobal=true")["compatibilityLevel"]
    except RegistryError:
        level = "?"
    if as_json:
        click.echo(json.dumps({"subject": subject, "file": str(file), "type": schema_type, "compatibility": level,
                               "is_compatible": compatible, "messages": result.get("messages") or []}, indent=2))
    elif compatible:
        click.echo(f"{file}: compatible with {subject} ({level})")
    else:
        click.echo(f"{file}: INCOMPATIBLE with {subject} ({level})")
        for message in result.get("messages") or []:
            click.echo(f"  {message}")
    if not compatible:
        raise SystemExit(1)
