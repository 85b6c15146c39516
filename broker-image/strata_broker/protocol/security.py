"""SASL (SaslHandshake, SaslAuthenticate), ACLs (Create/Describe/DeleteAcls), SCRAM users
(Describe/AlterUserScramCredentials) and client quotas (Describe/AlterClientQuotas)."""

from __future__ import annotations

import logging

from kafka.protocol.admin import (
    AlterClientQuotasRequest,
    AlterClientQuotasResponse,
    AlterUserScramCredentialsRequest,
    AlterUserScramCredentialsResponse,
    CreateAclsRequest,
    CreateAclsResponse,
    DeleteAclsRequest,
    DeleteAclsResponse,
    DescribeAclsRequest,
    DescribeAclsResponse,
    DescribeClientQuotasRequest,
    DescribeClientQuotasResponse,
    DescribeUserScramCredentialsRequest,
    DescribeUserScramCredentialsResponse,
)
from kafka.protocol.sasl import (
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)
from strata_contract.scram import MAX_ITERATIONS, MIN_ITERATIONS, ScramCredential

from ..config import parse_mechanisms
from ..errors import ErrorCode
from ..security import acl as A
from ..security.quotas import ENTITY_TYPES, KEYS, make_entity
from ..security.sasl import SaslFailure, SaslSession
from ..security.scram import MECHANISM_IDS, MECHANISM_NAMES
from .context import RequestContext
from .registry import api

log = logging.getLogger(__name__)


def _mechanisms(ctx: RequestContext) -> list[str]:
    return list(parse_mechanisms(ctx.services.config["sasl.enabled.mechanisms"]))


# ---- SASL ---------------------------------------------------------------------------------------


# v0 would switch the connection to unframed SASL tokens (pre-KIP-152); every current client uses v1.
@api(SaslHandshakeRequest, SaslHandshakeResponse, 1, 1)
async def handle_sasl_handshake(ctx: RequestContext, request: SaslHandshakeRequest) -> SaslHandshakeResponse:
    conn = ctx.conn
    mechanisms = _mechanisms(ctx)
    R = SaslHandshakeResponse
    if conn is None or conn.listener is None or not conn.listener.sasl or conn.authenticated or conn.sasl:
        ctx.close_after = True
        return R(version=ctx.api_version, error_code=int(ErrorCode.ILLEGAL_SASL_STATE), mechanisms=mechanisms)
    if request.mechanism not in mechanisms:
        ctx.close_after = True
        return R(version=ctx.api_version, error_code=int(ErrorCode.UNSUPPORTED_SASL_MECHANISM),
                 mechanisms=mechanisms)
    conn.sasl = SaslSession(request.mechanism, ctx.services.credentials)
    conn.sasl_mechanism = request.mechanism
    return R(version=ctx.api_version, error_code=0, mechanisms=mechanisms)


@api(SaslAuthenticateRequest, SaslAuthenticateResponse, 0, 2)
async def handle_sasl_authenticate(ctx: RequestContext,
                                   request: SaslAuthenticateRequest) -> SaslAuthenticateResponse:
    conn = ctx.conn
    R = SaslAuthenticateResponse
    if conn is None or conn.sasl is None or conn.authenticated:
        ctx.close_after = True
        return R(version=ctx.api_version, error_code=int(ErrorCode.ILLEGAL_SASL_STATE),
                 error_message="SaslAuthenticate without a SaslHandshake first", auth_bytes=b"",
                 session_lifetime_ms=0)
    try:
        answer, user = await ctx.services.auth.step(conn.sasl, bytes(request.auth_bytes or b""), ctx.host)
    except SaslFailure as exc:
        log.info("authentication failed from %s (%s): %s", ctx.peer, conn.sasl_mechanism, exc)
        ctx.close_after = True
        conn.sasl = None
        return R(version=ctx.api_version, error_code=int(ErrorCode.SASL_AUTHENTICATION_FAILED),
                 error_message=str(exc), auth_bytes=b"", session_lifetime_ms=0)
    if user is not None:
        conn.principal = f"User:{user}"
        conn.sasl = None
        log.debug("%s authenticated as %s via %s", ctx.peer, conn.principal, conn.sasl_mechanism)
    return R(version=ctx.api_version, error_code=0, error_message=None, auth_bytes=answer, session_lifetime_ms=0)


# ---- ACLs ---------------------------------------------------------------------------------------


