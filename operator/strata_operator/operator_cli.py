"""`strata operator`: run the operator (kopf), or render the CRDs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click


@click.group("operator", invoke_without_command=True)
@click.option("-n", "--namespace", "namespaces", multiple=True, help="Watch only these namespaces (repeatable); "
              "default: all namespaces.")
@click.option("--liveness", default="http://0.0.0.0:8080/healthz", show_default=True,
              help="Liveness/readiness endpoint (kopf's); empty to disable.")
@click.option("--standalone/--peering", default=True, show_default=True,
              help="Standalone: no kopf peering objects (one replica, Recreate strategy).")
@click.option("--leader-election/--no-leader-election", default=False, show_default=True,
              help="Reconcile only while holding a coordination.k8s.io Lease (run several replicas; the "
              "standbys wait). Timings: STRATA_OPERATOR_LEASE_DURATION/_RENEW/_RENEW_DEADLINE/_RETRY.")
@click.option("--lease-name", default="strata-operator", show_default=True, help="The Lease's name.")
@click.option("--lease-namespace", default=None,
              help="The Lease's namespace [default: STRATA_OPERATOR_NAMESPACE, else the pod's, else default].")
@click.option("-v", "--verbose", is_flag=True)
@click.pass_context
def operator(ctx: click.Context, namespaces: tuple[str, ...], liveness: str, standalone: bool,
             leader_election: bool, lease_name: str, lease_namespace: str | None, verbose: bool) -> None:
    """Run the Strata operator: EventBroker, Topic, Microservice, CostReport."""
    if ctx.invoked_subcommand is not None:
        return
    import logging

    from . import lazyclient, memory

    memory.limit_arenas()  # before any thread starts (memory.py)
    lazyclient.install()  # before kopf or kube.py import the Kubernetes client (lazyclient.py)
    import kopf

    from . import handlers  # noqa: F401 - registers the handlers
    from .cluster import handlers as cluster_handlers  # noqa: F401 - the placement timer

    memory.freeze()  # what the imports made stays: out of the garbage collector's passes

    kopf.configure(verbose=verbose)
    logging.getLogger("kafka").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not leader_election:
        kopf.run(clusterwide=not namespaces, namespaces=list(namespaces), standalone=standalone,
                 liveness_endpoint=liveness or None)
        return
    import asyncio

    from . import leader

    logging.getLogger("strata.leader").setLevel(logging.INFO)

    def run_kopf() -> Any:
        return kopf.operator(clusterwide=not namespaces, namespaces=list(namespaces), standalone=standalone,
                             liveness_endpoint=liveness or None)

    asyncio.run(leader.run_elected(lease_namespace or leader.default_namespace(), lease_name, liveness or None,
                                   run_kopf))


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
