"""EventBroker: the brokers' StatefulSet and everything around it, status from the brokers, storage growth."""

from __future__ import annotations

import secrets
from typing import Any

import kopf

from .. import admin as kafka_admin
from .. import logic, registry_objects, resources, scram
from ..admin import (
    API_CREATE_ACLS,
    BrokerRejected,
    BrokerUnavailable,
)
from ..kube import KubeError
from .common import (
    BROKER,
    admin_for,
    broker_ca,
    closing,
    jitter,
    kube,
    only_changes,
    secret_value,
    set_condition,
)
from .settings import SETTINGS


@kopf.on.resume(*BROKER)
@kopf.on.create(*BROKER)
@kopf.on.update(*BROKER)
async def reconcile_broker(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    try:
        await _reconcile_broker(body, patch)
    finally:
        only_changes(patch, body)


@kopf.timer(*BROKER, interval=SETTINGS.interval, initial_delay=jitter)
async def refresh_broker(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    if closing():
        return  # a tick of a timer kopf started during the stop: the clients are closed
    try:
        await _reconcile_broker(body, patch)
    finally:
        only_changes(patch, body)


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
            set_condition(patch, body, conditions, "Ready", False, "BrokerUnavailable", f"{bootstrap}: {exc}")
            raise kopf.TemporaryError(str(exc), delay=SETTINGS.retry_delay) from exc
        patch.status["replicas"] = count
        patch.status["readyReplicas"] = count
        patch.status["authorizer"] = authorizer
        set_condition(patch, body, conditions, "Ready", True, "Reachable",
                      f"external broker at {bootstrap}, {count} broker(s)")
        return
    if int(spec.get("replicas", 1)) > 1 and not spec.get("tieredStorage"):
        # Refused at admission (CEL); an older CRD lets it through: start nothing that would crash.
        set_condition(patch, body, conditions, "Ready", False, "InvalidSpec",
             "replicas > 1 needs spec.tieredStorage (the brokers of a cluster share partitions through the "
             "bucket); nothing was changed")
        return
    registry_password = await _registry_password(body, patch, conditions)
    users_file = None
    if resources.uses_sasl(spec) and kafka_admin.KAFKA_PASSWORD:
        names = resources.broker_names(body["metadata"]["name"])
        try:
            current = await kube().get("v1", "Secret", body["metadata"]["namespace"], names["credentials"])
        except (KubeError, OSError) as exc:
            set_condition(patch, body, conditions, "Ready", False, "ApplyFailed", str(exc))
            raise kopf.TemporaryError(str(exc), delay=SETTINGS.retry_delay) from exc
        users_file = scram.credentials_file({kafka_admin.KAFKA_USERNAME: kafka_admin.KAFKA_PASSWORD,
                                             **registry_objects.credentials(body, registry_password)},
                                            secret_value(current, resources.CREDENTIALS_KEY))
    ns = body["metadata"]["namespace"]
    sts_name = resources.broker_names(body["metadata"]["name"])["statefulset"]
    try:
        existing = await kube().get("apps/v1", "StatefulSet", ns, sts_name)
        made = resources.claim_size(existing)
        if made:  # volumeClaimTemplates are immutable: expand the PVCs instead (or refuse)
            conditions = await _storage_expansion(body, patch, conditions, existing, made)
        else:
            patch.status["storageSize"] = (spec.get("storage") or {}).get("size", "10Gi")
        pull_secrets = SETTINGS.image_pull_secrets
        for obj in resources.eventbroker_objects(body, kafka_admin.KAFKA_USERNAME, users_file, pull_secrets,
                                                 made):
            await kube().apply(obj)
        await _registry_removed(body, patch)
        sts = await kube().get("apps/v1", "StatefulSet", ns, sts_name)
        ca = await broker_ca(body) if resources.uses_tls(spec) else "-"
    except (KubeError, OSError) as exc:
        set_condition(patch, body, conditions, "Ready", False, "ApplyFailed", str(exc))
        raise kopf.TemporaryError(str(exc), delay=SETTINGS.retry_delay) from exc
    want = int(spec.get("replicas", 1))
    ready = int(((sts or {}).get("status") or {}).get("readyReplicas") or 0)
    patch.status["replicas"] = want
    patch.status["readyReplicas"] = ready
    patch.status["authorizer"] = resources.authorizer(spec)
    if resources.uses_sasl(spec) and not kafka_admin.KAFKA_PASSWORD:
        set_condition(patch, body, conditions, "Ready", False, "NoAdminCredentials",
             "a listener authenticates but the operator has no Kafka admin password "
             "(STRATA_OPERATOR_KAFKA_SASL_PASSWORD): the brokers' credentials file has no users")
    elif not ca:
        set_condition(patch, body, conditions, "Ready", False, "CertificateNotReady",
             f"a listener uses TLS but Secret {resources.tls_secret_name(body)} has no ca.crt, tls.crt and tls.key "
             "yet (cert-manager issues it from spec.tls.issuerRef; or create it)")
    elif ready >= want:
        set_condition(patch, body, conditions, "Ready", True, "BrokersReady",
                      f"{ready}/{want} brokers ready at {bootstrap}")
    else:
        set_condition(patch, body, conditions, "Ready", False, "BrokersStarting", f"{ready}/{want} brokers ready")


async def _registry_password(body: kopf.Body, patch: kopf.Patch, conditions: list[dict[str, Any]]) -> str | None:
    """The schema registry's password on the brokers' first listener when it logs in there
    (registry_objects.logs_in): the one in its Secret, else a new one, written to the Secret now."""
    if not (registry_objects.enabled(body) and registry_objects.logs_in(body)):
        return None
    ns, name = body["metadata"]["namespace"], registry_objects.password_secret_name(body)
    try:
        password = secret_value(await kube().get("v1", "Secret", ns, name), registry_objects.PASSWORD_KEY)
        if not password:
            password = secrets.token_urlsafe(24)
            for obj in resources.registry_password_objects(body, password):
                await kube().apply(obj)
    except (KubeError, OSError) as exc:
        set_condition(patch, body, conditions, "Ready", False, "ApplyFailed", str(exc))
        raise kopf.TemporaryError(str(exc), delay=SETTINGS.retry_delay) from exc
    return password


async def _registry_removed(body: kopf.Body, patch: kopf.Patch) -> None:
    """status.schemaRegistryUrl while the registry runs; once spec.schemaRegistry.enabled is off, its
    Deployment and Service are deleted (once: the status field says they were made). Its password Secret
    and Certificate stay until the EventBroker goes (a registry enabled again reuses them); the registry's
    user leaves the brokers' credentials file at once (registry_objects.credentials)."""
    if registry_objects.enabled(body):
        patch.status["schemaRegistryUrl"] = registry_objects.registry_url(body)
        return
    if not (body.get("status") or {}).get("schemaRegistryUrl"):
        return
    ns, name = body["metadata"]["namespace"], registry_objects.registry_name(body)
    await kube().delete("apps/v1", "Deployment", ns, name)
    await kube().delete("v1", "Service", ns, name)
    patch.status["schemaRegistryUrl"] = None


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
            return set_condition(patch, body, conditions, "StorageExpansionRefused", False, "SizeUnchanged",
                        f"storage.size is the volumes' {made} again")
        return conditions
    if logic.quantity(want) < logic.quantity(made):
        patch.status["storageSize"] = made
        return set_condition(patch, body, conditions, "StorageExpansionRefused", True, "ShrinkRefused",
                    f"storage.size {want} is less than the volumes' {made}: a volume is never shrunk")
    pvcs = {name: await kube().get("v1", "PersistentVolumeClaim", ns, name)
            for name in resources.broker_pvc_names(body)}
    sc = await _storage_class(body, sts, [p for p in pvcs.values() if p])
    if not sc or sc.get("allowVolumeExpansion") is not True:
        what = f"StorageClass {sc['metadata']['name']}" if sc else "no StorageClass (none named and readable)"
        patch.status["storageSize"] = made
        return set_condition(patch, body, conditions, "StorageExpansionRefused", True, "ExpansionNotAllowed",
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
    return set_condition(patch, body, conditions, "StorageExpansionRefused", False, "VolumesExpanded",
                f"StorageClass {sc['metadata']['name']} allows expansion: volumes requested at {want}"
                + (f" (expanded {', '.join(expanded)})" if expanded else ""))
