"""`strata groups list|describe`: consumer groups and their lag, over the Kafka admin API.

Works against any Kafka-compatible broker (it uses kafka-python's admin client only).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import click
from rich.console import Console
from rich.table import Table

DEFAULT_BOOTSTRAP = os.environ.get("STRATA_BOOTSTRAP", "localhost:9092")


@dataclass
class PartitionLag:
    topic: str
    partition: int
    committed_offset: int | None
    log_end_offset: int | None
    lag: int | None
    member_id: str | None = None
    client_id: str | None = None
    host: str | None = None


@dataclass
class GroupDescription:
    group_id: str
    state: str
    protocol_type: str
    protocol: str
    members: list[dict[str, Any]] = field(default_factory=list)
    partitions: list[PartitionLag] = field(default_factory=list)

    @property
    def total_lag(self) -> int:
        return sum(p.lag for p in self.partitions if p.lag is not None)


def _admin(bootstrap: str, timeout_ms: int) -> Any:
    from kafka import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="strata-cli",
                            request_timeout_ms=timeout_ms)


def list_groups(bootstrap: str, timeout_ms: int = 10000) -> list[dict[str, Any]]:
    admin = _admin(bootstrap, timeout_ms)
    try:
        groups = admin.list_groups()
    finally:
        admin.close()
    return sorted(({"group_id": g["group_id"], "protocol_type": g.get("protocol_type", ""),
                    "state": g.get("group_state", "")} for g in groups), key=lambda g: g["group_id"])


def describe_group(bootstrap: str, group_id: str, timeout_ms: int = 10000) -> GroupDescription:
    from kafka import TopicPartition
    from kafka.admin import OffsetSpec

    admin = _admin(bootstrap, timeout_ms)
    try:
        described = admin.describe_groups([group_id])[group_id]
        if described.get("error"):
            raise click.ClickException(f"cannot describe group {group_id}: {described['error']}")
        committed = admin.list_group_offsets({group_id: None}).get(group_id, {})
        owners: dict[tuple[str, int], dict[str, Any]] = {}
        members = []
        for member in described.get("members", []):
            assignment = member.get("member_assignment") or {}
            parts: list[str] = []
            if isinstance(assignment, dict):
                for tp in assignment.get("assigned_partitions", []):
                    for p in tp["partitions"]:
                        owners[(tp["topic"], p)] = member
                        parts.append(f"{tp['topic']}-{p}")
            members.append({"member_id": member["member_id"], "group_instance_id": member.get("group_instance_id"),
                            "client_id": member.get("client_id"), "host": member.get("client_host"),
                            "partitions": sorted(parts)})
        keys = sorted(set((tp.topic, tp.partition) for tp in committed) | set(owners))
        end_offsets: dict[tuple[str, int], int] = {}
        if keys:
            found = admin.list_partition_offsets({TopicPartition(t, p): OffsetSpec.LATEST for t, p in keys})
            end_offsets = {(tp.topic, tp.partition): o.offset for tp, o in found.items()}
    finally:
        admin.close()
    by_tp = {(tp.topic, tp.partition): meta.offset for tp, meta in committed.items()}
    rows = []
    for key in keys:
        offset = by_tp.get(key)
        if offset is not None and offset < 0:
            offset = None
        end = end_offsets.get(key)
        lag = max(0, end - offset) if (end is not None and offset is not None) else None
        owner = owners.get(key)
        rows.append(PartitionLag(key[0], key[1], offset, end, lag,
                                 member_id=owner["member_id"] if owner else None,
                                 client_id=owner.get("client_id") if owner else None,
                                 host=owner.get("client_host") if owner else None))
    return GroupDescription(group_id=group_id, state=described.get("group_state", ""),
                            protocol_type=described.get("protocol_type", ""),
                            protocol=described.get("protocol_data", ""), members=members, partitions=rows)


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


@click.group("groups")
def groups() -> None:
    """Consumer groups: members, committed offsets and lag."""


_bootstrap_option = click.option("--bootstrap", "-b", default=DEFAULT_BOOTSTRAP, show_default=True,
                                 metavar="HOST:PORT", help="Broker to ask (env STRATA_BOOTSTRAP).")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
_timeout_option = click.option("--timeout-ms", default=10000, show_default=True, help="Request timeout.")


@groups.command("list")
@_bootstrap_option
@_json_option
@_timeout_option
def list_command(bootstrap: str, as_json: bool, timeout_ms: int) -> None:
    """List consumer groups and their state."""
    found = list_groups(bootstrap, timeout_ms)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    table = Table(title=f"Consumer groups on {bootstrap}")
    table.add_column("GROUP")
    table.add_column("STATE")
    table.add_column("PROTOCOL TYPE")
    for group in found:
        table.add_row(group["group_id"], group["state"], group["protocol_type"] or "-")
    Console().print(table)


@groups.command("describe")
@click.argument("group_id")
@_bootstrap_option
@_json_option
@_timeout_option
def describe_command(group_id: str, bootstrap: str, as_json: bool, timeout_ms: int) -> None:
    """Per-partition committed offset, log end offset and lag of GROUP_ID."""
    desc = describe_group(bootstrap, group_id, timeout_ms)
    if as_json:
        data = asdict(desc)
        data["total_lag"] = desc.total_lag
        click.echo(json.dumps(data, indent=2))
        return
    console = Console()
    console.print(f"[bold]{desc.group_id}[/bold]  state={desc.state}  protocol={desc.protocol or '-'}  "
                  f"members={len(desc.members)}  total lag={desc.total_lag}")
    table = Table()
    for name in ("TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "CONSUMER-ID", "HOST", "CLIENT-ID"):
        table.add_column(name, justify="right" if name in ("PARTITION", "COMMITTED", "LOG-END", "LAG") else "left")
    for row in desc.partitions:
        table.add_row(row.topic, str(row.partition), _dash(row.committed_offset), _dash(row.log_end_offset),
                      _dash(row.lag), _dash(row.member_id), _dash(row.host), _dash(row.client_id))
    console.print(table)
