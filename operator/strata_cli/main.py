"""`strata`: the command-line tools (and the `strata operator` command that runs the operator).

Each subcommand lives in its own module and is imported only when it runs (or when `--help`
lists them), so `strata replay` does not pay for importing the operator, the cost report or
the Kubernetes client.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

# name -> "module:attribute" of the click command
COMMANDS = {
    "cluster": "strata_cli.cluster:cluster",
    "cost": "strata_cli.cost:cost",
    "dev": "strata_cli.dev:dev",
    "groups": "strata_cli.groups:groups",
    "local": "strata_cli.local:local",
    "operator": "strata_operator.operator_cli:operator",
    "replay": "strata_cli.replay:replay",
    "schema": "strata_cli.schema:schema",
    "table": "strata_cli.table:table",
    "tier": "strata_cli.tier:tier",
    "topology": "strata_cli.topology:topology",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command: Any = getattr(importlib.import_module(module), attribute)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Strata: Kafka-compatible event streaming on Kubernetes."""


if __name__ == "__main__":
    main()
