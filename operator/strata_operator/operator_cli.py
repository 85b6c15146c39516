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


@operator.command("pre-delete")
@click.option("-n", "--namespace", required=True, help="Namespace of the EventBroker.")
@click.option("--eventbroker", "name", required=True, help="Name of the EventBroker.")
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Seconds to wait for the operator to release it before removing its finalizers here.")
def pre_delete(namespace: str, name: str, timeout: float) -> None:
    """Delete an EventBroker and wait until it is gone (the Helm chart's pre-delete hook)."""
    import asyncio

    from .kube import as_user
    from .uninstall import delete_eventbroker

    outcome = asyncio.run(as_user(lambda client: delete_eventbroker(client, namespace, name, timeout)))
    click.echo({"absent": f"EventBroker {namespace}/{name}: not found, nothing to do",
                "deleted": f"EventBroker {namespace}/{name}: deleted (the operator released it)",
                "released": f"EventBroker {namespace}/{name}: deleted after {timeout:.0f}s by removing its "
                            "finalizers (the operator did not release it)"}[outcome])
