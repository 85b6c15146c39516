"""The periodic resync: one loop per EventBroker (a kopf daemon), not a timer per resource.

Every `SETTINGS.interval` seconds (the first pass at a random point of the second half of the first
interval, so brokers found together do not resync together) the loop of an EventBroker:

1. takes the broker's snapshot through its shared admin session (admin.Session.snapshot: every
   topic's partitions and the configs any Topic names or managed (config_keys), every ACL, every
   SCRAM user, in five requests);
2. computes the single-writer claims of all its Microservices once (microservice.writer_context);
3. compares, without any request, the desired state of every Topic and Microservice of that broker
   (bodies without what no comparison reads, kept in the watch-fed indexes below, Deployments in
   `deployment_index`) with the snapshot (topic.topic_differs, `microservice_differs`);
4. reconciles only those that differ, by calling the same reconcile functions the kopf handlers run
   (at most ADMIN_WORKERS at once, under each object's lock, so never at the same time as a handler
   of that object), and merge-patches their status only when a field or condition changed.

With nothing changed, a pass makes no Kubernetes request and the five Kafka requests of the
snapshot. A reconcile run here writes no kopf progress annotation (it is not a kopf handler). An
object a handler reconciled less than half an interval ago is left for the next pass (the watch may
not have brought its new status yet). When the snapshot cannot be read (the broker is down) the
session backs off (admin.Session), the loop retries after STRATA_OPERATOR_RETRY_DELAY, and from the
second failure in a row every Ready Topic and Microservice of the broker is set Ready=False,
BrokerUnavailable (once: a condition already saying so is not written again); the first pass that
reads a snapshot reconciles them all. A pass that leaves a resource in a state a retry may fix (the
broker unreachable, an apply that failed) makes the next pass come after the retry delay.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from .. import admin as kafka_admin
from .. import logic, memory, resources
from ..admin import API_ALTER_USER_SCRAM_CREDENTIALS, API_CREATE_ACLS, BrokerRejected, BrokerUnavailable
from ..kube import KubeError
from .common import (
    BROKER,
    MICROSERVICE,
    TOPIC,
    admin_for,
    broker_ca,
    closing,
    mark_reconciled,
    object_lock,
    patch_status,
    reconciled_within,
    set_condition,
)
from .microservice import WriterContext, _applied, _reconcile_microservice, _topic_owners, writer_context
from .settings import SETTINGS
from .topic import _reconcile_topic, topic_differs

log = logging.getLogger("strata.resync")

# Ready reasons a pass retries soon (after the retry delay, not the interval).
RETRYABLE = frozenset({"BrokerUnavailable", "BrokerRejected", "ApplyFailed", "CertificateNotReady", "BrokerNotFound"})
# Ready=False reasons of a Microservice that the comparison recomputes (any other one is retried).
COMPUTED = frozenset({"WriterConflict", "AccessDenied", "DeploymentUnavailable"})
DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration", "strata.dev/kopf-managed")


HANDLED = "strata.dev/last-handled-configuration"  # kopf's diff base: present once a create handler succeeded


KEPT_METADATA = ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp", "labels")


def _kept(body: kopf.Body) -> dict[str, Any]:
    """What an index keeps of an object: what a comparison and a reconcile read (its identity,
    generation, labels, annotations, spec and status), not resourceVersion, finalizers,
    managedFields, kubectl's and kopf's big annotations (kopf's diff base only as a mark that kopf
    handled the object once), nor status.lastSyncTime (written only along with another change)."""
    md = body.get("metadata") or {}
    kept_md = {k: copy.deepcopy(md[k]) for k in KEPT_METADATA if k in md}
    annotations = {k: ("-" if k == HANDLED else v) for k, v in (md.get("annotations") or {}).items()
                   if k not in DROPPED_ANNOTATIONS}
    if annotations:
        kept_md["annotations"] = annotations
    status = {k: copy.deepcopy(v) for k, v in (body.get("status") or {}).items() if k != "lastSyncTime"}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": kept_md,
            "spec": copy.deepcopy(dict(body.get("spec") or {})), "status": status}


def _pending(body: dict[str, Any]) -> bool:
    """Whether the object is being deleted, or kopf has not run its create handler yet (that handler
    reconciles it; the resync would race it)."""
    md = body["metadata"]
    return bool(md.get("deletionTimestamp")) or HANDLED not in (md.get("annotations") or {})


@kopf.index(*TOPIC)
async def topic_bodies(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(broker namespace, broker name) -> the Topics of that broker, as the watch last saw them."""
    return {logic.broker_key(body): _kept(body)}


