"""`strata`: the command-line entry point of the control plane.

Subcommands live in their own modules and are attached here.
"""

from __future__ import annotations

import click

from .groups_cli import groups


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Strata: Kafka-compatible event streaming on Kubernetes."""


main.add_command(groups)


if __name__ == "__main__":
    main()
