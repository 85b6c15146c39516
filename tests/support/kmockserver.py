"""kmock's Kubernetes emulator as its own process, plus a tiny synchronous client for tests.

The emulator stores objects and serves list/watch/get/create/patch/delete; it does not implement
metadata.generation, the spec/status split, pruning or CEL (those are tested separately).
Server-side apply (PATCH as application/apply-patch+yaml, what the operator writes its objects with)
is emulated as a merge patch that creates a missing object: field managers, managedFields, conflicts
and the removal of fields an applier stops sending are tested against a real API server only
(tests/e2e). resourceVersion is never bumped, so optimistic concurrency (the Lease) always succeeds,
and kopf cannot tell an older body from its own patch's echo: when its watch is restarted (every
settings.watching.client_timeout, 330 s) the relisted body of an object whose create handler is still
running is older than the handler's patch, and the handler runs once more (bench/operator_scale.py).
A create with only metadata.generateName gets a name as the API server makes it (generated_name: the
prefix cut to 58 characters, then 5 random characters of the API server's alphabet, drawn again while
the name is taken, so a 409 answers only a create that names an existing object), as kopf's Events are.

Made to scale to thousands of objects (bench/operator_scale.py): a get, patch, delete or create looks
its object up by key (kmock scans every stored object), a request is matched against the reactions on
its own (kmock scans every request it ever logged), and requests are counted, not kept. GET
/_kmock/stats answers {"requests": n, "byMethod": {...}} (not counted itself): what the benchmark reads.
Run: python tests/support/kmockserver.py  -> prints the server URL on stdout, serves until killed.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import json
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

NAMESPACED = {
    "v1/events": "Event", "v1/secrets": "Secret", "v1/serviceaccounts": "ServiceAccount",
    "v1/configmaps": "ConfigMap", "v1/services": "Service", "v1/pods": "Pod",
    "apps/v1/deployments": "Deployment", "apps/v1/statefulsets": "StatefulSet",
    "policy/v1/poddisruptionbudgets": "PodDisruptionBudget", "v1/persistentvolumeclaims": "PersistentVolumeClaim",
    "cert-manager.io/v1/certificates": "Certificate",
    "strata.dev/v1alpha1/eventbrokers": "EventBroker", "strata.dev/v1alpha1/topics": "Topic",
    "strata.dev/v1alpha1/microservices": "Microservice", "strata.dev/v1alpha1/costreports": "CostReport",
    "coordination.k8s.io/v1/leases": "Lease",
}
CLUSTER = {"v1/namespaces": "Namespace", "storage.k8s.io/v1/storageclasses": "StorageClass",
           "apiextensions.k8s.io/v1/customresourcedefinitions": "CustomResourceDefinition"}
VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}


STATS_PATH = "/_kmock/stats"

# The API server's generated names (k8s.io/apiserver names.SimpleNameGenerator with
# k8s.io/apimachinery/pkg/util/rand.String): the prefix cut to 63 - 5 characters, then 5 characters
# of an alphabet without vowels (no words) and without 0, 1, 3 (no look-alikes): 27**5, about 14.3
# million names per prefix. A generated name that is taken is drawn again (KEP-4420, up to 7 retries).
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
GENERATED_LENGTH = 5
MAX_PREFIX = 63 - GENERATED_LENGTH
GENERATE_ATTEMPTS = 8


class NameClash(Exception):
    """Every generated name tried was taken (the API server answers 409 AlreadyExists then too)."""


def generated_name(prefix: str, taken: Callable[[str], bool], rng: random.Random | None = None) -> str:
    """A name for a create with metadata.generateName `prefix`, as the API server makes it: the prefix
    (cut to MAX_PREFIX characters) and GENERATED_LENGTH random characters of NAME_ALPHABET, drawn
    again while `taken(name)`; NameClash after GENERATE_ATTEMPTS draws that were all taken."""
    draw = rng or random.SystemRandom()
    base = prefix[:MAX_PREFIX]
    for _ in range(GENERATE_ATTEMPTS):
        name = base + "".join(draw.choice(NAME_ALPHABET) for _ in range(GENERATED_LENGTH))
        if not taken(name):
            return name
    raise NameClash(f"{GENERATE_ATTEMPTS} names generated from {prefix!r} were all taken")


class _CountingLog(list):  # type: ignore[type-arg]
    """Stands in for kmock's request logs: counts what is appended, keeps nothing (kmock would keep
    every request forever, and scan them all for each new one)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def append(self, item: Any) -> None:
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Any:
        return iter(())


