"""`strata`: the command-line entry point of the control plane.

Subcommands live in their own modules and are attached here.
"""

from __future__ import annotations

import click

from .cluster_cli import cluster
from .cost_cli import cost
from .dev_stack import dev
from .groups_cli import groups
from .local_stack import local
from .operator_cli import operator
from .replay_cli import replay
from .schema_cli import schema
from .table_cli import table
from .tier_cli import tier
from .topology_cli import topology


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Strata: Kafka-compatible event streaming on Kubernetes."""


main.add_command(cluster)
main.add_command(cost)
main.add_command(dev)
main.add_command(groups)
main.add_command(local)
main.add_command(operator)
main.add_command(replay)
main.add_command(schema)
main.add_command(table)
main.add_command(tier)
main.add_command(topology)


if __name__ == "__main__":
    main()