def _acl_gate(ctx: RequestContext, operation: int) -> tuple[ErrorCode, str] | None:
    if not ctx.services.authorizer.enabled:
        return ErrorCode.SECURITY_DISABLED, "no authorizer is configured on the broker (authorizer.enable)"
    if not ctx.authorize(operation, A.RES_CLUSTER, A.CLUSTER_NAME):
        return ErrorCode.CLUSTER_AUTHORIZATION_FAILED, f"{ctx.principal} may not manage ACLs"
    return None


@api(CreateAclsRequest, CreateAclsResponse, 1, 3)
async def handle_create_acls(ctx: RequestContext, request: CreateAclsRequest) -> CreateAclsResponse:
    R = CreateAclsResponse
    gate = _acl_gate(ctx, A.OP_ALTER)
    results = []
    valid = []
    for c in request.creations:
        if gate is not None:
            results.append(R.AclCreationResult(error_code=int(gate[0]), error_message=gate[1]))
            continue
        acl = A.Acl(c.resource_type, c.resource_name, c.resource_pattern_type, c.principal, c.host, c.operation,
                    c.permission_type)
        try:
            acl.validate()
        except A.InvalidAcl as exc:
            results.append(R.AclCreationResult(error_code=int(ErrorCode.INVALID_REQUEST), error_message=str(exc)))
            continue
        valid.append(acl)
        results.append(R.AclCreationResult(error_code=0, error_message=None))
    if valid:
        ctx.services.authorizer.add(valid)
        log.info("%s created ACLs: %s", ctx.principal, valid)
        await _share(ctx)
    return R(version=ctx.api_version, throttle_time_ms=0, results=results)


async def _share(ctx: RequestContext) -> None:
    """Cluster mode: the change is in the bucket before it is answered; the other brokers load
    it within a second."""
    await ctx.services.leadership.shared_state_flushed()


def _filter(f) -> A.AclFilter:  # type: ignore[no-untyped-def]
    return A.AclFilter(f.resource_type_filter, f.resource_name_filter, f.pattern_type_filter, f.principal_filter,
                       f.host_filter, f.operation, f.permission_type)


def _valid_filter(flt: A.AclFilter) -> str | None:
    if flt.resource_type == 0 or flt.pattern_type == 0 or flt.operation == 0 or flt.permission == 0:
        return "a filter with an UNKNOWN value matches nothing"
    return None


@api(DescribeAclsRequest, DescribeAclsResponse, 1, 3)
async def handle_describe_acls(ctx: RequestContext, request: DescribeAclsRequest) -> DescribeAclsResponse:
    R = DescribeAclsResponse
    gate = _acl_gate(ctx, A.OP_DESCRIBE)
    flt = _filter(request)
    problem = _valid_filter(flt)
    if gate is not None or problem is not None:
        code, message = gate if gate is not None else (ErrorCode.INVALID_REQUEST, problem)
        return R(version=ctx.api_version, throttle_time_ms=0, error_code=int(code), error_message=message,
                 resources=[])
    grouped: dict[tuple[int, str, int], list[A.Acl]] = {}
    for acl in ctx.services.authorizer.describe(flt):
        grouped.setdefault((acl.resource_type, acl.resource_name, acl.pattern_type), []).append(acl)
    D = R.DescribeAclsResource
    return R(version=ctx.api_version, throttle_time_ms=0, error_code=0, error_message=None, resources=[
        D(resource_type=rt, resource_name=name, pattern_type=pt, acls=[
            D.AclDescription(principal=a.principal, host=a.host, operation=a.operation, permission_type=a.permission)
            for a in acls])
        for (rt, name, pt), acls in grouped.items()])


@api(DeleteAclsRequest, DeleteAclsResponse, 1, 3)
async def handle_delete_acls(ctx: RequestContext, request: DeleteAclsRequest) -> DeleteAclsResponse:
    R = DeleteAclsResponse
    F = R.DeleteAclsFilterResult
    M = F.DeleteAclsMatchingAcl
    gate = _acl_gate(ctx, A.OP_ALTER)
    results = []
    for f in request.filters:
        flt = _filter(f)
        problem = _valid_filter(flt)
        if gate is not None or problem is not None:
            code, message = gate if gate is not None else (ErrorCode.INVALID_REQUEST, problem)
            results.append(F(error_code=int(code), error_message=message, matching_acls=[]))
            continue
        gone = ctx.services.authorizer.remove(flt)
        if gone:
            log.info("%s deleted ACLs: %s", ctx.principal, gone)
        results.append(F(error_code=0, error_message=None, matching_acls=[
            M(error_code=0, error_message=None, resource_type=a.resource_type, resource_name=a.resource_name,
              pattern_type=a.pattern_type, principal=a.principal, host=a.host, operation=a.operation,
              permission_type=a.permission) for a in gone]))
    await _share(ctx)
    return R(version=ctx.api_version, throttle_time_ms=0, filter_results=results)


