"""kopf handlers: thin glue between Kubernetes events and the pure logic in `logic`/`resources`.

Create, update, resume and the periodic timer of each kind share one idempotent reconcile
function. Errors become conditions and Events and are retried with backoff (kopf.TemporaryError),
never a crash loop. Settings (environment variables, read at import):

  STRATA_OPERATOR_RECONCILE_INTERVAL  seconds between timed reconciles (drift repair), default 60;
                                      each resource's first tick comes at a random point of the
                                      first interval, so resources created together do not tick together
  STRATA_OPERATOR_RETRY_DELAY         seconds before retrying a failed reconcile, default 15
  STRATA_OPERATOR_FULL_RESYNC         seconds between a Microservice's full timed reconciles (its
                                      Secret read and its objects applied again), default 10 intervals
  STRATA_OPERATOR_DELETE_TIMEOUT      seconds a deletion keeps retrying an unreachable broker
                                      before it releases the finalizer anyway, default 600
  STRATA_OPERATOR_KAFKA_*             the operator's own Kafka credentials (admin.py)
  STRATA_OPERATOR_IMAGE_PULL_SECRETS  comma-separated pull secrets for every pod it creates
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import os
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any

import kopf

from . import admin as kafka_admin
from . import costreports, logic, resources, scram, topic_schema
from .admin import (
    API_ALTER_USER_SCRAM_CREDENTIALS,
    API_CREATE_ACLS,
    SECURITY_DISABLED,
    BrokerRejected,
    BrokerUnavailable,
    NoCredentials,
)
from .crds import GROUP, VERSION
from .kube import Kube, KubeError

INTERVAL = float(os.environ.get("STRATA_OPERATOR_RECONCILE_INTERVAL", "60"))
RETRY_DELAY = float(os.environ.get("STRATA_OPERATOR_RETRY_DELAY", "15"))
FULL_RESYNC = float(os.environ.get("STRATA_OPERATOR_FULL_RESYNC", str(INTERVAL * 10)))
# A timed reconcile compares with a snapshot of the broker at most this old (one read per broker, shared):
# drift is seen within INTERVAL + SNAPSHOT_AGE of happening.
SNAPSHOT_AGE = INTERVAL / 2
DELETE_TIMEOUT = float(os.environ.get("STRATA_OPERATOR_DELETE_TIMEOUT", "600"))
# Pull secrets put on every pod the operator creates (brokers, Microservices), besides each resource's own
# spec.imagePullSecrets; comma-separated Secret names in the pod's namespace (the chart: imagePullSecrets).
IMAGE_PULL_SECRETS = tuple(n.strip() for n in os.environ.get("STRATA_OPERATOR_IMAGE_PULL_SECRETS", "").split(",")
                           if n.strip())
FINALIZER = "strata.dev/finalizer"
SKIP_CLEANUP = "strata.dev/skip-cleanup"  # the escape hatch: "true" releases the finalizer at once

BROKER = (GROUP, VERSION, "eventbrokers")
TOPIC = (GROUP, VERSION, "topics")
MICROSERVICE = (GROUP, VERSION, "microservices")
COSTREPORT = (GROUP, VERSION, "costreports")

_kube: Kube | None = None


def kube() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube.login()
    return _kube


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="strata.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="strata.dev", key="last-handled-configuration")
    settings.posting.level = 20  # INFO and above become Events
    settings.batching.error_delays = [1, 2, 5, 10, 20, 30, 60]
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # A resource being deleted waits for its timer to stop; one caught mid-reconcile (awaiting the
    # broker) is polled for every this many seconds, not kopf's 60.
    settings.background.cancellation_polling = 2
    settings.background.instant_exit_timeout = 0.5


@kopf.on.cleanup()
async def close(**_: Any) -> None:
    if _kube is not None:
        await _kube.close()
    kafka_admin.executor().shutdown(wait=False, cancel_futures=True)


# -- shared helpers ------------------------------------------------------------------------


def _jitter(**_: Any) -> float:
    """A timer's initial delay: a random point of the interval (spreads the ticks of resources that
    were created, or found at startup, together)."""
    return random.uniform(0.0, INTERVAL)


def _only_changes(patch: kopf.Patch, body: kopf.Body) -> None:
    """Drop from the status patch every field the resource's status already has with that value, so
    a reconcile that changed nothing writes nothing (kopf sends no empty patch). lastSyncTime is
    written only along with another change: it is the time of the last change, not of the last check."""
    if "status" not in patch:
        return
    current = body.get("status") or {}
    for key in list(patch["status"]):
        if key in current and current[key] == patch["status"][key]:
            del patch["status"][key]
    if set(patch["status"]) <= {"lastSyncTime"}:
        del patch["status"]


def _generation(body: kopf.Body) -> int | None:
    gen = body.get("metadata", {}).get("generation")
    return int(gen) if gen is not None else None


def _set(patch: kopf.Patch, body: kopf.Body, conditions: list[dict[str, Any]], type_: str, status: bool | str,
         reason: str, message: str) -> list[dict[str, Any]]:
    """Set one condition in the patch; post an Event when it transitions."""
    old = logic.condition(conditions, type_)
    new = logic.set_condition(conditions, type_, status, reason, message, _generation(body))
    status_text = status if isinstance(status, str) else ("True" if status else "False")
    if old is None or old.get("status") != status_text or old.get("reason") != reason:
        bad = (type_ in ("Ready", "Placement") and status_text == "False") or (
            type_.endswith(("Conflict", "Denied", "Refused")) and status_text == "True")
        kopf.event(body, type="Warning" if bad else "Normal", reason=reason, message=f"{type_}: {message}")
    patch.status["conditions"] = new
    if _generation(body) is not None:
        patch.status["observedGeneration"] = _generation(body)
    return new


@kopf.index(*BROKER)
def broker_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, name) -> the EventBroker's metadata and spec: what resolve_broker reads, from the
    watch instead of a GET per reconcile."""
    md = body["metadata"]
    return {(md["namespace"], md["name"]): {
        "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
        "metadata": {"namespace": md["namespace"], "name": md["name"], "uid": md.get("uid")},
        "spec": dict(body.get("spec") or {})}}


