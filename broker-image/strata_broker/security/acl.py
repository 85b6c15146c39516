"""Kafka's ACL model and authorizer (the semantics of Kafka's AclAuthorizer/StandardAuthorizer).

An ACL = (resource type, resource name, pattern literal|prefixed, principal, host, operation,
allow|deny). A request is allowed when the principal is a super user, or when no DENY ACL matches
and an ALLOW ACL does (READ, WRITE, DELETE and ALTER imply DESCRIBE; ALTER_CONFIGS implies
DESCRIBE_CONFIGS; ALL matches every operation). A resource that no ACL matches at all is open only
if `allow.everyone.if.no.acl.found`. ACLs persist in `<data-dir>/__meta/acls.json`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..log.files import read_json, write_json_atomic

log = logging.getLogger(__name__)

# Kafka's AclResourceType, PatternType, AclOperation and AclPermissionType codes.
RES_ANY, RES_TOPIC, RES_GROUP, RES_CLUSTER, RES_TRANSACTIONAL_ID, RES_DELEGATION_TOKEN, RES_USER = 1, 2, 3, 4, 5, 6, 7
PAT_ANY, PAT_MATCH, PAT_LITERAL, PAT_PREFIXED = 1, 2, 3, 4
(OP_ANY, OP_ALL, OP_READ, OP_WRITE, OP_CREATE, OP_DELETE, OP_ALTER, OP_DESCRIBE, OP_CLUSTER_ACTION,
 OP_DESCRIBE_CONFIGS, OP_ALTER_CONFIGS, OP_IDEMPOTENT_WRITE, OP_CREATE_TOKENS, OP_DESCRIBE_TOKENS) = range(1, 15)
PERM_ANY, PERM_DENY, PERM_ALLOW = 1, 2, 3

CLUSTER_NAME = "kafka-cluster"
WILDCARD = "*"
WILDCARD_PRINCIPAL = "User:*"

_IMPLIED = {
    OP_DESCRIBE: {OP_DESCRIBE, OP_READ, OP_WRITE, OP_DELETE, OP_ALTER},
    OP_DESCRIBE_CONFIGS: {OP_DESCRIBE_CONFIGS, OP_ALTER_CONFIGS},
}
_VALID_OPS = {
    RES_TOPIC: {OP_ALL, OP_READ, OP_WRITE, OP_CREATE, OP_DELETE, OP_ALTER, OP_DESCRIBE, OP_DESCRIBE_CONFIGS,
                OP_ALTER_CONFIGS},
    RES_GROUP: {OP_ALL, OP_READ, OP_DELETE, OP_DESCRIBE},
    RES_CLUSTER: {OP_ALL, OP_CREATE, OP_ALTER, OP_DESCRIBE, OP_CLUSTER_ACTION, OP_DESCRIBE_CONFIGS, OP_ALTER_CONFIGS,
                  OP_IDEMPOTENT_WRITE},
    RES_TRANSACTIONAL_ID: {OP_ALL, OP_WRITE, OP_DESCRIBE},
    RES_DELEGATION_TOKEN: {OP_ALL, OP_DESCRIBE},
    RES_USER: {OP_ALL, OP_CREATE_TOKENS, OP_DESCRIBE_TOKENS},
}
_CACHE_LIMIT = 100_000


class InvalidAcl(ValueError):
    pass


@dataclass(frozen=True)
class Acl:
    resource_type: int
    resource_name: str
    pattern_type: int
    principal: str
    host: str
    operation: int
    permission: int

    def validate(self) -> None:
        if self.resource_type not in _VALID_OPS:
            raise InvalidAcl(f"invalid resource type {self.resource_type}")
        if self.pattern_type not in (PAT_LITERAL, PAT_PREFIXED):
            raise InvalidAcl("pattern type must be LITERAL or PREFIXED")
        if not self.resource_name:
            raise InvalidAcl("resource name must not be empty")
        if self.resource_type == RES_CLUSTER and (self.resource_name != CLUSTER_NAME
                                                  or self.pattern_type != PAT_LITERAL):
            raise InvalidAcl(f"the cluster resource is the literal {CLUSTER_NAME!r}")
        kind, sep, name = self.principal.partition(":")
        if not sep or not kind or not name:
            raise InvalidAcl(f"principal must be Type:name, got {self.principal!r}")
        if not self.host:
            raise InvalidAcl("host must not be empty (use '*')")
        if self.operation not in _VALID_OPS[self.resource_type]:
            raise InvalidAcl(f"operation {self.operation} is not valid for resource type {self.resource_type}")
        if self.permission not in (PERM_ALLOW, PERM_DENY):
            raise InvalidAcl("permission must be ALLOW or DENY")

    def matches_resource(self, resource_type: int, name: str) -> bool:
        if self.resource_type != resource_type:
            return False
        if self.pattern_type == PAT_LITERAL:
            return self.resource_name == name or self.resource_name == WILDCARD
        return name.startswith(self.resource_name)


@dataclass(frozen=True)
class AclFilter:
    resource_type: int
    resource_name: str | None
    pattern_type: int
    principal: str | None
    host: str | None
    operation: int
    permission: int

    def matches(self, acl: Acl) -> bool:
        if self.resource_type != RES_ANY and acl.resource_type != self.resource_type:
            return False
        if self.pattern_type == PAT_MATCH:
            if self.resource_name is not None and not acl.matches_resource(acl.resource_type, self.resource_name):
                return False
        else:
            if self.pattern_type != PAT_ANY and acl.pattern_type != self.pattern_type:
                return False
            if self.resource_name is not None and acl.resource_name != self.resource_name:
                return False
        if self.principal is not None and acl.principal != self.principal:
            return False
        if self.host is not None and acl.host != self.host:
            return False
        if self.operation != OP_ANY and acl.operation != self.operation:
            return False
        return self.permission == PERM_ANY or acl.permission == self.permission


class Authorizer:
    def __init__(self, enabled: bool, super_users: str, allow_if_no_acl: bool, meta_dir: str | None) -> None:
        self.enabled = enabled
        self.super_users = frozenset(p.strip() for p in super_users.split(";") if p.strip())
        self.allow_if_no_acl = allow_if_no_acl
        self._path = os.path.join(meta_dir, "acls.json") if meta_dir else None
        self._acls: set[Acl] = set()
        self._by_type: dict[int, list[Acl]] = {}
        self._cache: dict[tuple[str, str, int, int, str], bool] = {}
        # Cluster mode: told after every change, so the change reaches the other brokers.
        self.on_change: Callable[[], None] | None = None
        if self._path:
            for entry in read_json(self._path) or []:
                try:
                    acl = Acl(**entry)
                    acl.validate()
                except (TypeError, InvalidAcl) as exc:
                    log.error("ignoring a stored ACL %r: %s", entry, exc)
                    continue
                self._acls.add(acl)
        self._reindex()

    @property
    def acls(self) -> set[Acl]:
        return set(self._acls)

    def _reindex(self) -> None:
        by_type: dict[int, list[Acl]] = {}
        for acl in self._acls:
            by_type.setdefault(acl.resource_type, []).append(acl)
        self._by_type = by_type
        self._cache = {}

    def _save(self, notify: bool = True) -> None:
        if self._path:
            write_json_atomic(self._path, sorted((asdict(a) for a in self._acls),
                                                 key=lambda d: tuple(str(v) for v in d.values())))
        if notify and self.on_change is not None:
            self.on_change()

    # ---- cluster mode: the same ACLs on every broker (strata_broker.cluster.shared) ----------

    def shared_entries(self) -> dict[str, Any]:
        return {json.dumps(asdict(a), sort_keys=True): True for a in self._acls}

    def load_shared(self, entries: dict[str, Any]) -> None:
        acls = set()
        for key in entries:
            try:
                acl = Acl(**json.loads(key))
                acl.validate()
            except (TypeError, ValueError, InvalidAcl) as exc:
                log.error("ignoring a shared ACL %r: %s", key, exc)
                continue
            acls.add(acl)
        if acls != self._acls:
            self._acls = acls
            self._reindex()
            self._save(notify=False)

    # ---- decisions --------------------------------------------------------------------------

    def authorize(self, principal: str, host: str, operation: int, resource_type: int, name: str) -> bool:
        if not self.enabled or principal in self.super_users:
            return True
        key = (principal, host, operation, resource_type, name)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        decision = self._decide(principal, host, operation, resource_type, name)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache = {}
        self._cache[key] = decision
        return decision

    def _decide(self, principal: str, host: str, operation: int, resource_type: int, name: str) -> bool:
        matching = [a for a in self._by_type.get(resource_type, ()) if a.matches_resource(resource_type, name)]
        if not matching:
            return self.allow_if_no_acl
        mine = [a for a in matching if a.principal in (principal, WILDCARD_PRINCIPAL) and a.host in (host, WILDCARD)]
        if any(a.permission == PERM_DENY and a.operation in (operation, OP_ALL) for a in mine):
            return False
        allowed_by = _IMPLIED.get(operation, {operation}) | {OP_ALL}
        return any(a.permission == PERM_ALLOW and a.operation in allowed_by for a in mine)

    def authorize_any(self, principal: str, host: str, operation: int, resource_type: int) -> bool:
        """Whether some resource of this type could be allowed (Kafka's authorizeByResourceType,
        simplified: an ALLOW for the principal exists and no DENY covers every name)."""
        if not self.enabled or principal in self.super_users:
            return True
        mine = [a for a in self._by_type.get(resource_type, ())
                if a.principal in (principal, WILDCARD_PRINCIPAL) and a.host in (host, WILDCARD)]
        if any(a.permission == PERM_DENY and a.operation in (operation, OP_ALL) and a.pattern_type == PAT_LITERAL
               and a.resource_name == WILDCARD for a in mine):
            return False
        return any(a.permission == PERM_ALLOW and a.operation in (operation, OP_ALL) for a in mine)

    # ---- admin ------------------------------------------------------------------------------

    def add(self, acls: list[Acl]) -> None:
        self._acls.update(acls)
        self._reindex()
        self._save()

    def describe(self, flt: AclFilter) -> list[Acl]:
        return sorted((a for a in self._acls if flt.matches(a)),
                      key=lambda a: (a.resource_type, a.resource_name, a.pattern_type, a.principal, a.host,
                                     a.operation, a.permission))

    def remove(self, flt: AclFilter) -> list[Acl]:
        gone = self.describe(flt)
        if gone:
            self._acls.difference_update(gone)
            self._reindex()
            self._save()
        return gone