# ---- SCRAM credentials --------------------------------------------------------------------------


@api(DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse, 0, 0)
async def handle_describe_user_scram_credentials(
        ctx: RequestContext, request: DescribeUserScramCredentialsRequest) -> DescribeUserScramCredentialsResponse:
    R = DescribeUserScramCredentialsResponse
    Res = R.DescribeUserScramCredentialsResult
    if not ctx.authorize(A.OP_DESCRIBE, A.RES_CLUSTER, A.CLUSTER_NAME):
        return R(version=0, throttle_time_ms=0, error_code=int(ErrorCode.CLUSTER_AUTHORIZATION_FAILED),
                 error_message=f"{ctx.principal} may not describe users", results=[])
    known = ctx.services.credentials.describe()
    wanted = sorted(known) if not request.users else [u.name for u in request.users]
    counts: dict[str, int] = {}
    for name in wanted:
        counts[name] = counts.get(name, 0) + 1
    results = []
    for name in dict.fromkeys(wanted):
        if counts[name] > 1:
            results.append(Res(user=name, error_code=int(ErrorCode.DUPLICATE_RESOURCE),
                               error_message="user named more than once", credential_infos=[]))
        elif name not in known:
            results.append(Res(user=name, error_code=int(ErrorCode.RESOURCE_NOT_FOUND),
                               error_message="attempt to describe a user credential that does not exist",
                               credential_infos=[]))
        else:
            results.append(Res(user=name, error_code=0, error_message=None, credential_infos=[
                Res.CredentialInfo(mechanism=MECHANISM_IDS[m], iterations=i) for m, i in sorted(known[name].items())]))
    return R(version=0, throttle_time_ms=0, error_code=0, error_message=None, results=results)


@api(AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, 0, 0)
async def handle_alter_user_scram_credentials(
        ctx: RequestContext, request: AlterUserScramCredentialsRequest) -> AlterUserScramCredentialsResponse:
    R = AlterUserScramCredentialsResponse
    Res = R.AlterUserScramCredentialsResult
    store = ctx.services.credentials
    allowed = ctx.authorize(A.OP_ALTER, A.RES_CLUSTER, A.CLUSTER_NAME)
    errors: dict[str, tuple[ErrorCode, str]] = {}
    order: list[str] = []
    seen: set[tuple[str, int]] = set()
    changes = []
    for kind, items in (("delete", request.deletions), ("upsert", request.upsertions)):
        for item in items:
            if item.name not in order:
                order.append(item.name)
            if not allowed:
                errors[item.name] = (ErrorCode.CLUSTER_AUTHORIZATION_FAILED, f"{ctx.principal} may not alter users")
            elif not item.name:
                errors[item.name] = (ErrorCode.UNACCEPTABLE_CREDENTIAL, "empty user name")
            elif item.mechanism not in MECHANISM_NAMES:
                errors[item.name] = (ErrorCode.UNSUPPORTED_SASL_MECHANISM, f"unknown mechanism {item.mechanism}")
            elif (item.name, item.mechanism) in seen:
                errors[item.name] = (ErrorCode.DUPLICATE_RESOURCE, "a user/mechanism appears more than once")
            elif kind == "upsert" and not MIN_ITERATIONS <= item.iterations <= MAX_ITERATIONS:
                errors[item.name] = (ErrorCode.UNACCEPTABLE_CREDENTIAL,
                                     f"iterations must be in [{MIN_ITERATIONS}, {MAX_ITERATIONS}]")
            elif kind == "upsert" and (not item.salt or not item.salted_password):
                errors[item.name] = (ErrorCode.UNACCEPTABLE_CREDENTIAL, "salt and salted password are required")
            seen.add((item.name, item.mechanism))
            changes.append((kind, item))
    applied = False
    for kind, item in changes:
        if item.name in errors:
            continue
        mechanism = MECHANISM_NAMES[item.mechanism]
        if kind == "upsert":
            store.upsert(item.name, mechanism, ScramCredential.from_salted_password(
                mechanism, bytes(item.salted_password), bytes(item.salt), item.iterations))
            applied = True
        elif store.delete(item.name, mechanism):
            applied = True
        else:
            errors[item.name] = (ErrorCode.RESOURCE_NOT_FOUND,
                                 "no such credential" + (" set through the admin API (it is in the credentials "
                                                         "file: change the Secret)" if store.in_file(item.name)
                                                         else ""))
    if applied:
        store.save()
        await _share(ctx)
    return R(version=0, throttle_time_ms=0, results=[
        Res(user=name, error_code=int(errors[name][0]) if name in errors else 0,
            error_message=errors[name][1] if name in errors else None) for name in order])


