"""A Topic's `spec.schema`, registered in its EventBroker's schema registry (docs/schema-registry.md).

The subject follows Confluent's TopicNameStrategy: `<topic>-value` (or `<topic>-key` with `key: true`).
The compatibility level, when the spec names one, is set on the subject first; then the schema is
registered (the registry answers the existing id when it is there already, so a reconcile repeats
nothing). An incompatible change is refused by the registry (409) and becomes Ready=False with the
registry's message; the registered versions are left as they were.

The registry the operator runs is called as it is served: over HTTPS verified against ca.crt of its
certificate's Secret (spec.schemaRegistry.tls), and with the operator's own SCRAM login as HTTP basic auth
when the brokers' authorizer is on (the operator is a super user there).
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from . import admin as kafka_admin
from . import registry_objects

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


@dataclass
class Outcome:
    ok: bool
    reason: str = "Reconciled"
    message: str = ""
    retry: bool = False  # a temporary failure: reconcile again soon
    status: dict[str, Any] = field(default_factory=dict)


def registry_url(broker: dict[str, Any]) -> str | None:
    """The registry of this EventBroker: spec.schemaRegistry.url, else the one the operator runs."""
    configured = (broker.get("spec", {}).get("schemaRegistry") or {}).get("url")
    if configured:
        return str(configured).rstrip("/")
    return registry_objects.registry_url(broker) if registry_objects.enabled(broker) else None


def subject(topic_name: str, schema: dict[str, Any]) -> str:
    return f"{topic_name}-{'key' if schema.get('key') else 'value'}"


def writable_subjects(permissions: list[dict[str, Any]]) -> list[str]:
    """The subjects (TopicNameStrategy) of the topics a Microservice's permissions let it write."""
    topics = {p["name"] for p in permissions if p.get("resourceType") == "topic" and "Write" in p.get("operations", [])}
    return sorted(f"{t}-{part}" for t in topics for part in ("key", "value"))


async def schema_text(body: dict[str, Any], kube: Any) -> str | Outcome:
    schema = body["spec"]["schema"]
    if schema.get("schema"):
        return str(schema["schema"])
    ref = schema.get("configMapRef") or {}
    namespace = body["metadata"]["namespace"]
    config_map = await kube.get("v1", "ConfigMap", namespace, ref.get("name", ""))
    if config_map is None:
        return Outcome(False, "SchemaNotFound", f"ConfigMap {namespace}/{ref.get('name')} (spec.schema.configMapRef) "
                                                "does not exist", retry=True)
    text = (config_map.get("data") or {}).get(ref.get("key", ""))
    if text is None:
        return Outcome(False, "SchemaNotFound", f"ConfigMap {namespace}/{ref.get('name')} has no key "
                                                f"{ref.get('key')!r}", retry=True)
    return str(text)


async def register(body: dict[str, Any], broker: dict[str, Any], topic_name: str, kube: Any,
                   timeout: float = 20.0) -> Outcome:
    """Set the compatibility level and register the schema; the status fields, or why not."""
    schema = body["spec"]["schema"]
    url = registry_url(broker)
    if url is None:
        return Outcome(False, "NoSchemaRegistry", f"EventBroker {broker['metadata']['name']} runs no schema "
                       "registry (spec.schemaRegistry.enabled, or spec.schemaRegistry.url for an external broker)")
    text = await schema_text(body, kube)
    if isinstance(text, Outcome):
        return text
    name = subject(topic_name, schema)
    quoted = urllib.parse.quote(name, safe="")
    request: dict[str, Any] = {"schema": text, "schemaType": schema.get("type", "AVRO")}
    if schema.get("references"):
        request["references"] = [{"name": r["name"], "subject": r["subject"], "version": int(r["version"])}
                                 for r in schema["references"]]
    connection = await _connection(broker, kube)
    if isinstance(connection, Outcome):
        return connection
    headers, context = connection
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                         headers={"Content-Type": CONTENT_TYPE, **headers},
                                         connector=aiohttp.TCPConnector(ssl=context) if context else None
                                         ) as session:
            if schema.get("compatibility"):
                status, answer = await _call(session, "PUT", f"{url}/config/{quoted}",
                                             {"compatibility": schema["compatibility"]})
                if status != 200:
                    return _refused(name, status, answer)
            status, answer = await _call(session, "POST", f"{url}/subjects/{quoted}/versions", request)
            if status != 200:
                return _refused(name, status, answer)
            status, found = await _call(session, "POST", f"{url}/subjects/{quoted}", request)
            if status != 200:
                return _refused(name, status, found)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Outcome(False, "SchemaRegistryUnavailable", f"{url}: {exc!r}", retry=True)
    return Outcome(True, message=f"schema registered under {name} (version {found['version']}, id {found['id']})",
                   status={"schemaSubject": name, "schemaVersion": found["version"], "schemaId": found["id"]})


async def _connection(broker: dict[str, Any], kube: Any) -> tuple[dict[str, str], ssl.SSLContext | None] | Outcome:
    """Headers and TLS context for the registry the operator runs (nothing extra for spec.schemaRegistry.url)."""
    if (broker.get("spec", {}).get("schemaRegistry") or {}).get("url") or not registry_objects.enabled(broker):
        return {}, None
    headers: dict[str, str] = {}
    if registry_objects.authenticates(broker):
        login = f"{kafka_admin.KAFKA_USERNAME}:{kafka_admin.KAFKA_PASSWORD}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(login).decode()
    context = None
    if registry_objects.uses_tls(broker):
        ns, name = broker["metadata"]["namespace"], registry_objects.tls_secret_name(broker)
        secret = await kube.get("v1", "Secret", ns, name)
        raw = ((secret or {}).get("data") or {}).get("ca.crt")
        pem = base64.b64decode(raw).decode() if raw else ((secret or {}).get("stringData") or {}).get("ca.crt")
        if not pem:
            return Outcome(False, "SchemaRegistryUnavailable", f"Secret {ns}/{name} has no ca.crt yet (the schema "
                           "registry's certificate, spec.schemaRegistry.tls)", retry=True)
        context = ssl.create_default_context(cadata=pem)
    return headers, context


async def _call(session: aiohttp.ClientSession, method: str, url: str, body: Any) -> tuple[int, Any]:
    async with session.request(method, url, data=json.dumps(body)) as response:
        raw = await response.read()
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, {"message": raw.decode(errors="replace")[:500]}


def _refused(subject_name: str, status: int, answer: Any) -> Outcome:
    message = (answer or {}).get("message", "") if isinstance(answer, dict) else str(answer)
    code = (answer or {}).get("error_code") if isinstance(answer, dict) else None
    if status == 409:
        return Outcome(False, "SchemaIncompatible", f"the registry refused the new schema for {subject_name}: "
                                                    f"{message}")
    if status == 422:
        return Outcome(False, "SchemaInvalid", f"the registry refused the schema for {subject_name} "
                                               f"(error {code}): {message}")
    return Outcome(False, "SchemaRegistryError", f"{subject_name}: HTTP {status} (error {code}): {message}",
                   retry=status >= 500)
