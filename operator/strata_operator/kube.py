"""The operator's Kubernetes API façade over the official async client, `kubernetes_asyncio`.

Every request goes through one `kubernetes_asyncio.client.ApiClient` (its `call_api`), so TLS,
bearer tokens, client certificates, exec plugins and in-cluster token rotation are the official
client's. Credentials: the in-cluster service account, else the kubeconfig (`KUBECONFIG`, else
~/.kube/config), loaded on the first request.

Objects the operator owns are written with server-side apply (`apply`): a PATCH of content type
`application/apply-patch+yaml` as field manager `strata-operator`, with `force=true`. The body is the
builder's whole desired object (resources.py), so the operator owns exactly the fields it builds;
a field it leaves out (a Deployment's `spec.replicas` when a Microservice leaves replicas to an HPA)
stays with whichever manager set it. `force` takes back a field that another manager changed
(kubectl edit, a GitOps tool applying the same object): the operator is the controller of what it
builds, and a field it builds must hold its value. A field the operator stops building is removed
by the API server when no other manager owns it (ordinary SSA semantics).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException

FIELD_MANAGER = "strata-operator"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
TIMEOUT = 30.0

CORE = {"ConfigMap": "configmaps", "Secret": "secrets", "Service": "services", "ServiceAccount": "serviceaccounts",
        "Event": "events", "PersistentVolumeClaim": "persistentvolumeclaims", "Pod": "pods"}
GROUPED = {"StatefulSet": "statefulsets", "Deployment": "deployments", "PodDisruptionBudget": "poddisruptionbudgets",
           "EventBroker": "eventbrokers", "Topic": "topics", "Microservice": "microservices",
           "CostReport": "costreports", "Lease": "leases", "Certificate": "certificates",
           "StorageClass": "storageclasses"}


class KubeError(Exception):
    """The API server answered with an error status (404 is not one: reads and deletes return None)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    """The REST path of a kind (its collection, or one object when `name` is given)."""
    plural = CORE.get(kind) or GROUPED[kind]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    out = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    return out + (f"/{name}" if name else "")


async def load_configuration() -> k8s_client.Configuration:
    """The client configuration: in-cluster (service account token, refreshed as the kubelet rotates
    it), else the kubeconfig. Raises RuntimeError when neither is there."""
    configuration = k8s_client.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
        return configuration
    except k8s_config.ConfigException:
        pass
    try:
        await k8s_config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None,
                                          client_configuration=configuration, persist_config=False)
    except (k8s_config.ConfigException, OSError) as exc:
        raise RuntimeError(f"no Kubernetes credentials: neither in-cluster nor a kubeconfig ({exc})") from exc
    return configuration


class Kube:
    """get/list/apply/delete and raw requests, all through one kubernetes_asyncio ApiClient."""

    def __init__(self, configuration: k8s_client.Configuration | None = None) -> None:
        self._configuration = configuration
        self._api: k8s_client.ApiClient | None = None
        self._lock: asyncio.Lock | None = None

    @classmethod
    def login(cls) -> Kube:
        """A client whose credentials are loaded on its first request (in-cluster, else kubeconfig)."""
        return cls()

    async def api_client(self) -> k8s_client.ApiClient:
        """The shared ApiClient (created on first use, inside the running event loop)."""
        if self._api is None:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._api is None:
                    configuration = self._configuration or await load_configuration()
                    api = k8s_client.ApiClient(configuration)
                    api.user_agent = f"{FIELD_MANAGER}/kubernetes_asyncio"
                    self._api = api
        return self._api

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None

    async def request(self, method: str, url_path: str, body: Any = None, content_type: str = "application/json",
                      query: list[tuple[str, str]] | None = None) -> dict[str, Any] | None:
        """One API call; the decoded JSON answer, None on 404, KubeError on any other error status, an
        OSError (ConnectionError, TimeoutError) when the API server cannot be reached."""
        api = await self.api_client()
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            return await api.call_api(
                url_path, method, query_params=list(query or []), header_params=headers, body=body,
                response_types_map={200: "object", 201: "object", 202: "object"}, auth_settings=["BearerToken"],
                _return_http_data_only=True, _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise KubeError(int(exc.status or 0), str(exc.body or exc.reason)[:500]) from None
        except aiohttp.ClientError as exc:
            if isinstance(exc, OSError):
                raise
            # A dropped connection, a malformed answer: unreachable, as callers treat OSError.
            raise ConnectionError(f"{method} {url_path}: {exc!r}") from exc

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return await self.request("GET", path(api_version, kind, namespace, name))

    async def list(self, api_version: str, kind: str, namespace: str | None = None,
                   label_selector: str | None = None) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        out = await self.request("GET", path(api_version, kind, namespace), query=query)
        return list((out or {}).get("items") or [])

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply of the desired object as field manager `strata-operator` (force: the
        operator's fields are the operator's). Creates the object when it does not exist."""
        md = obj["metadata"]
        out = await self.request("PATCH", path(obj["apiVersion"], obj["kind"], md.get("namespace"), md["name"]),
                                 obj, content_type=APPLY,
                                 query=[("fieldManager", FIELD_MANAGER), ("force", "true")])
        if out is None:  # 404 on apply: the namespace is gone
            raise KubeError(404, f"{obj['kind']} {md.get('namespace')}/{md['name']}: namespace not found")
        return out

    async def merge_patch(self, api_version: str, kind: str, namespace: str | None, name: str,
                          patch: dict[str, Any]) -> dict[str, Any] | None:
        """A JSON merge patch (None when the object does not exist)."""
        return await self.request("PATCH", path(api_version, kind, namespace, name), patch, content_type=MERGE,
                                  query=[("fieldManager", FIELD_MANAGER)])

    async def patch_status(self, api_version: str, kind: str, namespace: str | None, name: str,
                           status: dict[str, Any]) -> dict[str, Any] | None:
        """A JSON merge patch of an object's status subresource (None when the object does not exist)."""
        return await self.request("PATCH", path(api_version, kind, namespace, name) + "/status", {"status": status},
                                  content_type=MERGE, query=[("fieldManager", FIELD_MANAGER)])

    async def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """POST a new object (KubeError 409 when it exists)."""
        md = obj["metadata"]
        return await self.request("POST", path(obj["apiVersion"], obj["kind"], md.get("namespace")), obj,
                                  query=[("fieldManager", FIELD_MANAGER)])

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        return await self.request("DELETE", path(api_version, kind, namespace, name)) is not None


async def as_user(fn: Any) -> Any:
    """`await fn(client)` with a client logged in as whoever runs a CLI command (kubeconfig, or
    in-cluster): for `strata` subcommands, which act with the user's own permissions, not the
    operator's RBAC."""
    client = Kube.login()
    try:
        return await fn(client)
    finally:
        await client.close()