@kopf.index(*MICROSERVICE)
async def microservice_bodies(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(broker namespace, broker name) -> the Microservices of that broker, as the watch last saw them."""
    return {logic.broker_key(body): _kept(body)}


@kopf.index("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": resources.MANAGED_BY,
                                                  "app.kubernetes.io/component": "microservice"})
async def deployment_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, name) -> what a Microservice's readiness needs of its Deployment (spec.replicas,
    generation, status), from the watch: the resync never GETs a Deployment."""
    md = body["metadata"]
    return {(md["namespace"], md["name"]): {
        "metadata": {"generation": md.get("generation")},
        "spec": {k: v for k, v in (body.get("spec") or {}).items() if k == "replicas"},
        "status": {k: v for k, v in (body.get("status") or {}).items()
                   if k in ("availableReplicas", "readyReplicas", "observedGeneration", "replicas")}}}


def _spread(uid: str) -> float:
    """0.75..1.25, fixed per object: full resyncs of objects applied together do not come together."""
    return 0.75 + int(hashlib.sha256(uid.encode()).hexdigest()[:4], 16) / 0xFFFF / 2


def microservice_differs(body: dict[str, Any], ctx: WriterContext, topic_index: kopf.Index, broker: dict[str, Any],
                         snap: kafka_admin.Snapshot, versions: dict[int, Any], no_authorizer: bool,
                         deployment_index: kopf.Index) -> tuple[bool, bool]:
    """(needs a reconcile, needs a full one: Secret read and objects applied again) of a Microservice,
    from the indexes and the broker's snapshot alone: its grants (with the broker's writers, computed
    once) against its status; its ACLs and SCRAM user against the snapshot; its Deployment (from the
    watch) against the replicas it wants and its status; a last reconcile that failed; and its full
    resync (STRATA_OPERATOR_FULL_RESYNC, spread by 25% either way) when due."""
    status = body.get("status") or {}
    md = body["metadata"]
    ns, uid = md["namespace"], str(md.get("uid"))
    ready = logic.condition(status.get("conditions"), "Ready")
    if ready is None:
        return True, False
    reason = ready.get("reason")
    if not logic.namespace_allowed(broker, ns):
        return reason != "NamespaceNotAllowed", False
    if ready.get("status") != "True" and reason not in COMPUTED:
        return True, False
    applied = _applied.get(uid)
    if applied is None or time.monotonic() - applied.at > SETTINGS.full_resync * _spread(uid):
        return True, True
    key = logic.broker_key(body)
    spec = body["spec"]
    produces, consumes = list(spec.get("produces") or []), list(spec.get("consumes") or [])
    owners = _topic_owners(topic_index, key, set(produces) | set(consumes))
    unwritable = logic.access_refusals(ns, key[0], produces, owners, "allowedProducers")
    unreadable = logic.access_refusals(ns, key[0], consumes, owners, "allowedConsumers")
    group = resources.consumer_group(body)
    group_refused = logic.shared(broker) and not group.startswith(f"{ns}.")
    grants = logic.grants(body, ctx.peers, None if group_refused else group, unreadable, unwritable, ctx.writer_of)
    if (grants.permissions != status.get("permissions") or sorted(grants.denied_writes) != status.get("deniedWrites")
            or [(c["topic"], c["writer"]) for c in grants.claims]
            != [(c.get("topic"), c.get("writer")) for c in status.get("writeClaims") or []]):
        return True, False
    # Who holds each denied topic and why access is refused are in the conditions' messages.
    conflict = (logic.condition(status.get("conditions"), "WriterConflict") or {}).get("message", "")
    denied = (logic.condition(status.get("conditions"), "AccessDenied") or {}).get("message", "")
    if any(f"{t!r} is written by {owner}" not in conflict for t, owner in grants.denied_writes.items()) or any(
            f"no {op} on {t!r}: {why}" not in denied
            for op, refused in (("Read", grants.denied_reads), ("Write", grants.refused_writes))
            for t, why in refused.items()):
        return True, False
    principal = resources.principal(body)
    if (resources.authentication(broker.get("spec", {})) != "none" and API_ALTER_USER_SCRAM_CREDENTIALS in versions
            and snap.scram_users is not None and resources.principal_name(body) not in snap.scram_users):
        return True, False
    if API_CREATE_ACLS in versions and not no_authorizer and snap.acls is not None and \
            snap.acls.get(principal, set()) != {kafka_admin.binding(principal, *w) for w in grants.acls}:
        return True, False
    available = True
    if not resources.credentials_only(body):
        names = resources.microservice_names(md["name"])
        deployment = next(iter(deployment_index.get((ns, names["deployment"]), [])), None)
        want = int(spec["replicas"]) if "replicas" in spec else None
        if deployment is None or (want is not None and deployment["spec"].get("replicas") != want):
            return True, True  # gone, or its replicas changed behind the operator's back: applied again
        available, have, _ = logic.deployment_availability(want, deployment)
        replicas = want if want is not None else int(deployment["spec"].get("replicas", 1))
        if (status.get("availableReplicas"), status.get("replicas"), status.get("readyReplicas")) != (
                have, replicas, int(deployment["status"].get("readyReplicas") or 0)):
            return True, False
    should_be_ready = available and not grants.denied_writes and not grants.denied_reads \
        and not grants.refused_writes and not group_refused
    return should_be_ready != (ready.get("status") == "True"), False


def config_keys(topics: list[dict[str, Any]]) -> frozenset[str]:
    """The topic configs a pass compares: those any Topic's spec names or its status says it managed
    (a managed one the spec dropped is reset). The snapshot reads only these (admin.Snapshot)."""
    keys: set[str] = set()
    for topic in topics:
        try:
            keys.update(logic.desired_topic_configs(topic["spec"]))
        except logic.InvalidSpec:
            pass
        keys.update((topic.get("status") or {}).get("managedConfigs") or [])
    return frozenset(keys)


def _latest(index: kopf.Index, key: tuple[str, str], uid: str) -> dict[str, Any] | None:
    return next((b for b in index.get(key, []) if str(b["metadata"].get("uid")) == uid), None)


def _retryable(body: dict[str, Any], patch: kopf.Patch) -> bool:
    conditions = (patch.get("status") or {}).get("conditions") or (body.get("status") or {}).get("conditions")
    ready = logic.condition(conditions, "Ready") or {}
    return ready.get("status") != "True" and ready.get("reason") in RETRYABLE


class Pass:
    """One resync pass over the resources of one broker."""

    def __init__(self, key: tuple[str, str], indexes: dict[str, kopf.Index]) -> None:
        self.key = key
        self.ix = indexes
        self.grace = SETTINGS.interval / 2
        self.limit = asyncio.Semaphore(kafka_admin.ADMIN_WORKERS)

    async def reconcile(self, plural: str, body: dict[str, Any],
                        run: Callable[[dict[str, Any], kopf.Patch], Awaitable[None]]) -> bool:
        """Run one reconcile under the object's lock and write its status changes; True when it ended
        in a state a retry may fix."""
        index = self.ix["topic_bodies"] if plural == "Topic" else self.ix["microservice_bodies"]
        async with self.limit, object_lock(body):
            if reconciled_within(body, self.grace):
                return False
            fresh = _latest(index, self.key, str(body["metadata"].get("uid")))
            if fresh is None or _pending(fresh):
                return False
            patch = kopf.Patch()
            failed = False
            try:
                await run(fresh, patch)
            except kopf.PermanentError:
                pass
            except kopf.TemporaryError:
                failed = True
            except Exception:  # noqa: BLE001 - one resource's failure must not stop the pass
                log.exception("resync of %s %s/%s failed", plural, fresh["metadata"]["namespace"],
                              fresh["metadata"]["name"])
                failed = True
            finally:
                try:
                    await patch_status(plural, fresh, patch)
                except (KubeError, OSError) as exc:
                    log.warning("status of %s %s/%s not written: %s", plural, fresh["metadata"]["namespace"],
                                fresh["metadata"]["name"], exc)
                    failed = True
                mark_reconciled(fresh)
            return failed or _retryable(fresh, patch)

    async def mark_unavailable(self, bodies: list[tuple[str, dict[str, Any]]], message: str) -> None:
        """Ready=False, BrokerUnavailable on every one that is Ready now (a condition already saying so
        is not written again)."""
        async def one(plural: str, body: dict[str, Any]) -> None:
            conditions = list((body.get("status") or {}).get("conditions") or [])
            if (logic.condition(conditions, "Ready") or {}).get("status") != "True":
                return
            async with self.limit, object_lock(body):
                patch = kopf.Patch()
                if plural == "Microservice":
                    conditions = set_condition(patch, body, conditions, "AclsApplied", "Unknown",
                                               "BrokerUnavailable", message)
                set_condition(patch, body, conditions, "Ready", False, "BrokerUnavailable", message)
                try:
                    await patch_status(plural, body, patch)
                except (KubeError, OSError) as exc:
                    log.warning("status not written: %s", exc)
        await asyncio.gather(*(one(plural, body) for plural, body in bodies
                               if not body["metadata"].get("deletionTimestamp")))


@kopf.daemon(*BROKER, cancellation_timeout=5)
async def resync(body: kopf.Body, stopped: Any, topic_bodies: kopf.Index, microservice_bodies: kopf.Index,
                 topic_index: kopf.Index, microservice_index: kopf.Index, broker_index: kopf.Index,
                 deployment_index: kopf.Index, **_: Any) -> None:
    """The EventBroker's resync loop (see the module docstring), for as long as the EventBroker exists."""
    indexes = {"topic_bodies": topic_bodies, "microservice_bodies": microservice_bodies, "topic_index": topic_index,
               "microservice_index": microservice_index, "broker_index": broker_index,
               "deployment_index": deployment_index}
    failures = 0
    await stopped.wait(random.uniform(SETTINGS.interval / 2, SETTINGS.interval))
    while not stopped and not closing():
        try:
            delay, failures = await resync_once(body, indexes, failures)
        except Exception:  # noqa: BLE001 - the loop must go on
            log.exception("resync of EventBroker %s/%s failed", body["metadata"]["namespace"],
                          body["metadata"]["name"])
            delay = SETTINGS.retry_delay
        await stopped.wait(delay)


async def resync_once(body: kopf.Body, ix: dict[str, kopf.Index], failures: int) -> tuple[float, int]:
    """One pass; (seconds until the next one, snapshot failures in a row)."""
    md = body["metadata"]
    key = (md["namespace"], md["name"])
    topics = list(ix["topic_bodies"].get(key, []))
    services = list(ix["microservice_bodies"].get(key, []))
    if md.get("deletionTimestamp") or not (topics or services):
        return SETTINGS.interval, 0
    broker = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
              "metadata": {"namespace": key[0], "name": key[1], "uid": md.get("uid")},
              "spec": copy.deepcopy(dict(body.get("spec") or {}))}
    run = Pass(key, ix)
    try:
        if resources.uses_tls(broker["spec"]):
            await broker_ca(broker)
        session = admin_for(broker, resources.bootstrap_servers(broker))
        snap = await session.snapshot(SETTINGS.snapshot_age, config_keys(topics))
        versions = await session.api_versions() if services else {}
    except BrokerUnavailable as exc:
        failures += 1
        if failures >= 2:
            await run.mark_unavailable([("Topic", b) for b in topics] + [("Microservice", b) for b in services],
                                       f"{resources.bootstrap_servers(broker)}: {exc}")
        return SETTINGS.retry_delay, failures
    except (BrokerRejected, kopf.TemporaryError) as exc:
        log.warning("resync of EventBroker %s/%s: %s", key[0], key[1], exc)
        return SETTINGS.retry_delay, 0
    jobs: list[Awaitable[bool]] = []
    for topic in topics:
        if _pending(topic) or reconciled_within(topic, run.grace):
            continue
        if topic_differs(topic, ix["topic_index"], broker, snap):
            async def run_topic(b: dict[str, Any], p: kopf.Patch) -> None:
                await _reconcile_topic(b, p, ix["topic_index"], ix["broker_index"], timed=True)  # type: ignore[arg-type]
            jobs.append(run.reconcile("Topic", topic, run_topic))
    if services:
        ctx = writer_context(ix["microservice_index"], ix["topic_index"], key)  # once per broker and pass
        for service in services:
            if _pending(service) or reconciled_within(service, run.grace):
                continue
            differs, full = microservice_differs(service, ctx, ix["topic_index"], broker, snap, versions,
                                                 session.no_authorizer, ix["deployment_index"])
            if differs:
                async def run_service(b: dict[str, Any], p: kopf.Patch, full: bool = full) -> None:
                    await _reconcile_microservice(b, p, ix["microservice_index"], ix["topic_index"],  # type: ignore[arg-type]
                                                  ix["broker_index"], timed=True, full=full, context=ctx)
                jobs.append(run.reconcile("Microservice", service, run_service))
    retry = any(await asyncio.gather(*jobs)) if jobs else False
    memory.trim()  # the previous snapshot, decoded and compared, is garbage now
    if jobs:
        log.info("resync of EventBroker %s/%s: %d of %d resources reconciled", key[0], key[1], len(jobs),
                 len(topics) + len(services))
    return (SETTINGS.retry_delay if retry else SETTINGS.interval), 0
