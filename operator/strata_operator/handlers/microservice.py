"""Microservice: its credentials, ACLs, Secret and Deployment; single writer by claim; consent across namespaces."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import kopf

from .. import admin as kafka_admin
from .. import logic, resources, topic_schema
from ..admin import (
    API_ALTER_USER_SCRAM_CREDENTIALS,
    API_CREATE_ACLS,
    SECURITY_DISABLED,
    BrokerRejected,
    BrokerUnavailable,
    NoCredentials,
)
from ..kube import KubeError
from .common import (
    MICROSERVICE,
    SKIP_CLEANUP,
    BrokerMissing,
    admin_for,
    broker_ca,
    broker_or_condition,
    deadline_passed,
    existing_password,
    forget,
    kube,
    mark_reconciled,
    object_lock,
    only_changes,
    resolve_broker,
    set_condition,
)
from .observed import observed_status
from .settings import SETTINGS


@kopf.index(*MICROSERVICE)
async def microservice_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
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
    async with object_lock(body):
        try:
            await _reconcile_microservice(body, patch, microservice_index, topic_index, broker_index, timed=False)
        finally:
            only_changes(patch, body)
            mark_reconciled(body)


@dataclass
class WriterContext:
    """Single writer for every Microservice of one broker, computed once: the services (index entries,
    each one's produced topics without those their owners refuse it) and who writes each topic."""

    peers: list[dict[str, Any]]
    writer_of: dict[str, dict[str, Any]]


def writer_context(index: kopf.Index, topic_index: kopf.Index, key: tuple[str, str],
                   body: kopf.Body | None = None) -> WriterContext:
    """The writers of broker `key`'s topics, from microservice_index; `body` (a service being
    reconciled) replaces its own index entry, which may lag behind its own last status patch. The
    index entries themselves, not copies (a copy only for one whose owners refuse it a topic): every
    Microservice handler in flight at a cold start makes one, so copies would cost services squared."""
    me = (body["metadata"]["namespace"], body["metadata"]["name"]) if body is not None else None
    peers = [p for p in index.get(key, []) if (p["metadata"]["namespace"], p["metadata"]["name"]) != me]
    if body is not None:
        peers.append(_peer(body))
    owners = _topic_owners(topic_index, key, {t for p in peers for t in p["spec"]["produces"]})
    for i, peer in enumerate(peers):
        refused = logic.access_refusals(peer["metadata"]["namespace"], key[0], peer["spec"]["produces"], owners,
                                        "allowedProducers")
        if refused:
            peers[i] = {**peer, "spec": {"produces": [t for t in peer["spec"]["produces"] if t not in refused]}}
    return WriterContext(peers, logic.writers(peers))


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
                                  timed: bool = False, full: bool = False,
                                  context: WriterContext | None = None) -> None:
    """One idempotent reconcile. `timed` (the broker's resync): compare with the broker's snapshot and
    trust the last full apply (unless `full`); `context`: the broker's writers, computed by the caller."""
    conditions = list(body.get("status", {}).get("conditions") or [])
    md = body["metadata"]
    ns, name = md["namespace"], md["name"]
    resolved = await broker_or_condition(body, patch, conditions, brokers)
    if resolved is None:
        return
    broker, bootstrap = resolved
    observed = await observed_status(body, broker)  # status.observed: traffic of the last day (observed.py)
    if observed is not None:
        patch.status["observed"] = observed
    key = logic.broker_key(body)
    # A peer's claim on a topic its owner does not let it write does not count.
    ctx = context or writer_context(index, topic_index, key, body)
    owners = _topic_owners(topic_index, key, set(body["spec"].get("produces") or [])
                           | set(body["spec"].get("consumes") or []))
    unwritable = logic.access_refusals(ns, key[0], list(body["spec"].get("produces") or []), owners,
                                       "allowedProducers")
    unreadable = logic.access_refusals(ns, key[0], list(body["spec"].get("consumes") or []), owners,
                                       "allowedConsumers")
    group = resources.consumer_group(body)
    group_refused = logic.shared(broker) and not group.startswith(f"{ns}.")
    grants = logic.grants(body, ctx.peers, None if group_refused else group, unreadable, unwritable, ctx.writer_of)
    del ctx, owners  # not held while the calls below wait their turn (thousands of handlers at a cold start)
    principal = resources.principal(body)
    patch.status["principal"] = principal
    patch.status["writeClaims"] = grants.claims
    patch.status["permissions"] = grants.permissions
    patch.status["deniedWrites"] = sorted(grants.denied_writes)
    patch.status["schemaSubjects"] = topic_schema.writable_subjects(grants.permissions)
    if grants.denied_writes:
        msg = "; ".join(f"{t!r} is written by {owner}" for t, owner in sorted(grants.denied_writes.items()))
        conditions = set_condition(patch, body, conditions, "WriterConflict", True, "TopicHasWriter",
                          f"no Write permission (one writer per topic: the first to declare it keeps it "
                          f"while it declares it): {msg}")
    else:
        conditions = set_condition(patch, body, conditions, "WriterConflict", False, "SoleWriter",
                          "no other service writes the topics this one produces")
    refusals = [f"no Read on {t!r}: {r}" for t, r in sorted(grants.denied_reads.items())]
    refusals += [f"no Write on {t!r}: {r}" for t, r in sorted(grants.refused_writes.items())]
    if group_refused:
        refusals.append(f"no access to consumer group {group!r}: on an EventBroker shared with other namespaces "
                        f"a consumerGroup must start with {ns + '.'!r}")
    if refusals:
        conditions = set_condition(patch, body, conditions, "AccessDenied", True, "NotAllowedByOwner",
                                   "; ".join(refusals))
    elif logic.condition(conditions, "AccessDenied"):
        conditions = set_condition(patch, body, conditions, "AccessDenied", False, "Allowed",
                          "every declared topic and the consumer group are allowed")
    sasl = resources.authentication(broker.get("spec", {})) != "none"
    names = resources.microservice_names(name)
    client = await _client_listener(body, patch, conditions, broker)
    if client is None:
        return
    listener, client_bootstrap, ca_pem, issuer = client
    uid = str(md.get("uid"))
    # A timed reconcile within SETTINGS.full_resync of the last full one trusts what that one applied (the
    # Secret's password included) and applies again only if the objects it would apply changed.
    cached = _applied.get(uid) if timed and not full else None
    if cached is not None and time.monotonic() - cached.at > SETTINGS.full_resync:
        cached = None
    try:
        existing = None if cached else await kube().get("v1", "Secret", ns, names["secret"])
        old_password = cached.password if cached else existing_password(existing)
        password = old_password or secrets.token_urlsafe(24)
        pull_secrets = SETTINGS.image_pull_secrets
        objects = list(resources.microservice_objects(body, client_bootstrap, password, sasl, pull_secrets,
                                                      listener, ca_pem, issuer))
        digest = _digest(objects)
        if cached is None or cached.digest != digest:
            for obj in objects:
                await kube().apply(obj)
            _applied[uid] = _Applied(digest, time.monotonic(), password)
        deployment = None if resources.credentials_only(body) else \
            await kube().get("apps/v1", "Deployment", ns, names["deployment"])
    except (KubeError, OSError) as exc:
        set_condition(patch, body, conditions, "Ready", False, "ApplyFailed", str(exc))
        raise kopf.TemporaryError(str(exc), delay=SETTINGS.retry_delay) from exc
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
        snap = await admin.snapshot(SETTINGS.snapshot_age) if timed else None
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
                conditions = set_condition(patch, body, conditions, "AclsApplied", True, "AclsApplied",
                                  f"{len(grants.acls)} ACL(s) for {principal} (+{created} -{deleted})")
            except BrokerRejected as exc:
                if exc.code != SECURITY_DISABLED:
                    raise
                no_authorizer = admin.no_authorizer = True
        if no_authorizer:
            conditions = set_condition(patch, body, conditions, "AclsApplied", False, "BrokerHasNoAuthorizer",
                              "the broker does not enforce ACLs (no CreateAcls, or no authorizer enabled): "
                              "permissions are computed (status.permissions) but any client may write any topic")
    except (BrokerUnavailable, BrokerRejected) as exc:
        reason = "NoAdminCredentials" if isinstance(exc, NoCredentials) else "BrokerUnavailable"
        conditions = set_condition(patch, body, conditions, "AclsApplied", "Unknown", reason, f"{bootstrap}: {exc}")
        set_condition(patch, body, conditions, "Ready", False, reason, f"{bootstrap}: {exc}")
        if isinstance(exc, BrokerUnavailable):
            return  # retried by the broker's resync once the broker answers (resync.py), not per service
        raise kopf.TemporaryError(str(exc), delay=SETTINGS.retry_delay) from exc
    if grants.denied_writes:
        set_condition(patch, body, conditions, "Ready", False, "WriterConflict",
             "deployed, but without Write on: " + ", ".join(sorted(grants.denied_writes)))
    elif refusals:
        set_condition(patch, body, conditions, "Ready", False, "AccessDenied",
             "deployed, but without some declared permissions (see AccessDenied)")
    elif not available:
        set_condition(patch, body, conditions, "Ready", False, "DeploymentUnavailable",
             f"credentials and permissions in place for {principal}; the Deployment is not available: {availability}")
    else:
        set_condition(patch, body, conditions, "Ready", True, "Reconciled",
             f"{availability}; credentials and permissions in place for {principal}")


