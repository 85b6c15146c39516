"""`strata operator pre-delete`: the Helm chart's pre-delete hook, so `helm uninstall` never leaves
an EventBroker stuck in Terminating.

kopf puts its finalizer (`strata.dev/finalizer`) on every resource it runs a timer for, EventBrokers
included. `helm uninstall` deletes the chart's EventBroker and the operator at the same time; if the
operator goes first, nobody releases that finalizer and the EventBroker (with its StatefulSet and
brokers, which it owns) stays. The hook runs before Helm deletes anything: it deletes the EventBroker
while the operator still runs and waits until it is gone. If it is still there after `timeout`
seconds (the operator is down or stuck), it removes the finalizers itself: the EventBroker's
finalizer protects no data (its PVCs are retained by policy), it only lets kopf stop its timers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .crds import API_VERSION


async def delete_eventbroker(client: Any, namespace: str, name: str, timeout: float,
                             poll: float = 1.0) -> str:
    """Delete one EventBroker and wait for it to be gone. Returns what happened: `absent` (nothing to
    delete), `deleted` (the operator released it), `released` (its finalizers were removed here)."""
    if await client.get(API_VERSION, "EventBroker", namespace, name) is None:
        return "absent"
    await client.delete(API_VERSION, "EventBroker", namespace, name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await client.get(API_VERSION, "EventBroker", namespace, name) is None:
            return "deleted"
        await asyncio.sleep(poll)
    from .kube import path

    await client.request("PATCH", path(API_VERSION, "EventBroker", namespace, name),
                         {"metadata": {"finalizers": None}}, content_type="application/merge-patch+json")
    while await client.get(API_VERSION, "EventBroker", namespace, name) is not None:
        await asyncio.sleep(poll)
    return "released"