def emulator_class() -> type:
    """kmock's emulator, plus server-side apply as create-or-merge (see the module docstring), with
    objects looked up by key and requests counted rather than logged."""
    import aiohttp.web
    import kmock
    from kmock._internal import enums, k8s

    current: contextvars.ContextVar[Any] = contextvars.ContextVar("kmock_request", default=None)

    class Emulator(kmock.KubernetesEmulator):  # type: ignore[misc]
        def __attrs_post_init__(self) -> None:
            super().__attrs_post_init__()
            self._requests = _CountingLog()
            self.by_method: collections.Counter[str] = collections.Counter()
            self._drawn: set[tuple[Any, Any, str]] = set()  # generated names of creates not stored yet

        def __iter__(self) -> Any:
            # kmock asks `request in reaction` by iterating every logged request through the
            # reaction's filters; the only request worth checking is the one being served.
            request = current.get()
            return iter(() if request is None else (request,))

        async def __call__(self, raw_request: Any) -> Any:
            if raw_request.path == STATS_PATH:
                return aiohttp.web.json_response({"requests": sum(self.by_method.values()),
                                                  "byMethod": dict(self.by_method)})
            watch = raw_request.method == "GET" and raw_request.query.get("watch") in ("true", "1")
            self.by_method["WATCH" if watch else raw_request.method] += 1
            for payload in self._payloads:  # the reactions' own request logs: count, do not keep
                if not isinstance(payload._requests, _CountingLog):
                    object.__setattr__(payload, "_requests", _CountingLog())
            return await super().__call__(raw_request)

        def _object(self, request: Any) -> Any:
            obj = self._objects._objects.get((request.resource, request.namespace, request.name))
            return None if obj is None else obj

        async def _serve_fetch(self, request: Any) -> Any:
            obj = self._object(request)
            if obj is None or obj.deleted:
                raise k8s.KubernetesObjectNotFoundError()
            return obj.raw

        async def _serve_create(self, request: Any) -> Any:
            data = request.data or {}
            key = (request.resource, request.namespace or data.get("metadata", {}).get("namespace"),
                   request.name or data.get("metadata", {}).get("name"))
            return self._objects._objects[key].raw

        async def _serve_update(self, request: Any) -> Any:
            return self._object(request).last.raw

        async def _serve_delete(self, request: Any) -> Any:
            return self._object(request).last.raw

        async def _serve_list(self, request: Any) -> Any:
            if request.resource not in self._resources:
                return await super()._serve_list(request)  # kmock's own lookup, and its 404
            items = [obj.raw for (resource, namespace, _), obj in self._objects._objects.items()
                     if resource == request.resource and not obj.deleted
                     and (request.namespace is None or namespace == request.namespace)]
            return {"metadata": {"resourceVersion": "..."}, "items": items}

        async def _serve_watch(self, request: Any) -> Any:
            """kmock's watch, without its gap: the position in the resource's event bus is taken under
            the same lock as the listing, so an event of a write made while the listing is streamed
            comes after it (kmock subscribes after streaming it, and loses such events; kopf then
            acts on the listed, older body)."""
            yield b""
            bus = self._buses[request.resource]
            async with self._lock:
                marker = await bus.mark()
                events = [{"type": "ADDED", "object": obj.raw}
                          for (resource, namespace, name), obj in self._objects._objects.items()
                          if resource == request.resource and not obj.deleted
                          and (request.namespace is None or namespace == request.namespace)
                          and (request.name is None or name == request.name)]
            try:
                for event in events:
                    yield event
                async for event in bus.stream(since=marker):
                    md = (event.get("object") or {}).get("metadata") or {}
                    if ((request.namespace is None or md.get("namespace") == request.namespace)
                            and (request.name is None or md.get("name") == request.name)):
                        yield event
            finally:
                await bus.unmark(marker)

        async def _handle(self, request: Any) -> Any:
            current.set(request)
            metadata = request.data.get("metadata") if isinstance(request.data, dict) else None
            if (request.action == enums.action.CREATE and isinstance(metadata, dict)
                    and not metadata.get("name") and metadata.get("generateName")):
                # As the API server does (kopf names its Events so): a name from the prefix, drawn
                # again while taken by a stored object or by a create still on its way to the store.
                namespace = request.namespace or metadata.get("namespace")

                def taken(name: str) -> bool:
                    obj = self._objects._objects.get((request.resource, namespace, name))
                    return (obj is not None and not obj.deleted) or (request.resource, namespace, name) in self._drawn
                try:
                    metadata["name"] = generated_name(metadata["generateName"], taken)
                except NameClash:
                    raise k8s.KubernetesObjectConflictError() from None
                drawn = (request.resource, namespace, metadata["name"])
                self._drawn.add(drawn)
                try:
                    return await super()._handle(request)
                finally:
                    self._drawn.discard(drawn)
            if (request.action == enums.action.UPDATE and request.name is not None
                    and "apply-patch" in (request.headers.get("Content-Type") or "")
                    and isinstance(request.data, dict)):
                key = (request.resource, request.namespace, request.name)
                async with self._lock:  # apply to a missing object: create it first, then merge as usual
                    if key not in self._objects or self._objects[key].deleted:
                        data = dict(request.data)
                        data["metadata"] = {**(data.get("metadata") or {}), "name": request.name,
                                            **({"namespace": request.namespace} if request.namespace else {})}
                        if key not in self._objects:
                            self._objects[key] = data
                        else:
                            self._objects[key].create(data)
                        await self._buses[request.resource].put({"type": "ADDED",
                                                                 "object": self._objects[key].last.raw})
            return await super()._handle(request)

    return Emulator


