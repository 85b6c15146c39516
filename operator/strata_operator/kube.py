"""A small async Kubernetes API client for the objects the operator owns (aiohttp).

Credentials come from kopf's own public login helpers (in-cluster service account, then
kubeconfig), so the operator has one notion of "the cluster" and no extra client library.
Objects are applied as create-or-merge-patch: idempotent, so create and resume share code.
"""

from __future__ import annotations

import base64
import ssl
import tempfile
from typing import Any

import aiohttp
import kopf

CORE = {"ConfigMap": "configmaps", "Secret": "secrets", "Service": "services", "ServiceAccount": "serviceaccounts",
        "Event": "events", "PersistentVolumeClaim": "persistentvolumeclaims", "Pod": "pods"}
GROUPED = {"StatefulSet": "statefulsets", "Deployment": "deployments", "PodDisruptionBudget": "poddisruptionbudgets",
           "EventBroker": "eventbrokers", "Topic": "topics", "Microservice": "microservices",
           "CostReport": "costreports"}


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    plural = CORE.get(kind) or GROUPED[kind]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    out = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    return out + (f"/{name}" if name else "")


def _to_file(data: str | bytes) -> str:
    raw = data if isinstance(data, bytes) else data.encode()
    try:  # kubeconfig's *-data fields are base64; kopf may hand them over decoded or not
        raw = base64.b64decode(raw, validate=True)
    except ValueError:
        pass
    f = tempfile.NamedTemporaryFile(delete=False, suffix=".pem")  # noqa: SIM115 - kept for the process' life
    f.write(raw)
    f.close()
    return f.name


class Kube:
    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self.server = info.server.rstrip("/")
        headers = {}
        auth = None
        if info.token:
            headers["Authorization"] = f"Bearer {info.token}"
        elif info.username and info.password:
            auth = aiohttp.BasicAuth(info.username, info.password)
        ssl_ctx: ssl.SSLContext | bool = True
        if self.server.startswith("https"):
            if info.insecure:
                ssl_ctx = False
            else:
                ctx = ssl.create_default_context(cafile=str(info.ca_path) if info.ca_path else None)
                if info.ca_data:
                    ctx.load_verify_locations(cafile=_to_file(info.ca_data))
                cert = info.certificate_path or (info.certificate_data and _to_file(info.certificate_data))
                key = info.private_key_path or (info.private_key_data and _to_file(info.private_key_data))
                if cert:
                    ctx.load_cert_chain(str(cert), str(key) if key else None)
                ssl_ctx = ctx
        self._session_args = {"headers": headers, "auth": auth,
                              "connector_args": {"ssl": ssl_ctx}}
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def login(cls) -> Kube:
        settings = kopf.OperatorSettings()
        info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
        if info is None:
            raise RuntimeError("no Kubernetes credentials: neither in-cluster nor a kubeconfig")
        return cls(info)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            args = dict(self._session_args)
            connector = aiohttp.TCPConnector(**args.pop("connector_args"))
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30),
                                                  **args)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, url_path: str, body: Any = None,
                      content_type: str = "application/json") -> dict[str, Any] | None:
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["json"] = body
            kwargs["headers"] = {"Content-Type": content_type}
        async with self._client().request(method, self.server + url_path, **kwargs) as resp:
            if resp.status == 404:
                return None
            if resp.status >= 400:
                text = await resp.text()
                raise KubeError(resp.status, text[:500])
            return await resp.json(content_type=None)

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return await self.request("GET", path(api_version, kind, namespace, name))

    async def list(self, api_version: str, kind: str, namespace: str | None = None,
                   label_selector: str | None = None) -> list[dict[str, Any]]:
        url = path(api_version, kind, namespace)
        if label_selector:
            url += f"?labelSelector={label_selector}"
        out = await self.request("GET", url)
        return list((out or {}).get("items") or [])

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create, or merge-patch to the desired state (fields we set are ours; others are kept)."""
        md = obj["metadata"]
        existing = await self.get(obj["apiVersion"], obj["kind"], md.get("namespace"), md["name"])
        if existing is None:
            try:
                created = await self.request("POST", path(obj["apiVersion"], obj["kind"], md.get("namespace")), obj)
                return created or obj
            except KubeError as exc:
                if exc.status != 409:  # 409: created meanwhile (a timer and a handler of one resource): patch it
                    raise
        patched = await self.request("PATCH", path(obj["apiVersion"], obj["kind"], md.get("namespace"), md["name"]),
                                     obj, content_type="application/merge-patch+json")
        return patched or obj

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