async def resolve_broker(body: kopf.Body, check_namespace: bool = True,
                         brokers: kopf.Index | None = None) -> tuple[dict[str, Any], str]:
    """The EventBroker a resource refers to, and its bootstrap address: BrokerMissing if absent,
    NamespaceNotAllowed if it does not serve the resource's namespace (unless `check_namespace` is
    False: revoking a deleted service's own ACLs needs no permission), TemporaryError if unreadable.
    Read from `brokers` (broker_index) when it has it; else (a broker newer than the watch) a GET."""
    ns, name = logic.broker_key(body)
    broker = next(iter(brokers.get((ns, name), [])), None) if brokers is not None else None
    try:
        if broker is None:
            broker = await kube().get(f"{GROUP}/{VERSION}", "EventBroker", ns, name)
    except (KubeError, OSError) as exc:
        raise kopf.TemporaryError(f"cannot read EventBroker {ns}/{name}: {exc}", delay=RETRY_DELAY) from exc
    if broker is None:
        raise BrokerMissing(f"EventBroker {ns}/{name} does not exist")
    mine = body["metadata"]["namespace"]
    if check_namespace and not logic.namespace_allowed(broker, mine):
        raise NamespaceNotAllowed(f"EventBroker {ns}/{name} does not serve namespace {mine!r} "
                                  f"(its spec.allowedNamespaces does not list it)")
    if resources.uses_tls(broker.get("spec", {})):
        await broker_ca(broker)
    return broker, resources.bootstrap_servers(broker)


# (namespace, name) of an EventBroker -> the PEM of its CA (ca.crt of its TLS Secret), as last read.
_BROKER_CA: dict[tuple[str, str], str] = {}


async def broker_ca(broker: dict[str, Any]) -> str | None:
    """The CA of a TLS EventBroker: ca.crt of its certificate's Secret (spec.tls.secretName, or the
    one cert-manager fills for <name>-broker-tls); None while it is not there. Remembered for admin_for."""
    ns, name = broker["metadata"]["namespace"], broker["metadata"]["name"]
    try:
        secret = await kube().get("v1", "Secret", ns, resources.tls_secret_name(broker))
    except (KubeError, OSError) as exc:
        raise kopf.TemporaryError(f"cannot read the TLS Secret of EventBroker {ns}/{name}: {exc}",
                                  delay=RETRY_DELAY) from exc
    pem = _secret_value(secret, "ca.crt")
    if pem:
        _BROKER_CA[(ns, name)] = pem
    return pem


async def _broker_or_condition(body: kopf.Body, patch: kopf.Patch, conditions: list[dict[str, Any]],
                               brokers: kopf.Index | None = None) -> tuple[dict[str, Any], str] | None:
    """resolve_broker, or None after setting Ready=False with the reason (NamespaceNotAllowed changes
    only when the EventBroker does, so the timer re-checks it; a missing broker is retried)."""
    try:
        return await resolve_broker(body, brokers=brokers)
    except NamespaceNotAllowed as exc:
        _set(patch, body, conditions, "Ready", False, exc.REASON, str(exc))
        return None
    except BrokerMissing as exc:
        _set(patch, body, conditions, "Ready", False, exc.REASON, str(exc))
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc


class BrokerMissing(Exception):
    REASON = "BrokerNotFound"


class NamespaceNotAllowed(Exception):
    """The EventBroker does not list the resource's namespace in allowedNamespaces."""

    REASON = "NamespaceNotAllowed"