async def _client_listener(body: kopf.Body, patch: kopf.Patch, conditions: list[dict[str, Any]],
                           broker: dict[str, Any]) -> tuple[dict[str, Any], str, str | None, Any] | None:
    """The listener a Microservice connects to (spec.listener, else the first), its bootstrap address, the
    broker's CA (TLS listeners) and the issuer of its client certificate (mutual TLS); None after setting
    Ready=False when the listener does not exist or its principal is the operator's own."""
    try:
        listener = resources.client_listener(broker, body["spec"].get("listener"))
    except KeyError:
        set_condition(patch, body, conditions, "Ready", False, "ListenerNotFound",
             f"the EventBroker has no listener {body['spec'].get('listener')!r}")
        return None
    if resources.principal_name(body) == kafka_admin.KAFKA_USERNAME:
        set_condition(patch, body, conditions, "Ready", False, "ReservedPrincipal",
             f"principal User:{kafka_admin.KAFKA_USERNAME} is the operator's own: no Microservice may have it")
        return None
    ca_pem = None
    if resources.listener_protocol(listener) in ("SSL", "SASL_SSL"):
        ca_pem = await broker_ca(broker)
        if not ca_pem:
            msg = (f"the EventBroker's TLS Secret {resources.tls_secret_name(broker)} has no ca.crt yet "
                   "(cert-manager issues it, or it must be created)")
            set_condition(patch, body, conditions, "Ready", False, "CertificateNotReady", msg)
            raise kopf.TemporaryError(msg, delay=SETTINGS.retry_delay)
    tls = broker["spec"].get("tls") or {}
    issuer = resources.issuer_ref(broker) if resources.mutual_tls(listener) and tls.get("issuerRef") else None
    return listener, resources.listener_bootstrap(broker, listener), ca_pem, issuer



@kopf.on.delete(*MICROSERVICE)
async def delete_microservice(body: kopf.Body, broker_index: kopf.Index, **_: Any) -> None:
    """Revoke the principal's ACLs and remove its SCRAM credential; the Deployment, ServiceAccount
    and Secret are garbage-collected through their ownerReferences."""
    forget(body)
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
        if deadline_passed(body):
            kopf.warn(body, reason="CleanupAbandoned", message=f"ACLs not revoked ({exc}); finalizer released")
            return
        raise kopf.TemporaryError(str(exc), delay=SETTINGS.retry_delay) from exc
