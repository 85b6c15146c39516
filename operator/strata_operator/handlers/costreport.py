"""CostReport: the report computed on create/update and whenever it is due (logic: costreports.py)."""

from __future__ import annotations

import datetime
from typing import Any

import kopf

from .. import costreports, logic
from ..crds import GROUP, VERSION
from ..kube import KubeError
from .common import (
    COSTREPORT,
    broker_or_condition,
    kube,
    run,
    set_condition,
)
from .settings import SETTINGS

# The report is computed on create/update, then whenever it is due (spec.interval, default
# costreports.DEFAULT_INTERVAL), checked every costreports.TICK seconds. Logic: costreports.py.


@kopf.on.create(*COSTREPORT)
@kopf.on.update(*COSTREPORT)
async def reconcile_costreport(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    await _reconcile_costreport(body, patch, force=True)


@kopf.on.resume(*COSTREPORT)
async def resume_costreport(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    await _reconcile_costreport(body, patch, force=False)


@kopf.timer(*COSTREPORT, interval=costreports.TICK, initial_delay=costreports.TICK)
async def refresh_costreport(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    if not body.get("metadata", {}).get("deletionTimestamp"):
        await _reconcile_costreport(body, patch, force=False)


async def _reconcile_costreport(body: kopf.Body, patch: kopf.Patch, force: bool) -> None:
    status = dict(body.get("status") or {})
    conditions = list(status.get("conditions") or [])
    spec = dict(body["spec"])
    if not force and not costreports.due(status, spec, datetime.datetime.now(tz=datetime.UTC)):
        return
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    resolved = await broker_or_condition(body, patch, conditions)
    if resolved is None:
        return
    broker, _ = resolved
    today = costreports.today_utc()
    try:
        costreports.interval_seconds(spec)
        periods = costreports.periods_to_compute(spec.get("period", "monthly"), today, status.get("period"))
        ref = costreports.price_ref(spec)
        configmap = await kube().get("v1", "ConfigMap", ns, ref[0]) if ref else None
        model = costreports.price_model(spec, ns, configmap)
        source = costreports.usage_source(body, broker)
        secret = await kube().get("v1", "Secret", source.secret.namespace, source.secret.name) \
            if source.secret else None
        creds = costreports.credentials(source.secret, secret)
        scope = {ns, logic.broker_key(body)[0]}
        owners = costreports.ownership_of(logic.broker_key(body), await _list_everywhere("Topic", scope),
                                          await _list_everywhere("Microservice", scope))
        for period in periods:  # a period that ended since the last run gets its final report first
            records = await costreports.read_usage(source, creds, period.start, period.through(today))
            result = await run(costreports.compute, records, model, owners, period, today, source, ns, name,
                               logic.now())
            await costreports.write_objects(source, creds, result.objects)
    except costreports.Problem as exc:
        set_condition(patch, body, conditions, "Ready", False, exc.reason, exc.message)
        return
    except (KubeError, OSError) as exc:
        set_condition(patch, body, conditions, "Ready", False, "KubernetesUnavailable", str(exc))
        raise kopf.TemporaryError(str(exc), delay=SETTINGS.retry_delay) from exc
    patch.status.update(result.status)
    set_condition(patch, body, conditions, "Ready", True, result.reason, result.message(source))


async def _list_everywhere(kind: str, fallback: set[str]) -> list[dict[str, Any]]:
    """All namespaces' resources of a kind; with namespace-scoped RBAC (403), those of `fallback`."""
    try:
        return await kube().list(f"{GROUP}/{VERSION}", kind)
    except KubeError as exc:
        if exc.status != 403:
            raise
    return [item for namespace in sorted(fallback) for item in await kube().list(f"{GROUP}/{VERSION}", kind, namespace)]