async def serve() -> None:
    import kmock

    emulator = emulator_class()()
    for key, kind in {**NAMESPACED, **CLUSTER}.items():
        emulator.resources[key] = kmock.ResourceInfo(kind=kind, singular=kind.lower(), namespaced=key in NAMESPACED,
                                                     verbs=VERBS)
    async with emulator, kmock.Server(emulator) as server:
        print(str(server.url).rstrip("/"), flush=True)
        await asyncio.Event().wait()


PLURALS = {kind: key for key, kind in {**NAMESPACED, **CLUSTER}.items()}


class KubeEmulatorProcess:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> KubeEmulatorProcess:
        self.proc = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE,
                                     stderr=open(self.workdir / "kmock.log", "w"), text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError(f"kmock did not start: {(self.workdir / 'kmock.log').read_text()}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kubeconfig(self) -> Path:
        path = self.workdir / "kubeconfig.yaml"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {"token": "test"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": "default"}}],
        }))
        return path

    # -- a minimal client ----------------------------------------------------------------

    def _path(self, kind: str, namespace: str | None, name: str | None = None) -> str:
        key = PLURALS[kind]
        group_version, plural = key.rsplit("/", 1)
        base = f"/api/{group_version}" if group_version == "v1" else f"/apis/{group_version}"
        return base + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}" + (f"/{name}" if name else "")

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/merge-patch+json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def create(self, obj: dict[str, Any]) -> Any:
        md = obj.setdefault("metadata", {})
        if obj["kind"] != "StorageClass":  # cluster-scoped, created without a namespace in its path
            md.setdefault("namespace", "default")
        md.setdefault("uid", f"uid-{md.get('namespace', '')}-{md['name']}-{time.monotonic_ns()}")
        md.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        md.setdefault("generation", 1)
        md.setdefault("resourceVersion", "1")  # kopf's JSON patches test it; the emulator never bumps it
        return self.request("POST", self._path(obj["kind"], md.get("namespace")), obj, "application/json")

    def get(self, kind: str, name: str, namespace: str = "default") -> Any:
        return self.request("GET", self._path(kind, namespace, name))

    def list(self, kind: str, namespace: str | None = "default") -> list[Any]:
        return (self.request("GET", self._path(kind, namespace)) or {}).get("items", [])

    def patch(self, kind: str, name: str, body: dict[str, Any], namespace: str = "default") -> Any:
        return self.request("PATCH", self._path(kind, namespace, name), body)

    def patch_spec(self, kind: str, name: str, spec: dict[str, Any], namespace: str = "default") -> Any:
        """A spec change, as the API server would record it: generation + 1."""
        current = self.get(kind, name, namespace)
        generation = int(current["metadata"].get("generation", 1)) + 1
        return self.patch(kind, name, {"spec": spec, "metadata": {"generation": generation}}, namespace)

    def delete(self, kind: str, name: str, namespace: str = "default") -> Any:
        return self.request("DELETE", self._path(kind, namespace, name))


if __name__ == "__main__":
    asyncio.run(serve())
