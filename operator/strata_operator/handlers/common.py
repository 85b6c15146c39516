"""What the handlers of every kind share: the Kubernetes client, kopf's settings, conditions,
the EventBroker index and lookup, the broker's admin session."""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import time
from typing import Any

import kopf

from .. import admin as kafka_admin
from .. import logic, resources
from ..crds import GROUP, VERSION
from ..kube import Kube, KubeError
from .settings import SETTINGS

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
    # ...but kopf's own per-object log lines only from WARNING (a handler that failed): "Handler ...
    # succeeded" and "Creation is processed" would be two Events (two POSTs) per handler run, thousands
    # at a cold start. The operator's own Events (transitions, kopf.info/warn) are posted as before.
    for handler in logging.getLogger("kopf.objects").handlers:
        if type(handler).__name__ == "K8sPoster" and not any(isinstance(f, _OnlyFailures) for f in handler.filters):
            handler.addFilter(_OnlyFailures())
    settings.batching.error_delays = [1, 2, 5, 10, 20, 30, 60]
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # A resource being deleted waits for its timer to stop; one caught mid-reconcile (awaiting the
    # broker) is polled for every this many seconds, not kopf's 60.
    settings.background.cancellation_polling = 2
    settings.background.instant_exit_timeout = 0.5


class _OnlyFailures(logging.Filter):
    """Passes log records of WARNING and above (kopf's poster of log lines as Events)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


_closing = False


def closing() -> bool:
    """The operator is stopping: its clients are closed. A daemon that kopf (re)spawned for an event
    that arrived during the stop ends instead of looping against closed clients."""
    return _closing


@kopf.on.cleanup()
async def close(**_: Any) -> None:
    global _closing
    _closing = True
    if _kube is not None:
        await _kube.close()
    kafka_admin.executor().shutdown(wait=False, cancel_futures=True)


# -- shared helpers ------------------------------------------------------------------------


def jitter(**_: Any) -> float:
    """A timer's initial delay: a random point of the interval (spreads the ticks of resources that
    were created, or found at startup, together)."""
    return random.uniform(0.0, SETTINGS.interval)


def only_changes(patch: kopf.Patch, body: kopf.Body) -> None:
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


# uid -> a lock held while one reconcile of that object runs: a kopf handler and the broker's resync
# (resync.py) never reconcile the same object at once. With the monotonic time its last reconcile ended.
_locks: dict[str, asyncio.Lock] = {}
_reconciled: dict[str, float] = {}


def object_lock(body: dict[str, Any]) -> asyncio.Lock:
    """The reconcile lock of this object (by uid), made on first use."""
    uid = str(body.get("metadata", {}).get("uid"))
    lock = _locks.get(uid)
    if lock is None:
        lock = _locks[uid] = asyncio.Lock()
    return lock


def mark_reconciled(body: dict[str, Any]) -> None:
    _reconciled[str(body.get("metadata", {}).get("uid"))] = time.monotonic()


def reconciled_within(body: dict[str, Any], seconds: float) -> bool:
    """Whether a reconcile of this object ended less than `seconds` ago (the watch may not have
    brought its status patch yet: the resync leaves it for its next pass)."""
    at = _reconciled.get(str(body.get("metadata", {}).get("uid")))
    return at is not None and time.monotonic() - at < seconds


def forget(body: dict[str, Any]) -> None:
    """A deleted object's lock and reconcile time."""
    uid = str(body.get("metadata", {}).get("uid"))
    _locks.pop(uid, None)
    _reconciled.pop(uid, None)


async def patch_status(kind: str, body: dict[str, Any], patch: kopf.Patch) -> bool:
    """What a kopf handler's patch does, for a reconcile run outside kopf (the resync): only the
    changed status fields (only_changes), as a merge patch of the status subresource; nothing at all
    when nothing changed. True when something was written."""
    only_changes(patch, body)
    status = patch.get("status")
    if not status:
        return False
    md = body["metadata"]
    if kind == "Topic":
        await kube().patch_status(f"{GROUP}/{VERSION}", "Topic", md["namespace"], md["name"], dict(status))
    else:
        await kube().patch_status(f"{GROUP}/{VERSION}", "Microservice", md["namespace"], md["name"], dict(status))
    return True


def generation(body: kopf.Body) -> int | None:
    gen = body.get("metadata", {}).get("generation")
    return int(gen) if gen is not None else None


def set_condition(patch: kopf.Patch, body: kopf.Body, conditions: list[dict[str, Any]], type_: str, status: bool | str,
         reason: str, message: str) -> list[dict[str, Any]]:
    """Set one condition in the patch; post an Event when it transitions."""
    old = logic.condition(conditions, type_)
    new = logic.set_condition(conditions, type_, status, reason, message, generation(body))
    status_text = status if isinstance(status, str) else ("True" if status else "False")
    if old is None or old.get("status") != status_text or old.get("reason") != reason:
        bad = (type_ in ("Ready", "Placement") and status_text == "False") or (
            type_.endswith(("Conflict", "Denied", "Refused")) and status_text == "True")
        kopf.event(body, type="Warning" if bad else "Normal", reason=reason, message=f"{type_}: {message}")
    patch.status["conditions"] = new
    if generation(body) is not None:
        patch.status["observedGeneration"] = generation(body)
    return new


@kopf.index(*BROKER)
async def broker_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
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
        raise kopf.TemporaryError(f"cannot read EventBroker {ns}/{name}: {exc}", delay=SETTINGS.retry_delay) from exc
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
                                  delay=SETTINGS.retry_delay) from exc
    pem = secret_value(secret, "ca.crt")
    if pem:
        _BROKER_CA[(ns, name)] = pem
    return pem


async def broker_or_condition(body: kopf.Body, patch: kopf.Patch, conditions: list[dict[str, Any]],
                               brokers: kopf.Index | None = None) -> tuple[dict[str, Any], str] | None:
    """resolve_broker, or None after setting Ready=False with the reason (NamespaceNotAllowed changes
    only when the EventBroker does, so the timer re-checks it; a missing broker is retried)."""
    try:
        return await resolve_broker(body, brokers=brokers)
    except NamespaceNotAllowed as exc:
        set_condition(patch, body, conditions, "Ready", False, exc.REASON, str(exc))
        return None
    except BrokerMissing as exc:
        set_condition(patch, body, conditions, "Ready", False, exc.REASON, str(exc))
        raise kopf.TemporaryError(str(exc), delay=SETTINGS.retry_delay) from exc


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


def deadline_passed(body: kopf.Body) -> bool:
    ts = body.get("metadata", {}).get("deletionTimestamp")
    if not ts:
        return False
    started = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return (datetime.datetime.now(tz=datetime.UTC) - started).total_seconds() > SETTINGS.delete_timeout

def secret_value(secret: dict[str, Any] | None, key: str) -> str | None:
    import base64

    if not secret:
        return None
    if (secret.get("stringData") or {}).get(key):
        return secret["stringData"][key]  # an API server never returns this; the emulator may
    raw = (secret.get("data") or {}).get(key)
    return base64.b64decode(raw).decode() if raw else None


def existing_password(secret: dict[str, Any] | None) -> str | None:
    return secret_value(secret, "KAFKA_SASL_PASSWORD")
