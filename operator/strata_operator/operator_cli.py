"""`strata operator`: run the operator (kopf), or render the CRDs."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.group("operator", invoke_without_command=True)
@click.option("-n", "--namespace", "namespaces", multiple=True, help="Watch only these namespaces (repeatable); "
              "default: all namespaces.")
@click.option("--liveness", default="http://0.0.0.0:8080/healthz", show_default=True,
              help="Liveness/readiness endpoint (kopf's); empty to disable.")
@click.option("--standalone/--peering", default=True, show_default=True,
              help="Standalone: no kopf peering objects (one replica, Recreate strategy).")
@click.option("-v", "--verbose", is_flag=True)
@click.pass_context
def operator(ctx: click.Context, namespaces: tuple[str, ...], liveness: str, standalone: bool,
             verbose: bool) -> None:
    """Run the Strata operator: EventBroker, Topic, Microservice, CostReport."""
    if ctx.invoked_subcommand is not None:
        return
    import logging

    import kopf

    from . import handlers  # noqa: F401 - registers the handlers
    from .cluster import handlers as cluster_handlers  # noqa: F401 - the placement timer

    kopf.configure(verbose=verbose)
    logging.getLogger("kafka").setLevel(logging.DEBUG if verbose else logging.WARNING)
    kopf.run(clusterwide=not namespaces, namespaces=list(namespaces), standalone=standalone,
             liveness_endpoint=liveness or None)


@operator.command("render-crds")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--check", is_flag=True, help="Exit 1 if DIRECTORY differs from what would be rendered.")
def render_crds(directory: Path | None, check: bool) -> None:
    """Write crds/*.yaml from strata_operator/crds.py (the one source)."""
    from . import crds

    argv = ([str(directory)] if directory else []) + (["--check"] if check else [])
    sys.exit(crds.main(argv))
