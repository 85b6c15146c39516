"""Topic: the topic on its broker (created, adopted, configs enforced, drift reverted, deleted)."""

from __future__ import annotations

from typing import Any

import kopf

from .. import admin as kafka_admin
from .. import logic, topic_schema
from ..admin import (
    BrokerRejected,
    BrokerUnavailable,
)
from .common import (
    SKIP_CLEANUP,
    TOPIC,
    BrokerMissing,
    NamespaceNotAllowed,
    admin_for,
    broker_or_condition,
    deadline_passed,
    forget,
    generation,
    kube,
    mark_reconciled,
    object_lock,
    only_changes,
    resolve_broker,
    set_condition,
)
from .settings import SETTINGS


@kopf.index(*TOPIC)
async def topic_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(broker namespace, broker name, Kafka topic name) -> the Topic CRs naming it."""
    ns, broker = logic.broker_key(body)
    md = body["metadata"]
    return {(ns, broker, logic.managed_topic_name(body)): {
        "namespace": md["namespace"], "name": md["name"], "creationTimestamp": md.get("creationTimestamp"),
        "uid": md.get("uid"), "allowedConsumers": list(body["spec"].get("allowedConsumers") or []),
        "allowedProducers": list(body["spec"].get("allowedProducers") or [])}}


@kopf.on.resume(*TOPIC)
@kopf.on.create(*TOPIC)
@kopf.on.update(*TOPIC)
async def reconcile_topic(body: kopf.Body, patch: kopf.Patch, topic_index: kopf.Index,
                          broker_index: kopf.Index, **_: Any) -> None:
    async with object_lock(body):
        try:
            await _reconcile_topic(body, patch, topic_index, broker_index, timed=False)
        finally:
            only_changes(patch, body)
            mark_reconciled(body)


# Ready reasons a resync leaves alone: only a change of the Topic's spec (an update) can clear them.
SPEC_BOUND = frozenset({"TopicNameChanged", "InvalidSpec", "ReservedTopic"})


def topic_differs(body: dict[str, Any], topic_index: kopf.Index, broker: dict[str, Any],
                  snap: kafka_admin.Snapshot) -> bool:
    """Whether this Topic needs a reconcile, judged from the broker's snapshot and the indexes alone (no
    request): its topic missing, re-created, or with a partition count or a named config that differs
    from the spec; its conflict state or its namespace's permission changed; or its last reconcile failed
    for a reason a retry may fix (the broker unreachable, a rejection, a schema not registered)."""
    status = body.get("status") or {}
    ready = logic.condition(status.get("conditions"), "Ready")
    if ready is None or not status.get("topicName"):
        return True
    reason = ready.get("reason")
    if reason in SPEC_BOUND:
        return False
    md = body["metadata"]
    winner = _winner(body, topic_index)
    if (winner["namespace"], winner["name"]) != (md["namespace"], md["name"]):
        return reason != "ResourceConflict" or f"Topic {winner['namespace']}/{winner['name']} " not in ready["message"]
    if reason == "ResourceConflict" or not logic.namespace_allowed(broker, md["namespace"]):
        return reason != "NamespaceNotAllowed"
    name = logic.managed_topic_name(body)
    if logic.reserved_topic(name):
        return False
    state = snap.topics.get(name)
    if state is None or state.topic_id != status.get("topicId"):
        return True
    try:
        plan = logic.plan_topic(body["spec"], state.partitions, state.dynamic_configs, state.all_configs,
                                list(status.get("managedConfigs") or []))
    except logic.InvalidSpec:
        return True
    if plan.changes or state.partitions != status.get("partitions"):
        return True
    if plan.cannot_shrink:
        return reason != "NotSupported"
    return ready.get("status") != "True"


def _winner(body: kopf.Body, topic_index: kopf.Index) -> dict[str, Any]:
    ns, broker = logic.broker_key(body)
    claimants = list(topic_index.get((ns, broker, logic.managed_topic_name(body)), []))
    md = body["metadata"]
    me = {"namespace": md["namespace"], "name": md["name"], "creationTimestamp": md.get("creationTimestamp")}
    if not any((c["namespace"], c["name"]) == (me["namespace"], me["name"]) for c in claimants):
        claimants.append(me)
    return logic.conflict_winner(claimants)


async def _reconcile_topic(body: kopf.Body, patch: kopf.Patch, topic_index: kopf.Index, brokers: kopf.Index,
                           timed: bool) -> None:
    conditions = list(body.get("status", {}).get("conditions") or [])
    md = body["metadata"]
    name = logic.managed_topic_name(body)
    patch.status["topicName"] = name
    if logic.topic_name(body) != name:
        msg = (f"spec names topic {logic.topic_name(body)!r} but this resource manages {name!r} "
               "(status.topicName): topic names are immutable, so neither topic is touched. Set topicName "
               f"back to {name!r}, or create a new Topic for the other name")
        set_condition(patch, body, conditions, "Ready", False, "TopicNameChanged", msg)
        return
    winner = _winner(body, topic_index)
    if (winner["namespace"], winner["name"]) != (md["namespace"], md["name"]):
        msg = (f"topic {name!r} is already managed by Topic {winner['namespace']}/{winner['name']} (older); "
               "this resource is ignored until that one is deleted")
        conditions = set_condition(patch, body, conditions, "ResourceConflict", True, "ResourceConflict", msg)
        set_condition(patch, body, conditions, "Ready", False, "ResourceConflict", msg)
        return
    conditions = logic.drop_condition(conditions, "ResourceConflict")
    try:
        logic.desired_topic_configs(body["spec"])
    except logic.InvalidSpec as exc:
        set_condition(patch, body, conditions, "Ready", False, "InvalidSpec", str(exc))
        raise kopf.PermanentError(str(exc)) from exc
    if logic.reserved_topic(name):
        set_condition(patch, body, conditions, "Ready", False, "ReservedTopic",
             f"{name!r} is an internal or reserved topic (__*, _schemas): the broker manages it, no Topic does")
        return
    resolved = await broker_or_condition(body, patch, conditions, brokers)
    if resolved is None:
        return
    broker, bootstrap = resolved
    try:
        admin = admin_for(broker, bootstrap)
        status = body.get("status") or {}

        def plan_for(state: kafka_admin.TopicState | None) -> logic.TopicPlan:
            return logic.plan_topic(body["spec"], state.partitions if state else None,
                                    state.dynamic_configs if state else None,
                                    state.all_configs if state else None, list(status.get("managedConfigs") or []))

        # Drift detection (timed): the broker's shared snapshot, no request of this topic's own unless
        # the snapshot shows a difference, which a fresh read then confirms before anything is changed.
        state = (await admin.snapshot(SETTINGS.snapshot_age)).topics.get(name) if timed else None
        if not timed or state is None or state.topic_id != status.get("topicId") or plan_for(state).changes:
            state = await admin.describe_topic(name)
            admin.remember_topic(name, state)
        plan = plan_for(state)
        # An existing topic this resource has not managed yet (never seen, or re-created behind the
        # operator's back under a new id): adoption, reported once with what it found.
        adopted = state is not None and status.get("topicId") != state.topic_id
        found = {k: state.dynamic_configs[k] for k in logic.unmanaged_configs(state.dynamic_configs, plan.managed)} \
            if state is not None else {}
        if plan.create:
            await admin.create_topic(name, int(body["spec"].get("partitions", 1)), plan.set_configs)
        else:
            if plan.grow_to:
                await admin.grow_partitions(name, plan.grow_to)
            if plan.set_configs or plan.delete_configs:
                await admin.alter_configs(name, plan.set_configs, plan.delete_configs)
        if plan.changes:
            state = await admin.describe_topic(name)
            admin.remember_topic(name, state)
    except BrokerUnavailable as exc:
        # Not retried here: the broker's resync (resync.py) retries every Topic with this condition once
        # the broker answers again, so a broker that is down costs one failing session, not a retry per Topic.
        set_condition(patch, body, conditions, "Ready", False, "BrokerUnavailable", f"{bootstrap}: {exc}")
        return
    except BrokerRejected as exc:
        set_condition(patch, body, conditions, "Ready", False, "BrokerRejected", str(exc))
        raise kopf.TemporaryError(str(exc), delay=SETTINGS.retry_delay * 4) from exc
    patch.status["managedConfigs"] = plan.managed
    if adopted:
        changed = "; ".join(plan.differences) or "nothing"
        kept = ", ".join(f"{k}={v}" for k, v in sorted(found.items())) or "none"
        reason = "AdoptedWithChanges" if plan.differences else "AdoptedAsFound"
        message = (f"existing topic {name!r} adopted; changed to match the spec: {changed}; "
                   f"left as found (not named by the spec): {kept}")
        conditions = logic.set_condition(conditions, "Adopted", True, reason, message, generation(body))
        patch.status["conditions"] = conditions
        kopf.event(body, type="Warning" if plan.differences else "Normal", reason=reason, message=message)
    elif timed and not plan.create and plan.changes:
        drift = sorted(plan.set_configs) + sorted(plan.delete_configs) + (["partitions"] if plan.grow_to else [])
        kopf.event(body, type="Warning", reason="DriftReverted",
                   message=f"topic {name!r} was changed outside the operator; reverted: {', '.join(drift)}")
    elif plan.create:
        kopf.event(body, type="Normal", reason="Created", message=f"topic {name!r} created on {bootstrap}")
    if state is not None:
        patch.status["topicId"] = state.topic_id
        patch.status["partitions"] = state.partitions
    patch.status["lastSyncTime"] = logic.now()
    if body["spec"].get("schema"):  # registered in the broker's schema registry (topic_schema.py)
        outcome = await topic_schema.register(body, broker, name, kube())
        patch.status.update(outcome.status)
        if not outcome.ok:
            set_condition(patch, body, conditions, "Ready", False, outcome.reason, outcome.message)
            if outcome.retry:
                raise kopf.TemporaryError(outcome.message, delay=SETTINGS.retry_delay)
            return
    if plan.cannot_shrink:
        have, asked = plan.cannot_shrink
        set_condition(patch, body, conditions, "Ready", False, "NotSupported",
             f"partitions cannot decrease ({have} -> {asked}); the topic keeps {have}. "
             f"Set spec.partitions back to {have} or more")
        return
    set_condition(patch, body, conditions, "Ready", True, "Reconciled", f"topic {name!r} matches the spec")


@kopf.on.delete(*TOPIC)
async def delete_topic(body: kopf.Body, topic_index: kopf.Index, broker_index: kopf.Index, **_: Any) -> None:
    md = body["metadata"]
    name = logic.managed_topic_name(body)
    forget(body)
    if (md.get("annotations") or {}).get(SKIP_CLEANUP) == "true":
        kopf.warn(body, reason="CleanupSkipped", message=f"{SKIP_CLEANUP}=true: topic {name!r} left as is")
        return
    winner = _winner(body, topic_index)
    if (winner["namespace"], winner["name"]) != (md["namespace"], md["name"]):
        return  # a conflicting duplicate never managed the topic
    if logic.reserved_topic(name):
        return  # never managed, never deleted
    if body["spec"].get("deletionPolicy", "Retain") != "Delete":
        kopf.info(body, reason="Retained", message=f"deletionPolicy Retain: topic {name!r} and its data are kept")
        return
    try:
        broker, bootstrap = await resolve_broker(body, brokers=broker_index)
        admin = admin_for(broker, bootstrap)
        deleted = await admin.delete_topic(name)
        admin.remember_topic(name, None)
    except BrokerMissing:
        kopf.warn(body, reason="BrokerNotFound", message=f"EventBroker gone; topic {name!r} not deleted")
        return
    except NamespaceNotAllowed as exc:
        kopf.warn(body, reason="NamespaceNotAllowed", message=f"{exc}; topic {name!r} not deleted")
        return
    except (BrokerUnavailable, BrokerRejected, kopf.TemporaryError) as exc:
        if deadline_passed(body):
            kopf.warn(body, reason="CleanupAbandoned",
                      message=f"could not delete topic {name!r} for {SETTINGS.delete_timeout:.0f}s ({exc}); "
                              "finalizer released")
            return
        kopf.warn(body, reason="DeleteFailed", message=f"topic {name!r}: {exc}; retrying")
        raise kopf.TemporaryError(str(exc), delay=SETTINGS.retry_delay) from exc
    kopf.info(body, reason="Deleted", message=f"topic {name!r} {'deleted' if deleted else 'was already gone'}")