def admin_for(broker: dict[str, Any], bootstrap: str | None = None) -> kafka_admin.Session:
    """The shared admin session of an EventBroker's first listener, as the operator: SCRAM with the
    operator's own credentials when it authenticates (NoCredentials without a password); TLS, verified
    against the broker's CA (broker_ca), when it is encrypted. One per broker address and settings for
    the whole process (admin.session_for); its methods are Admin's, awaited."""
    first = resources.listeners(broker.get("spec", {}))[0]
    protocol = resources.listener_protocol(first)
    md = broker.get("metadata", {})
    ca = _BROKER_CA.get((md.get("namespace", ""), md.get("name", "")))
    return kafka_admin.session_for(bootstrap or resources.bootstrap_servers(broker),
                                   kafka_admin.client_security(protocol.startswith("SASL_"), protocol.endswith("SSL"),
                                                               ca))


async def run(fn: Any, *args: Any) -> Any:
    """A blocking call that is not a broker's admin call (those go through admin_for's session)."""
    return await asyncio.to_thread(fn, *args)


def _deadline_passed(body: kopf.Body) -> bool:
    ts = body.get("metadata", {}).get("deletionTimestamp")
    if not ts:
        return False
    started = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return (datetime.datetime.now(tz=datetime.UTC) - started).total_seconds() > DELETE_TIMEOUT


# -- EventBroker ---------------------------------------------------------------------------