# ---- client quotas ------------------------------------------------------------------------------


@api(DescribeClientQuotasRequest, DescribeClientQuotasResponse, 0, 1)
async def handle_describe_client_quotas(ctx: RequestContext,
                                        request: DescribeClientQuotasRequest) -> DescribeClientQuotasResponse:
    R = DescribeClientQuotasResponse
    E = R.EntryData
    if not ctx.authorize(A.OP_DESCRIBE_CONFIGS, A.RES_CLUSTER, A.CLUSTER_NAME):
        return R(version=ctx.api_version, throttle_time_ms=0, error_code=int(ErrorCode.CLUSTER_AUTHORIZATION_FAILED),
                 error_message=f"{ctx.principal} may not describe quotas", entries=None)
    components = [(c.entity_type, c.match_type, c.match) for c in request.components]
    for etype, match_type, _ in components:
        if match_type not in (0, 1, 2) or etype not in ENTITY_TYPES + ("ip",):
            return R(version=ctx.api_version, throttle_time_ms=0, error_code=int(ErrorCode.INVALID_REQUEST),
                     error_message=f"unsupported filter component {etype}/{match_type}", entries=None)
    found = ctx.services.quotas.describe(components, request.strict)
    return R(version=ctx.api_version, throttle_time_ms=0, error_code=0, error_message=None, entries=[
        E(entity=[E.EntityData(entity_type=t, entity_name=n) for t, n in entity],
          values=[E.ValueData(key=k, value=v) for k, v in sorted(values.items())])
        for entity, values in found])


@api(AlterClientQuotasRequest, AlterClientQuotasResponse, 0, 1)
async def handle_alter_client_quotas(ctx: RequestContext,
                                     request: AlterClientQuotasRequest) -> AlterClientQuotasResponse:
    R = AlterClientQuotasResponse
    E = R.EntryData
    quotas = ctx.services.quotas
    allowed = ctx.authorize(A.OP_ALTER_CONFIGS, A.RES_CLUSTER, A.CLUSTER_NAME)
    results = []
    changed = False
    for entry in request.entries:
        pairs = [(e.entity_type, e.entity_name) for e in entry.entity]
        error: tuple[ErrorCode, str] | None = None
        if not allowed:
            error = (ErrorCode.CLUSTER_AUTHORIZATION_FAILED, f"{ctx.principal} may not alter quotas")
        elif not pairs or len({t for t, _ in pairs}) != len(pairs) or any(t not in ENTITY_TYPES for t, _ in pairs):
            error = (ErrorCode.INVALID_REQUEST, f"entity must be user and/or client-id, each once: {pairs}")
        else:
            for op in entry.ops:
                if op.key not in KEYS:
                    error = (ErrorCode.INVALID_REQUEST, f"unknown quota key {op.key!r} (supported: {', '.join(KEYS)})")
                elif not op.remove and not op.value > 0:
                    error = (ErrorCode.INVALID_REQUEST, f"{op.key} must be positive")
        if error is None and not request.validate_only:
            quotas.alter(make_entity(dict(pairs)), [(op.key, float(op.value), op.remove) for op in entry.ops])
            changed = True
        results.append(E(error_code=int(error[0]) if error else 0, error_message=error[1] if error else None,
                         entity=[E.EntityData(entity_type=t, entity_name=n) for t, n in pairs]))
    if changed:
        quotas.save()
        log.info("%s altered client quotas", ctx.principal)
        await _share(ctx)
    return R(version=ctx.api_version, throttle_time_ms=0, entries=results)
