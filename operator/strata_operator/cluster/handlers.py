"""kopf glue: one controller tick per clustered EventBroker, publishing the placement ConfigMap.

A clustered EventBroker (`spec.replicas > 1`, not external; see kube_objects) gets a timer that
runs one `Controller.tick()` every STRATA_OPERATOR_PLACEMENT_INTERVAL seconds (default 2; it must
stay well under the grace period / 2, or the controller counts itself blind and resets liveness).
The controller (and so its liveness memory) lives as long as the operator process, one per
EventBroker uid. Membership is the StatefulSet's ordinals 0..replicas-1, so scaling the
EventBroker out rebalances onto the new brokers once they are live, and scaling in moves the
partitions of the removed ordinals. The annotation `strata.dev/rebalance` (any value; set by
`strata cluster rebalance -n NS --eventbroker NAME`) asks for a rebalance and is removed once done.

The grace period is STRATA_OPERATOR_PLACEMENT_GRACE_MS (default 15000) on top of the brokers'
lease (cluster.lease.ms, 9000 by default). Failover time in Kubernetes is bounded by lease + grace
+ one tick + the kubelet's refresh of mounted ConfigMaps, which happens with a delay of up to
about a minute (the kubelet sync period plus its ConfigMap cache TTL): that last term dominates.

S3 is read with the EventBroker's tieredStorage settings and credentialsSecret (else the
operator's own identity), the same way the cost report reads usage.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import kopf

from .. import costreports, logic, resources
from ..handlers import common as base
from ..handlers.settings import SETTINGS
from . import kube_objects
from .controller import BucketReader, Controller

PLACEMENT_INTERVAL = float(os.environ.get("STRATA_OPERATOR_PLACEMENT_INTERVAL", "2"))
GRACE_MS = int(os.environ.get("STRATA_OPERATOR_PLACEMENT_GRACE_MS", "15000"))
REBALANCE_ANNOTATION = "strata.dev/rebalance"

_controllers: dict[str, tuple[tuple[Any, ...], Controller]] = {}  # EventBroker uid -> (S3 settings, controller)


class ConfigMapSink:
    """The placement as the ConfigMap `<broker>-placement` (key placement.json)."""

    def __init__(self, broker: dict[str, Any]) -> None:
        self.broker = broker

    async def load(self) -> Any:
        name = kube_objects.placement_configmap_name(self.broker["metadata"]["name"])
        found = await base.kube().get("v1", "ConfigMap", self.broker["metadata"]["namespace"], name)
        return kube_objects.placement_from_configmap(found)

    async def publish(self, placement: Any) -> None:
        await base.kube().apply(kube_objects.placement_configmap(self.broker, placement))


async def _controller_for(body: kopf.Body) -> Controller:
    broker = dict(body)
    tiered = body["spec"]["tieredStorage"]
    props = resources.broker_properties(broker)
    secret_ref = tiered.get("credentialsSecret")
    secret = None
    if secret_ref:
        secret = await base.kube().get("v1", "Secret", body["metadata"]["namespace"], secret_ref["name"])
    creds = costreports.credentials(costreports._secret_ref(secret_ref, body["metadata"]["namespace"]), secret)
    settings = (tiered["bucket"], tiered.get("endpoint"), tiered.get("region", "us-east-1"),
                props.get("tiered.s3.prefix", ""), props["cluster.id"], tuple(sorted(creds.items())))
    uid = body["metadata"]["uid"]
    known = _controllers.get(uid)
    if known is not None and known[0] == settings:
        known[1].sink = ConfigMapSink(broker)
        return known[1]
    if known is not None:
        await known[1].reader.close()
    reader = BucketReader(settings[0], settings[1], settings[2], creds)
    controller = Controller(reader, ConfigMapSink(broker), prefix=settings[3], cluster=settings[4], grace_ms=GRACE_MS)
    _controllers[uid] = (settings, controller)
    return controller


def _clustered(body: kopf.Body, **_: Any) -> bool:
    return kube_objects.clustered(dict(body))


# Only for clustered brokers: a single broker needs no placement, and a timer every 2 s on every
# EventBroker would only add work to the operator.
@kopf.timer(*base.BROKER, interval=PLACEMENT_INTERVAL, initial_delay=PLACEMENT_INTERVAL, when=_clustered)
async def place_partitions(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    md = body["metadata"]
    if md.get("deletionTimestamp") or not kube_objects.clustered(dict(body)):
        known = _controllers.pop(md.get("uid", ""), None)
        if known is not None:
            await known[1].reader.close()
        return
    if not body["spec"].get("tieredStorage"):
        message = ("a broker cluster (replicas > 1) needs spec.tieredStorage: partitions move through the "
                   "bucket, and brokers hold their leases there")
        _placement_condition(body, patch, False, "NoTieredStorage", message)
        raise kopf.TemporaryError(message, delay=60)
    annotations = md.get("annotations") or {}
    rebalance = REBALANCE_ANNOTATION in annotations
    try:
        controller = await _controller_for(body)
        controller.set_members(kube_objects.members(dict(body)))
        result = await controller.tick(rebalance=rebalance)
    except costreports.Problem as exc:
        _placement_condition(body, patch, False, exc.reason, exc.message)
        raise kopf.TemporaryError(exc.message, delay=SETTINGS.retry_delay) from exc
    except Exception as exc:  # S3 errors come in many types
        _placement_condition(body, patch, False, "PlacementFailed", f"{type(exc).__name__}: {exc}")
        raise kopf.TemporaryError(f"placement: {exc}", delay=SETTINGS.retry_delay) from exc
    if rebalance:
        patch.metadata.annotations[REBALANCE_ANNOTATION] = None
    decision = result.decision
    brokers = [b.id for b in decision.placement.brokers]
    _placement_condition(body, patch, True, "Placed",
                         f"placement v{decision.placement.version} published for brokers {brokers}")
    if decision.changed:
        moves = ", ".join(str(m) for m in decision.moves[:10]) + (" ..." if len(decision.moves) > 10 else "")
        kopf.info(body, reason="PlacementChanged",
                  message=f"placement v{decision.placement.version}: brokers "
                          f"{[b.id for b in decision.placement.brokers]}, {len(decision.moves)} move(s)"
                          + (f": {moves}" if moves else ""))


def _placement_condition(body: kopf.Body, patch: kopf.Patch, ok: bool, reason: str, message: str) -> None:
    """The EventBroker's `Placement` condition (placement errors belong on the resource, not only in
    the operator's log). Patched only when it changes: the timer ticks every couple of seconds."""
    conditions = list((body.get("status") or {}).get("conditions") or [])
    old = logic.condition(conditions, "Placement")
    status = "True" if ok else "False"
    if old and (old.get("status"), old.get("reason"), old.get("message")) == (status, reason, message):
        return
    base.set_condition(patch, body, conditions, "Placement", ok, reason, message)


def rebalance_patch() -> dict[str, Any]:
    """The merge patch `strata cluster rebalance` sends to the EventBroker."""
    now = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"metadata": {"annotations": {REBALANCE_ANNOTATION: now}}}
