"""Leader election on a coordination.k8s.io/v1 Lease, so two operator replicas never both reconcile.

`strata operator --leader-election` (the chart's default, with two replicas) runs `run_elected`:

1. Standby: the process serves the liveness endpoint itself (200, `{"standby": ...}`) and polls the
   Lease every `retry` seconds. It takes the Lease when nobody holds it, or when the holder's record
   (holder, renewTime) has not changed for `leaseDurationSeconds` as measured on this process' own
   monotonic clock (as client-go does: no trust in the other pod's wall clock).
2. Leader: it stops its own health server and starts kopf (handlers, timers, the placement
   controller, kopf's liveness endpoint), while a task renews the Lease every `renew` seconds.
3. Losing the Lease: when the leader cannot renew for `renew_deadline` seconds (shorter than the
   lease duration, so it stops before a standby may take over), or sees another holder, it exits the
   process at once (exit code 70) and Kubernetes restarts the container as a standby. Exiting, not
   "pausing kopf", is the safe choice: nothing of the old leader's handlers can still be running
   when the standby's start.
4. Graceful stop (SIGTERM, a rolling update): kopf stops, then the Lease is released (empty holder),
   so the standby takes over at its next poll instead of waiting for expiry.

Writes use optimistic concurrency: a new Lease is created with POST (409 when another replica was
first), and an existing one is changed by a merge patch that carries the `resourceVersion` read just
before, so the API server rejects it (409) when someone else wrote in between.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .kube import Kube, KubeError

API_VERSION = "coordination.k8s.io/v1"
SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
LOST_EXIT_CODE = 70
logger = logging.getLogger("strata.leader")


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, str(default)))


@dataclass(frozen=True)
class Timing:
    """Seconds: a holder's record older than `duration` is expired; the leader renews every `renew`
    and gives up after `renew_deadline` without success; standbys poll every `retry`."""

    duration: float = 15.0
    renew: float = 5.0
    renew_deadline: float = 10.0
    retry: float = 2.0

    @classmethod
    def from_env(cls) -> Timing:
        t = cls(duration=_env_float("STRATA_OPERATOR_LEASE_DURATION", 15.0),
                renew=_env_float("STRATA_OPERATOR_LEASE_RENEW", 5.0),
                renew_deadline=_env_float("STRATA_OPERATOR_LEASE_RENEW_DEADLINE", 10.0),
                retry=_env_float("STRATA_OPERATOR_LEASE_RETRY", 2.0))
        if not (t.renew < t.renew_deadline < t.duration):
            raise ValueError(f"lease timing needs renew < renew deadline < duration: {t}")
        return t


def default_namespace() -> str:
    """Where the Lease lives: STRATA_OPERATOR_NAMESPACE (the chart sets it to the pod's namespace), else
    the in-cluster service account's namespace, else `default`."""
    if os.environ.get("STRATA_OPERATOR_NAMESPACE"):
        return os.environ["STRATA_OPERATOR_NAMESPACE"]
    try:
        with open(SA_NAMESPACE) as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def default_identity() -> str:
    """This replica's name in the Lease: the pod name (the hostname) and a random suffix, so a restarted
    container never mistakes its predecessor's record for its own."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _now() -> str:
    """A MicroTime, as the API server stores renewTime/acquireTime."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """One candidate for the Lease `namespace/name`."""

    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, timing: Timing | None = None) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing or Timing()
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self.holder: str | None = None

    async def try_acquire_or_renew(self) -> bool:
        """One round: True when this candidate holds the Lease afterwards."""
        lease = await self.kube.get(API_VERSION, "Lease", self.namespace, self.name)
        now = _now()
        if lease is None:
            try:
                await self.kube.create({
                    "apiVersion": API_VERSION, "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.timing.duration),
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}})
            except KubeError as exc:
                if exc.status == 409:
                    return False
                raise
            self.holder = self.identity
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or None
        self.holder = holder
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        duration = float(spec.get("leaseDurationSeconds") or self.timing.duration)
        if holder and holder != self.identity and time.monotonic() - self._observed_at < duration:
            return False
        new_spec: dict[str, Any] = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.timing.duration),
                                    "renewTime": now}
        if holder != self.identity:
            new_spec["acquireTime"] = now
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        patch = {"metadata": {"resourceVersion": lease["metadata"].get("resourceVersion")}, "spec": new_spec}
        try:
            out = await self.kube.merge_patch(API_VERSION, "Lease", self.namespace, self.name, patch)
        except KubeError as exc:
            if exc.status == 409:  # written by another candidate in between
                return False
            raise
        if out is None:
            return False
        self.holder = self.identity
        return True

    async def _attempt(self, timeout: float) -> bool:
        try:
            return await asyncio.wait_for(self.try_acquire_or_renew(), timeout=max(timeout, 0.5))
        except (KubeError, OSError, TimeoutError) as exc:
            logger.warning("Lease %s/%s: %s", self.namespace, self.name, exc)
            return False

    async def acquire(self) -> None:
        """Wait until this candidate holds the Lease."""
        logger.info("Lease %s/%s: %s is a candidate", self.namespace, self.name, self.identity)
        while not await self._attempt(self.timing.retry * 2):
            await asyncio.sleep(self.timing.retry)
        logger.info("Lease %s/%s: %s is the leader", self.namespace, self.name, self.identity)

    async def keep(self) -> str:
        """Renew until the Lease is lost; returns why."""
        last_ok = time.monotonic()
        delay = self.timing.renew
        while True:
            await asyncio.sleep(delay)
            left = self.timing.renew_deadline - (time.monotonic() - last_ok)
            if await self._attempt(min(left, self.timing.retry * 2)):
                last_ok, delay = time.monotonic(), self.timing.renew
                continue
            if self.holder not in (None, self.identity):
                return f"the Lease is held by {self.holder}"
            if time.monotonic() - last_ok >= self.timing.renew_deadline:
                return f"not renewed for {self.timing.renew_deadline:.0f}s"
            delay = self.timing.retry

    async def release(self) -> None:
        """Give the Lease up (empty holder) if this candidate still holds it."""
        try:
            lease = await self.kube.get(API_VERSION, "Lease", self.namespace, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            await self.kube.merge_patch(API_VERSION, "Lease", self.namespace, self.name, {
                "metadata": {"resourceVersion": lease["metadata"].get("resourceVersion")},
                "spec": {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": _now()}})
            logger.info("Lease %s/%s: released by %s", self.namespace, self.name, self.identity)
        except (KubeError, OSError, TimeoutError) as exc:
            logger.warning("Lease %s/%s: could not release: %s", self.namespace, self.name, exc)


async def _standby_health(endpoint: str | None, elector: LeaderElector) -> Any:
    """kopf's liveness endpoint is served only once kopf runs; a standby answers it itself."""
    if not endpoint:
        return None
    import urllib.parse

    import aiohttp.web

    parts = urllib.parse.urlsplit(endpoint)

    async def health(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"standby": True, "leader": elector.holder})

    app = aiohttp.web.Application()
    app.add_routes([aiohttp.web.get(parts.path or "/", health)])
    runner = aiohttp.web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, parts.hostname or "127.0.0.1", parts.port or 80).start()
    return runner


