"""The REST API (aiohttp), as Confluent's clients call it; writes on a follower go to the leader."""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from . import errors
from .auth import BasicAuth, SubjectAuthorizer
from .formats import PROTOBUF, SCHEMA_TYPES, StoredSchema, proto_descriptor
from .service import NotLeader, Registry, check_subject

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, content_type="application/vnd.schemaregistry.v1+json")


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() == "true"


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise errors.bad_request("the request has no body")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise errors.bad_request(f"the body is not JSON: {exc}") from exc


def _schema_json(stored: StoredSchema, request: web.Request, registry: Registry) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if stored.schema_type != "AVRO":
        out["schemaType"] = stored.schema_type
    if stored.references:
        out["references"] = [r.to_json() for r in stored.references]
    text = stored.schema
    if stored.schema_type == PROTOBUF and request.query.get("format") == "serialized":
        import base64
        text = base64.b64encode(proto_descriptor(stored, registry.state.resolve).SerializeToString()).decode()
    out["schema"] = text
    return out


def build_app(registry: Registry, max_body: int, auth: BasicAuth | None = None,
              authz: SubjectAuthorizer | None = None, forward_ssl: ssl.SSLContext | None = None) -> web.Application:
    """The REST API. With `auth`, every request but `GET /` (the health check) needs HTTP basic
    credentials the broker accepts (auth.py); with `authz` too, reading and writing a subject needs
    the broker's ACLs on its topic (SubjectAuthorizer), else 403 (40301). `forward_ssl`: how a follower
    verifies the leader when it forwards a write to an https:// URL (default: the system's CAs)."""
    session: dict[str, aiohttp.ClientSession] = {}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if auth is not None and request.path != "/":
            principal = await auth.principal(request.headers.get("Authorization"))
            if principal is None:
                return web.Response(text=json.dumps({"error_code": 401, "message": "Unauthorized"}), status=401,
                                    content_type="application/vnd.schemaregistry.v1+json",
                                    headers={"WWW-Authenticate": 'Basic realm="strata-registry"'})
            request["principal"] = principal
            if authz is not None:
                subject = request.match_info.get("subject")
                read_post = request.path.startswith("/compatibility/") or (
                    request.method == "POST" and not request.path.endswith("/versions"))
                write = request.method in ("PUT", "DELETE") or (request.method == "POST" and not read_post)
                if not await authz.allowed(principal, subject, write):
                    what = f"subject '{subject}'" if subject is not None else "the registry's global settings"
                    return _json({"error_code": 40301, "message": f"User {principal} is not authorized to "
                                  f"{'write' if write else 'read'} {what}"}, 403)
        try:
            return await handler(request)
        except errors.RegistryError as exc:
            return _json(exc.body(), exc.status)
        except NotLeader as exc:
            return await forward(request, exc.url)
        except web.HTTPRequestEntityTooLarge:
            return _json({"error_code": 42209, "message": f"Request body larger than {max_body} bytes"}, 422)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _json({"error_code": exc.status, "message": exc.reason}, exc.status)
            raise
        except TimeoutError:
            return _json(errors.operation_timeout("the write to _schemas timed out").body(), 500)
        except Exception as exc:
            log.exception("request %s %s failed", request.method, request.path)
            return _json(errors.store_error(repr(exc)).body(), 500)

    async def forward(request: web.Request, url: str | None) -> web.StreamResponse:
        if url is None or url.rstrip("/") == registry.settings.url.rstrip("/"):
            return _json(errors.unknown_leader().body(), 500)
        if request.headers.get("X-Strata-Forwarded"):
            return _json(errors.forwarding_failed("the leader sent the request back").body(), 500)
        if "client" not in session:
            connector = aiohttp.TCPConnector(ssl=forward_ssl) if forward_ssl is not None else None
            session["client"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), connector=connector)
        try:
            async with session["client"].request(request.method, url.rstrip("/") + request.rel_url.path_qs,
                                                 data=await request.read(),
                                                 headers={"Content-Type": CONTENT_TYPE, "X-Strata-Forwarded": "1",
                                                          **({"Authorization": request.headers["Authorization"]}
                                                             if "Authorization" in request.headers else {})}
                                                 ) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _json(errors.forwarding_failed(repr(exc)).body(), 500)
        if status < 300 and registry.log is not None:
            try:  # read-your-writes through this instance too
                await registry.log.caught_up(timeout=5)
            except TimeoutError:
                pass
        return web.Response(body=body, status=status, content_type="application/vnd.schemaregistry.v1+json")

    async def root(request: web.Request) -> web.Response:
        return _json({})

    async def schema_types(request: web.Request) -> web.Response:
        return _json(list(SCHEMA_TYPES))

    def _schema_by_id(request: web.Request) -> tuple[int, StoredSchema]:
        try:
            schema_id = int(request.match_info["id"])
        except ValueError:
            raise errors.schema_not_found() from None
        stored = registry.state.schemas.get(schema_id)
        if stored is None:
            raise errors.schema_not_found(schema_id)
        return schema_id, stored

    async def schema_by_id(request: web.Request) -> web.Response:
        _id, stored = _schema_by_id(request)
        return _json(_schema_json(stored, request, registry))

    async def schema_by_id_raw(request: web.Request) -> web.Response:
        _id, stored = _schema_by_id(request)
        return web.Response(text=_schema_json(stored, request, registry)["schema"], content_type="application/json")

    async def schema_subjects(request: web.Request) -> web.Response:
        schema_id, _ = _schema_by_id(request)
        return _json(sorted({v.subject for v in registry.state.subjects_of(schema_id, _flag(request, "deleted"))}))

    async def schema_versions(request: web.Request) -> web.Response:
        schema_id, _ = _schema_by_id(request)
        found = registry.state.subjects_of(schema_id, _flag(request, "deleted"))
        return _json([{"subject": v.subject, "version": v.version}
                      for v in sorted(found, key=lambda v: (v.subject, v.version))])

    async def list_schemas(request: web.Request) -> web.Response:
        prefix = request.query.get("subjectPrefix", "")
        latest_only = _flag(request, "latestOnly")
        out = []
        for subject in sorted(registry.state.subjects):
            if not subject.startswith(prefix):
                continue
            versions = registry.state.versions(subject, _flag(request, "deleted"))
            for v in versions[-1:] if latest_only else versions:
                out.append({"subject": subject, "version": v.version, "id": v.schema_id,
                            **_schema_json(registry.state.schemas[v.schema_id], request, registry)})
        return _json(out)

    async def list_subjects(request: web.Request) -> web.Response:
        prefix = request.query.get("subjectPrefix", "")
        deleted, deleted_only = _flag(request, "deleted"), _flag(request, "deletedOnly")
        out = []
        for subject in sorted(registry.state.subjects):
            if not subject.startswith(prefix):
                continue
            versions = registry.state.versions(subject, deleted=True)
            live = any(not v.deleted for v in versions)
            if (deleted_only and not live) or (not deleted_only and (live or deleted)):
                out.append(subject)
        return _json(out)

    async def subject_versions(request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        versions = registry.state.versions(subject, _flag(request, "deleted") or _flag(request, "deletedOnly"))
        if _flag(request, "deletedOnly"):
            versions = [v for v in versions if v.deleted]
        if not versions and not registry.state.versions(subject, deleted=True):
            raise errors.subject_not_found(subject)
        if not versions and not _flag(request, "deletedOnly"):
            raise errors.subject_not_found(subject)
        return _json([v.version for v in versions])

    def _version_json(request: web.Request) -> dict[str, Any]:
        subject = request.match_info["subject"]
        entry = registry.version_entry(subject, request.match_info["version"], _flag(request, "deleted"))
        stored = registry.state.schemas[entry.schema_id]
        return {"subject": subject, "version": entry.version, "id": entry.schema_id,
                **_schema_json(stored, request, registry)}

    async def get_version(request: web.Request) -> web.Response:
        return _json(_version_json(request))

    async def get_version_raw(request: web.Request) -> web.Response:
        return web.Response(text=_version_json(request)["schema"], content_type="application/json")

    async def referenced_by(request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        entry = registry.version_entry(subject, request.match_info["version"], True)
        return _json(registry.state.referenced_by(subject, entry.version))

    async def register(request: web.Request) -> web.Response:
        body = await _body(request)
        return _json(await registry.register(request.match_info["subject"], body, _flag(request, "normalize")))

    async def lookup(request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        body = await _body(request)
        deleted = _flag(request, "deleted")
        if not registry.state.versions(subject, deleted=True):
            raise errors.subject_not_found(subject)
        stored, parsed = registry.request_schema(body)
        entry = registry.find_in_subject(subject, stored, parsed, deleted=deleted)
        if entry is None:
            raise errors.schema_not_found()
        return _json({"subject": subject, "version": entry.version, "id": entry.schema_id,
                      **_schema_json(registry.state.schemas[entry.schema_id], request, registry)})

    async def delete_subject(request: web.Request) -> web.Response:
        return _json(await registry.delete_subject(request.match_info["subject"], _flag(request, "permanent")))

    async def delete_version(request: web.Request) -> web.Response:
        return _json(await registry.delete_version(request.match_info["subject"], request.match_info["version"],
                                                   _flag(request, "permanent")))

    async def compatibility(request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        check_subject(subject)
        body = await _body(request)
        _stored, parsed = registry.request_schema(body)
        level = registry.state.compatibility(subject)
        version = request.match_info.get("version")
        if version is None:
            against = registry.state.versions(subject)
            if not level.endswith("_TRANSITIVE"):
                against = against[-1:]
            level_used = level if level.endswith("_TRANSITIVE") or level == "NONE" else level + "_TRANSITIVE"
        else:
            against = [registry.version_entry(subject, version)]
            level_used = level.removesuffix("_TRANSITIVE")
        problems = registry.compatibility_messages(subject, parsed, level_used, against)
        out: dict[str, Any] = {"is_compatible": not problems}
        if _flag(request, "verbose"):
            out["messages"] = problems
        return _json(out)

    async def get_config(request: web.Request) -> web.Response:
        subject = request.match_info.get("subject")
        if subject is not None and subject not in registry.state.configs and not _flag(request, "defaultToGlobal"):
            raise errors.compatibility_not_configured(subject)
        return _json({"compatibilityLevel": registry.state.compatibility(subject)})

    async def put_config(request: web.Request) -> web.Response:
        return _json(await registry.set_config(request.match_info.get("subject"), await _body(request)))

    async def delete_config(request: web.Request) -> web.Response:
        return _json(await registry.delete_config(request.match_info.get("subject")))

    async def get_mode(request: web.Request) -> web.Response:
        subject = request.match_info.get("subject")
        if subject is not None and subject not in registry.state.modes and not _flag(request, "defaultToGlobal"):
            raise errors.mode_not_configured(subject)
        return _json({"mode": registry.state.mode(subject)})

    async def put_mode(request: web.Request) -> web.Response:
        return _json(await registry.set_mode(request.match_info.get("subject"), await _body(request),
                                             _flag(request, "force")))

    async def delete_mode(request: web.Request) -> web.Response:
        return _json(await registry.delete_mode(request.match_info["subject"]))

    async def contexts(request: web.Request) -> web.Response:
        return _json(["."])

    async def leader(request: web.Request) -> web.Response:
        """Not Confluent's: which instance leads, for operators and tests."""
        state = registry.state
        return _json({"instance": registry.instance, "leader": registry.is_leader, "epoch": state.epoch,
                      "leader_url": state.leader_url, "applied_offset": state.applied})

    async def on_cleanup(app: web.Application) -> None:
        if "client" in session:
            await session["client"].close()

    app = web.Application(middlewares=[middleware], client_max_size=max_body)
    app.on_cleanup.append(on_cleanup)
    r = app.router
    r.add_get("/", root)
    r.add_get("/schemas/types", schema_types)
    r.add_get("/schemas", list_schemas)
    r.add_get("/schemas/ids/{id}", schema_by_id)
    r.add_get("/schemas/ids/{id}/schema", schema_by_id_raw)
    r.add_get("/schemas/ids/{id}/subjects", schema_subjects)
    r.add_get("/schemas/ids/{id}/versions", schema_versions)
    r.add_get("/subjects", list_subjects)
    r.add_post("/subjects/{subject}", lookup)
    r.add_delete("/subjects/{subject}", delete_subject)
    r.add_get("/subjects/{subject}/versions", subject_versions)
    r.add_post("/subjects/{subject}/versions", register)
    r.add_get("/subjects/{subject}/versions/{version}", get_version)
    r.add_get("/subjects/{subject}/versions/{version}/schema", get_version_raw)
    r.add_get("/subjects/{subject}/versions/{version}/referencedby", referenced_by)
    r.add_delete("/subjects/{subject}/versions/{version}", delete_version)
    r.add_post("/compatibility/subjects/{subject}/versions", compatibility)
    r.add_post("/compatibility/subjects/{subject}/versions/{version}", compatibility)
    r.add_get("/config", get_config)
    r.add_put("/config", put_config)
    r.add_delete("/config", delete_config)
    r.add_get("/config/{subject}", get_config)
    r.add_put("/config/{subject}", put_config)
    r.add_delete("/config/{subject}", delete_config)
    r.add_get("/mode", get_mode)
    r.add_put("/mode", put_mode)
    r.add_get("/mode/{subject}", get_mode)
    r.add_put("/mode/{subject}", put_mode)
    r.add_delete("/mode/{subject}", delete_mode)
    r.add_get("/contexts", contexts)
    r.add_get("/v1/strata/leader", leader)
    return app