@kopf.on.resume(*BROKER)
@kopf.on.create(*BROKER)
@kopf.on.update(*BROKER)
async def reconcile_broker(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    try:
        await _reconcile_broker(body, patch)
    finally:
        _only_changes(patch, body)


@kopf.timer(*BROKER, interval=INTERVAL, initial_delay=_jitter)
async def refresh_broker(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    try:
        await _reconcile_broker(body, patch)
    finally:
        _only_changes(patch, body)


async def _reconcile_broker(body: kopf.Body, patch: kopf.Patch) -> None:
    conditions = list(body.get("status", {}).get("conditions") or [])
    spec = body["spec"]
    bootstrap = resources.bootstrap_servers(body)
    patch.status["bootstrapServers"] = bootstrap
    if spec.get("external"):
        if resources.uses_tls(spec):
            await broker_ca(body)
        try:
            admin = admin_for(body, bootstrap)
            count = await admin.ping()
            authorizer = await admin.supports(API_CREATE_ACLS)
        except (BrokerUnavailable, BrokerRejected) as exc:
            _set(patch, body, conditions, "Ready", False, "BrokerUnavailable", f"{bootstrap}: {exc}")
            raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
        patch.status["replicas"] = count
        patch.status["readyReplicas"] = count
        patch.status["authorizer"] = authorizer
        _set(patch, body, conditions, "Ready", True, "Reachable", f"external broker at {bootstrap}, {count} broker(s)")
        return
    if int(spec.get("replicas", 1)) > 1 and not spec.get("tieredStorage"):
        # Refused at admission (CEL); an older CRD lets it through: start nothing that would crash.
        _set(patch, body, conditions, "Ready", False, "InvalidSpec",
             "replicas > 1 needs spec.tieredStorage (the brokers of a cluster share partitions through the "
             "bucket); nothing was changed")
        return
    users_file = None
    if resources.uses_sasl(spec) and kafka_admin.KAFKA_PASSWORD:
        names = resources.broker_names(body["metadata"]["name"])
        try:
            current = await kube().get("v1", "Secret", body["metadata"]["namespace"], names["credentials"])
        except (KubeError, OSError) as exc:
            _set(patch, body, conditions, "Ready", False, "ApplyFailed", str(exc))
            raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
        users_file = scram.credentials_file({kafka_admin.KAFKA_USERNAME: kafka_admin.KAFKA_PASSWORD},
                                            _secret_value(current, resources.CREDENTIALS_KEY))
    ns = body["metadata"]["namespace"]
    sts_name = resources.broker_names(body["metadata"]["name"])["statefulset"]
    try:
        existing = await kube().get("apps/v1", "StatefulSet", ns, sts_name)
        made = resources.claim_size(existing)
        if made:  # volumeClaimTemplates are immutable: expand the PVCs instead (or refuse)
            conditions = await _storage_expansion(body, patch, conditions, existing, made)
        else:
            patch.status["storageSize"] = (spec.get("storage") or {}).get("size", "10Gi")
        for obj in resources.eventbroker_objects(body, kafka_admin.KAFKA_USERNAME, users_file, IMAGE_PULL_SECRETS,
                                                 made):
            await kube().apply(obj)
        sts = await kube().get("apps/v1", "StatefulSet", ns, sts_name)
        ca = await broker_ca(body) if resources.uses_tls(spec) else "-"
    except (KubeError, OSError) as exc:
        _set(patch, body, conditions, "Ready", False, "ApplyFailed", str(exc))
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
    want = int(spec.get("replicas", 1))
    ready = int(((sts or {}).get("status") or {}).get("readyReplicas") or 0)
    patch.status["replicas"] = want
    patch.status["readyReplicas"] = ready
    patch.status["authorizer"] = resources.authorizer(spec)
    if resources.uses_sasl(spec) and not kafka_admin.KAFKA_PASSWORD:
        _set(patch, body, conditions, "Ready", False, "NoAdminCredentials",
             "a listener authenticates but the operator has no Kafka admin password "
             "(STRATA_OPERATOR_KAFKA_SASL_PASSWORD): the brokers' credentials file has no users")
    elif not ca:
        _set(patch, body, conditions, "Ready", False, "CertificateNotReady",
             f"a listener uses TLS but Secret {resources.tls_secret_name(body)} has no ca.crt, tls.crt and tls.key "
             "yet (cert-manager issues it from spec.tls.issuerRef; or create it)")
    elif ready >= want:
        _set(patch, body, conditions, "Ready", True, "BrokersReady", f"{ready}/{want} brokers ready at {bootstrap}")
    else:
        _set(patch, body, conditions, "Ready", False, "BrokersStarting", f"{ready}/{want} brokers ready")


async def _storage_class(body: kopf.Body, sts: dict[str, Any],
                         pvcs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The StorageClass of the brokers' volumes: spec.storage.class, else the one their PVCs were given
    (the default class is written into a PVC at creation), the claim template's, else the cluster's
    default (annotation storageclass.kubernetes.io/is-default-class)."""
    name = (body["spec"].get("storage") or {}).get("class")
    for claim in [*pvcs, *(sts["spec"].get("volumeClaimTemplates") or [])]:
        name = name or (claim.get("spec") or {}).get("storageClassName")
    try:
        if name:
            return await kube().get("storage.k8s.io/v1", "StorageClass", None, name)
        for sc in await kube().list("storage.k8s.io/v1", "StorageClass"):
            if (sc["metadata"].get("annotations") or {}).get("storageclass.kubernetes.io/is-default-class") == "true":
                return sc
    except KubeError as exc:
        if exc.status != 403:  # RBAC without cluster-scoped reads (the chart's rbac.clusterObservation: false)
            raise
        kopf.warn(body, reason="StorageClassUnreadable", message=f"cannot read StorageClasses: {exc}")
    return None


async def _storage_expansion(body: kopf.Body, patch: kopf.Patch, conditions: list[dict[str, Any]],
                             sts: dict[str, Any], made: str) -> list[dict[str, Any]]:
    """spec.storage.size against the size the StatefulSet was made with: when bigger and the StorageClass
    allows volume expansion, each broker's PVC is expanded; otherwise StorageExpansionRefused and the
    volumes keep their size (status.storageSize)."""
    want = (body["spec"].get("storage") or {}).get("size", "10Gi")
    ns = body["metadata"]["namespace"]
    if logic.quantity(want) == logic.quantity(made):
        patch.status["storageSize"] = (body.get("status") or {}).get("storageSize") or made
        if (logic.condition(conditions, "StorageExpansionRefused") or {}).get("status") == "True":
            return _set(patch, body, conditions, "StorageExpansionRefused", False, "SizeUnchanged",
                        f"storage.size is the volumes' {made} again")
        return conditions
    if logic.quantity(want) < logic.quantity(made):
        patch.status["storageSize"] = made
        return _set(patch, body, conditions, "StorageExpansionRefused", True, "ShrinkRefused",
                    f"storage.size {want} is less than the volumes' {made}: a volume is never shrunk")
    pvcs = {name: await kube().get("v1", "PersistentVolumeClaim", ns, name)
            for name in resources.broker_pvc_names(body)}
    sc = await _storage_class(body, sts, [p for p in pvcs.values() if p])
    if not sc or sc.get("allowVolumeExpansion") is not True:
        what = f"StorageClass {sc['metadata']['name']}" if sc else "no StorageClass (none named and readable)"
        patch.status["storageSize"] = made
        return _set(patch, body, conditions, "StorageExpansionRefused", True, "ExpansionNotAllowed",
                    f"storage.size {want}: {what} does not allow volume expansion (allowVolumeExpansion); the "
                    f"volumes keep {made}")
    expanded = []
    for pvc_name, pvc in pvcs.items():
        if pvc is None:
            continue  # made by the StatefulSet later, at the template's size: expanded by a later reconcile
        have = ((pvc.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage") or "0"
        if logic.quantity(have) < logic.quantity(want):
            expanded.append(pvc_name)
    for obj in resources.pvc_resizes(body, expanded, want):
        await kube().apply(obj)
    patch.status["storageSize"] = want
    return _set(patch, body, conditions, "StorageExpansionRefused", False, "VolumesExpanded",
                f"StorageClass {sc['metadata']['name']} allows expansion: volumes requested at {want}"
                + (f" (expanded {', '.join(expanded)})" if expanded else ""))


# -- Topic ---------------------------------------------------------------------------------


@kopf.index(*TOPIC)
def topic_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str, str], dict[str, Any]]:
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
    try:
        await _reconcile_topic(body, patch, topic_index, broker_index, timed=False)
    finally:
        _only_changes(patch, body)


@kopf.timer(*TOPIC, interval=INTERVAL, initial_delay=_jitter)
async def revert_topic_drift(body: kopf.Body, patch: kopf.Patch, topic_index: kopf.Index,
                             broker_index: kopf.Index, **_: Any) -> None:
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    try:
        await _reconcile_topic(body, patch, topic_index, broker_index, timed=True)
    finally:
        _only_changes(patch, body)


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
        _set(patch, body, conditions, "Ready", False, "TopicNameChanged", msg)
        return
    winner = _winner(body, topic_index)
    if (winner["namespace"], winner["name"]) != (md["namespace"], md["name"]):
        msg = (f"topic {name!r} is already managed by Topic {winner['namespace']}/{winner['name']} (older); "
               "this resource is ignored until that one is deleted")
        conditions = _set(patch, body, conditions, "ResourceConflict", True, "ResourceConflict", msg)
        _set(patch, body, conditions, "Ready", False, "ResourceConflict", msg)
        return
    conditions = logic.drop_condition(conditions, "ResourceConflict")
    try:
        logic.desired_topic_configs(body["spec"])
    except logic.InvalidSpec as exc:
        _set(patch, body, conditions, "Ready", False, "InvalidSpec", str(exc))
        raise kopf.PermanentError(str(exc)) from exc
    if logic.reserved_topic(name):
        _set(patch, body, conditions, "Ready", False, "ReservedTopic",
             f"{name!r} is an internal or reserved topic (__*, _schemas): the broker manages it, no Topic does")
        return
    resolved = await _broker_or_condition(body, patch, conditions, brokers)
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
        state = (await admin.snapshot(SNAPSHOT_AGE)).topics.get(name) if timed else None
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
        _set(patch, body, conditions, "Ready", False, "BrokerUnavailable", f"{bootstrap}: {exc}")
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
    except BrokerRejected as exc:
        _set(patch, body, conditions, "Ready", False, "BrokerRejected", str(exc))
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY * 4) from exc
    patch.status["managedConfigs"] = plan.managed
    if adopted:
        changed = "; ".join(plan.differences) or "nothing"
        kept = ", ".join(f"{k}={v}" for k, v in sorted(found.items())) or "none"
        reason = "AdoptedWithChanges" if plan.differences else "AdoptedAsFound"
        message = (f"existing topic {name!r} adopted; changed to match the spec: {changed}; "
                   f"left as found (not named by the spec): {kept}")
        conditions = logic.set_condition(conditions, "Adopted", True, reason, message, _generation(body))
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
            _set(patch, body, conditions, "Ready", False, outcome.reason, outcome.message)
            if outcome.retry:
                raise kopf.TemporaryError(outcome.message, delay=RETRY_DELAY)
            return
    if plan.cannot_shrink:
        have, asked = plan.cannot_shrink
        _set(patch, body, conditions, "Ready", False, "NotSupported",
             f"partitions cannot decrease ({have} -> {asked}); the topic keeps {have}. "
             f"Set spec.partitions back to {have} or more")
        return
    _set(patch, body, conditions, "Ready", True, "Reconciled", f"topic {name!r} matches the spec")


@kopf.on.delete(*TOPIC)
async def delete_topic(body: kopf.Body, topic_index: kopf.Index, broker_index: kopf.Index, **_: Any) -> None:
    md = body["metadata"]
    name = logic.managed_topic_name(body)
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
        if _deadline_passed(body):
            kopf.warn(body, reason="CleanupAbandoned",
                      message=f"could not delete topic {name!r} for {DELETE_TIMEOUT:.0f}s ({exc}); finalizer released")
            return
        kopf.warn(body, reason="DeleteFailed", message=f"topic {name!r}: {exc}; retrying")
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
    kopf.info(body, reason="Deleted", message=f"topic {name!r} {'deleted' if deleted else 'was already gone'}")


# -- Microservice --------------------------------------------------------------------------


@kopf.index(*MICROSERVICE)
def microservice_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(broker namespace, broker name) -> the Microservices of that broker (for single-writer)."""
    md = body["metadata"]
    if md.get("deletionTimestamp"):
        return {}
    return {logic.broker_key(body): _peer(body)}


def _peer(body: kopf.Body) -> dict[str, Any]:
    """What single-writer needs of a Microservice: who, what it produces, its recorded claims."""
    md = body["metadata"]
    return {"metadata": {"namespace": md["namespace"], "name": md["name"],
                         "creationTimestamp": md.get("creationTimestamp")},
            "spec": {"produces": list(body["spec"].get("produces") or [])},
            "status": {"writeClaims": [dict(c) for c in (body.get("status") or {}).get("writeClaims") or []]}}


@kopf.on.resume(*MICROSERVICE)
@kopf.on.create(*MICROSERVICE)
@kopf.on.update(*MICROSERVICE)
async def reconcile_microservice(body: kopf.Body, patch: kopf.Patch, microservice_index: kopf.Index,
                                 topic_index: kopf.Index, broker_index: kopf.Index, **_: Any) -> None:
    try:
        await _reconcile_microservice(body, patch, microservice_index, topic_index, broker_index, timed=False)
    finally:
        _only_changes(patch, body)


@kopf.timer(*MICROSERVICE, interval=INTERVAL, initial_delay=_jitter)
async def refresh_microservice(body: kopf.Body, patch: kopf.Patch, microservice_index: kopf.Index,
                               topic_index: kopf.Index, broker_index: kopf.Index, **_: Any) -> None:
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    try:
        await _reconcile_microservice(body, patch, microservice_index, topic_index, broker_index, timed=True)
    finally:
        _only_changes(patch, body)


@dataclass
class _Applied:
    """What a Microservice's last full reconcile applied: a digest of its objects, when, with which password."""

    digest: str
    at: float
    password: str


_applied: dict[str, _Applied] = {}  # Microservice uid -> its last full apply (this process)


def _digest(objects: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(objects, sort_keys=True, default=str).encode()).hexdigest()


def _topic_owners(topic_index: kopf.Index, broker: tuple[str, str], topics: set[str]) -> dict[str, Any]:
    """topic -> the Topic resource (index entry) managing it on that broker, or None."""
    out: dict[str, Any] = {}
    for topic in topics:
        entries = list(topic_index.get((broker[0], broker[1], topic), []))
        out[topic] = logic.conflict_winner(entries) if entries else None
    return out


async def _reconcile_microservice(body: kopf.Body, patch: kopf.Patch, index: kopf.Index,
                                  topic_index: kopf.Index, brokers: kopf.Index | None = None,
                                  timed: bool = False) -> None:
    conditions = list(body.get("status", {}).get("conditions") or [])
    md = body["metadata"]
    ns, name = md["namespace"], md["name"]
    resolved = await _broker_or_condition(body, patch, conditions, brokers)
    if resolved is None:
        return
    broker, bootstrap = resolved
    key = logic.broker_key(body)
    # This service as it is now (the index may lag behind its own last status patch), and its peers;
    # a peer's claim on a topic its owner does not let it write does not count.
    peers = [dict(p) for p in index.get(key, [])
             if (p["metadata"]["namespace"], p["metadata"]["name"]) != (ns, name)] + [_peer(body)]
    mentioned = {t for p in peers for t in p["spec"]["produces"]} | set(body["spec"].get("consumes") or [])
    owners = _topic_owners(topic_index, key, mentioned)
    for peer in peers:
        refused = logic.access_refusals(peer["metadata"]["namespace"], key[0], peer["spec"]["produces"], owners,
                                        "allowedProducers")
        peer["spec"] = {"produces": [t for t in peer["spec"]["produces"] if t not in refused]}
    unwritable = logic.access_refusals(ns, key[0], list(body["spec"].get("produces") or []), owners,
                                       "allowedProducers")
    unreadable = logic.access_refusals(ns, key[0], list(body["spec"].get("consumes") or []), owners,
                                       "allowedConsumers")
    group = resources.consumer_group(body)
    group_refused = logic.shared(broker) and not group.startswith(f"{ns}.")
    grants = logic.grants(body, peers, None if group_refused else group, unreadable, unwritable)
    principal = resources.principal(body)
    patch.status["principal"] = principal
    patch.status["writeClaims"] = grants.claims
    patch.status["permissions"] = grants.permissions
    patch.status["deniedWrites"] = sorted(grants.denied_writes)
    patch.status["schemaSubjects"] = topic_schema.writable_subjects(grants.permissions)
    if grants.denied_writes:
        msg = "; ".join(f"{t!r} is written by {owner}" for t, owner in sorted(grants.denied_writes.items()))
        conditions = _set(patch, body, conditions, "WriterConflict", True, "TopicHasWriter",
                          f"no Write permission (one writer per topic: the first to declare it keeps it "
                          f"while it declares it): {msg}")
    else:
        conditions = _set(patch, body, conditions, "WriterConflict", False, "SoleWriter",
                          "no other service writes the topics this one produces")
    refusals = [f"no Read on {t!r}: {r}" for t, r in sorted(grants.denied_reads.items())]
    refusals += [f"no Write on {t!r}: {r}" for t, r in sorted(grants.refused_writes.items())]
    if group_refused:
        refusals.append(f"no access to consumer group {group!r}: on an EventBroker shared with other namespaces "
                        f"a consumerGroup must start with {ns + '.'!r}")
    if refusals:
        conditions = _set(patch, body, conditions, "AccessDenied", True, "NotAllowedByOwner", "; ".join(refusals))
    elif logic.condition(conditions, "AccessDenied"):
        conditions = _set(patch, body, conditions, "AccessDenied", False, "Allowed",
                          "every declared topic and the consumer group are allowed")
    sasl = resources.authentication(broker.get("spec", {})) != "none"
    names = resources.microservice_names(name)
    client = await _client_listener(body, patch, conditions, broker)
    if client is None:
        return
    listener, client_bootstrap, ca_pem, issuer = client
    uid = str(md.get("uid"))
    # A timed reconcile within FULL_RESYNC of the last full one trusts what that one applied (the
    # Secret's password included) and applies again only if the objects it would apply changed.
    cached = _applied.get(uid) if timed else None
    if cached is not None and time.monotonic() - cached.at > FULL_RESYNC:
        cached = None
    try:
        existing = None if cached else await kube().get("v1", "Secret", ns, names["secret"])
        old_password = cached.password if cached else _existing_password(existing)
        password = old_password or secrets.token_urlsafe(24)
        objects = list(resources.microservice_objects(body, client_bootstrap, password, sasl, IMAGE_PULL_SECRETS,
                                                      listener, ca_pem, issuer))
        digest = _digest(objects)
        if cached is None or cached.digest != digest:
            for obj in objects:
                await kube().apply(obj)
            _applied[uid] = _Applied(digest, time.monotonic(), password)
        deployment = None if resources.credentials_only(body) else \
            await kube().get("apps/v1", "Deployment", ns, names["deployment"])
    except (KubeError, OSError) as exc:
        _set(patch, body, conditions, "Ready", False, "ApplyFailed", str(exc))
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
    patch.status["secretName"] = names["secret"]
    if resources.credentials_only(body):
        available, availability = True, "credentials only: no image, so no Deployment"
    else:
        want = int(body["spec"]["replicas"]) if "replicas" in body["spec"] else None
        available, patch.status["availableReplicas"], availability = logic.deployment_availability(want, deployment)
        patch.status["replicas"] = want if want is not None else int(((deployment or {}).get("spec") or {})
                                                                     .get("replicas", 1))
        patch.status["readyReplicas"] = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
    try:
        admin = admin_for(broker, bootstrap)
        versions = await admin.api_versions()
        # A timed reconcile compares with the broker's shared snapshot and changes only what differs.
        snap = await admin.snapshot(SNAPSHOT_AGE) if timed else None
        user = resources.principal_name(body)
        if sasl and API_ALTER_USER_SCRAM_CREDENTIALS in versions and (
                snap is None or snap.scram_users is None or user not in snap.scram_users or not old_password):
            # Upserted on every create, update and resume, and when the broker lacks it or the password
            # is new (a new Secret, a rotation by deleting it, a broker that lost its __meta); before the
            # ACLs, so a service never holds permissions it cannot authenticate for... nor the reverse for long.
            await admin.upsert_scram(user, password)
            admin.remember_user(user, True)
        # No authorizer (DescribeAcls or CreateAcls answered SECURITY_DISABLED): a timed reconcile makes no ACL call.
        no_authorizer = API_CREATE_ACLS not in versions or (snap is not None and (snap.acls is None
                                                                                   or admin.no_authorizer))
        if not no_authorizer:
            try:
                if snap is not None and snap.acls is not None and snap.acls.get(principal, set()) == {
                        kafka_admin.binding(principal, *w) for w in grants.acls}:
                    created, deleted = 0, 0
                else:
                    created, deleted = await admin.sync_acls(principal, grants.acls)
                    admin.remember_acls(principal, grants.acls)
                conditions = _set(patch, body, conditions, "AclsApplied", True, "AclsApplied",
                                  f"{len(grants.acls)} ACL(s) for {principal} (+{created} -{deleted})")
            except BrokerRejected as exc:
                if exc.code != SECURITY_DISABLED:
                    raise
                no_authorizer = admin.no_authorizer = True
        if no_authorizer:
            conditions = _set(patch, body, conditions, "AclsApplied", False, "BrokerHasNoAuthorizer",
                              "the broker does not enforce ACLs (no CreateAcls, or no authorizer enabled): "
                              "permissions are computed (status.permissions) but any client may write any topic")
    except (BrokerUnavailable, BrokerRejected) as exc:
        reason = "NoAdminCredentials" if isinstance(exc, NoCredentials) else "BrokerUnavailable"
        conditions = _set(patch, body, conditions, "AclsApplied", "Unknown", reason, f"{bootstrap}: {exc}")
        _set(patch, body, conditions, "Ready", False, reason, f"{bootstrap}: {exc}")
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
    if grants.denied_writes:
        _set(patch, body, conditions, "Ready", False, "WriterConflict",
             "deployed, but without Write on: " + ", ".join(sorted(grants.denied_writes)))
    elif refusals:
        _set(patch, body, conditions, "Ready", False, "AccessDenied",
             "deployed, but without some declared permissions (see AccessDenied)")
    elif not available:
        _set(patch, body, conditions, "Ready", False, "DeploymentUnavailable",
             f"credentials and permissions in place for {principal}; the Deployment is not available: {availability}")
    else:
        _set(patch, body, conditions, "Ready", True, "Reconciled",
             f"{availability}; credentials and permissions in place for {principal}")


async def _client_listener(body: kopf.Body, patch: kopf.Patch, conditions: list[dict[str, Any]],
                           broker: dict[str, Any]) -> tuple[dict[str, Any], str, str | None, Any] | None:
    """The listener a Microservice connects to (spec.listener, else the first), its bootstrap address, the
    broker's CA (TLS listeners) and the issuer of its client certificate (mutual TLS); None after setting
    Ready=False when the listener does not exist or its principal is the operator's own."""
    try:
        listener = resources.client_listener(broker, body["spec"].get("listener"))
    except KeyError:
        _set(patch, body, conditions, "Ready", False, "ListenerNotFound",
             f"the EventBroker has no listener {body['spec'].get('listener')!r}")
        return None
    if resources.principal_name(body) == kafka_admin.KAFKA_USERNAME:
        _set(patch, body, conditions, "Ready", False, "ReservedPrincipal",
             f"principal User:{kafka_admin.KAFKA_USERNAME} is the operator's own: no Microservice may have it")
        return None
    ca_pem = None
    if resources.listener_protocol(listener) in ("SSL", "SASL_SSL"):
        ca_pem = await broker_ca(broker)
        if not ca_pem:
            msg = (f"the EventBroker's TLS Secret {resources.tls_secret_name(broker)} has no ca.crt yet "
                   "(cert-manager issues it, or it must be created)")
            _set(patch, body, conditions, "Ready", False, "CertificateNotReady", msg)
            raise kopf.TemporaryError(msg, delay=RETRY_DELAY)
    tls = broker["spec"].get("tls") or {}
    issuer = resources.issuer_ref(broker) if resources.mutual_tls(listener) and tls.get("issuerRef") else None
    return listener, resources.listener_bootstrap(broker, listener), ca_pem, issuer


def _secret_value(secret: dict[str, Any] | None, key: str) -> str | None:
    import base64

    if not secret:
        return None
    if (secret.get("stringData") or {}).get(key):
        return secret["stringData"][key]  # an API server never returns this; the emulator may
    raw = (secret.get("data") or {}).get(key)
    return base64.b64decode(raw).decode() if raw else None


def _existing_password(secret: dict[str, Any] | None) -> str | None:
    return _secret_value(secret, "KAFKA_SASL_PASSWORD")


@kopf.on.delete(*MICROSERVICE)
async def delete_microservice(body: kopf.Body, broker_index: kopf.Index, **_: Any) -> None:
    """Revoke the principal's ACLs and remove its SCRAM credential; the Deployment, ServiceAccount
    and Secret are garbage-collected through their ownerReferences."""
    if (body["metadata"].get("annotations") or {}).get(SKIP_CLEANUP) == "true":
        return
    try:
        broker, bootstrap = await resolve_broker(body, check_namespace=False, brokers=broker_index)
        admin = admin_for(broker, bootstrap)
        versions = await admin.api_versions()
        if API_CREATE_ACLS in versions:
            try:
                await admin.delete_acls_of(resources.principal(body))
                admin.remember_acls(resources.principal(body), None)
            except BrokerRejected as exc:
                if exc.code != SECURITY_DISABLED:
                    raise
        if resources.authentication(broker.get("spec", {})) != "none" and API_ALTER_USER_SCRAM_CREDENTIALS in versions:
            await admin.delete_scram(resources.principal_name(body))
            admin.remember_user(resources.principal_name(body), False)
        _applied.pop(str(body["metadata"].get("uid")), None)
    except BrokerMissing:
        return
    except (BrokerUnavailable, BrokerRejected, kopf.TemporaryError) as exc:
        if _deadline_passed(body):
            kopf.warn(body, reason="CleanupAbandoned", message=f"ACLs not revoked ({exc}); finalizer released")
            return
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc


# -- CostReport ----------------------------------------------------------------------------
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
    resolved = await _broker_or_condition(body, patch, conditions)
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
        _set(patch, body, conditions, "Ready", False, exc.reason, exc.message)
        return
    except (KubeError, OSError) as exc:
        _set(patch, body, conditions, "Ready", False, "KubernetesUnavailable", str(exc))
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
    patch.status.update(result.status)
    _set(patch, body, conditions, "Ready", True, result.reason, result.message(source))


async def _list_everywhere(kind: str, fallback: set[str]) -> list[dict[str, Any]]:
    """All namespaces' resources of a kind; with namespace-scoped RBAC (403), those of `fallback`."""
    try:
        return await kube().list(f"{GROUP}/{VERSION}", kind)
    except KubeError as exc:
        if exc.status != 403:
            raise
    return [item for namespace in sorted(fallback) for item in await kube().list(f"{GROUP}/{VERSION}", kind, namespace)]