async def run_elected(namespace: str, name: str, liveness: str | None, operator: Any,
                      identity: str | None = None, timing: Timing | None = None) -> None:
    """Wait for the Lease, then run `operator()` (a coroutine function: kopf) while renewing it; exit
    the process when the Lease is lost, release it when the operator stops."""
    kube = Kube.login()
    elector = LeaderElector(kube, namespace, name, identity or default_identity(), timing or Timing.from_env())
    health = await _standby_health(liveness, elector)
    try:
        await elector.acquire()
    finally:
        if health is not None:
            await health.cleanup()
    keeper = asyncio.create_task(elector.keep(), name="lease keeper")
    running = asyncio.create_task(operator(), name="operator")
    done, _ = await asyncio.wait({keeper, running}, return_when=asyncio.FIRST_COMPLETED)
    if keeper in done:
        logger.critical("Lease %s/%s lost (%s): exiting so that only the leader reconciles",
                        namespace, name, keeper.result())
        logging.shutdown()
        os._exit(LOST_EXIT_CODE)
    keeper.cancel()
    await elector.release()
    await kube.close()
    try:
        running.result()
    except TimeoutError:
        # kopf re-raises the error of a task it had to cancel at the end of its stop: a timer or daemon
        # it spawned for a watch event that arrived after the stop began (its wait was cut short). The
        # operator has stopped and the Lease is released; that is not a failure of the process.
        logger.warning("stopped; a handler kopf started during the stop was cancelled")
