"""Who owns what: topic -> team (Topic CRs), principal / client id -> Microservice -> team.

Sources: custom resources as dicts (`Ownership.from_objects`, what the operator reads from the
API server) or manifest files (`load_manifests`, for `strata cost report -f examples/`).
Only `strata.dev` Topic and Microservice objects matter; everything else is ignored.

Matching a usage record to a Microservice, first hit wins:
1. the principal equals the service's principal: `status.principal` when present, else the
   operator's convention `User:<namespace>.<name>`;
2. the client id equals `<namespace>.<name>` or `<name>`, or starts with `<name>-`
   (the longest such name wins; a plain name shared by two namespaces is ambiguous -> no match).
No match -> the `unowned` row. Nothing is guessed from topic relations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from strata_contract.principals import ANONYMOUS

from . import BillingError

GROUP = "strata.dev"
UNOWNED = "unowned"
IDLE = "idle"
RESERVED_TEAMS = (UNOWNED, IDLE)


@dataclass(frozen=True)
class Microservice:
    name: str
    namespace: str
    team: str
    produces: tuple[str, ...] = ()
    consumes: tuple[str, ...] = ()
    principal: str = ""
    consumer_group: str = ""  # spec.consumerGroup, else `<namespace>.<name>` (as the operator's default)

    @property
    def qualified(self) -> str:
        return f"{self.namespace}.{self.name}"


@dataclass
class Ownership:
    topics: dict[str, str] = field(default_factory=dict)  # topic name -> team
    services: list[Microservice] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # topic name -> its schema registry subject (status.schemaSubject, else from spec.schema)
    schema_subjects: dict[str, str] = field(default_factory=dict)

    @property
    def teams(self) -> list[str]:
        return sorted(set(self.topics.values()) | {s.team for s in self.services})

    def topic_team(self, topic: str | None) -> str | None:
        return self.topics.get(topic) if topic else None

    def writer_of(self, topic: str | None) -> Microservice | None:
        """The topic's single writer, if exactly one Microservice of the owning team produces it."""
        if not topic:
            return None
        team = self.topics.get(topic)
        writers = [s for s in self.services if topic in s.produces and (team is None or s.team == team)]
        return writers[0] if len(writers) == 1 else None

    def resolve(self, principal: str | None, client_id: str | None) -> Microservice | None:
        if principal and principal != ANONYMOUS:
            for service in self.services:
                if principal == service.principal:
                    return service
        if client_id:
            exact = [s for s in self.services if client_id == s.qualified]
            if len(exact) == 1:
                return exact[0]
            named = [s for s in self.services if client_id == s.name or client_id.startswith(s.name + "-")]
            if named:
                longest = max(len(s.name) for s in named)
                named = [s for s in named if len(s.name) == longest]
                if len(named) == 1:
                    return named[0]
        return None

    @classmethod
    def from_objects(cls, objects: Iterable[dict[str, Any]], source: str = "objects") -> Ownership:
        own = cls()
        for obj in objects:
            if not isinstance(obj, dict):
                continue
            if obj.get("kind") == "List" and isinstance(obj.get("items"), list):
                nested = cls.from_objects(obj["items"], source)
                for topic, team in nested.topics.items():
                    own._add_topic(topic, team, source)
                for topic, subject in nested.schema_subjects.items():
                    own.schema_subjects.setdefault(topic, subject)
                own.services.extend(nested.services)
                own.warnings.extend(nested.warnings)
                continue
            api = str(obj.get("apiVersion", ""))
            if api.split("/")[0] != GROUP:
                continue
            meta = obj.get("metadata") or {}
            spec = obj.get("spec") or {}
            name = meta.get("name")
            if not isinstance(meta, dict) or not isinstance(spec, dict) or not isinstance(name, str):
                raise BillingError(f"{source}: a {obj.get('kind')} without metadata.name or spec")
            team = spec.get("team")
            kind = obj.get("kind")
            if kind not in ("Topic", "Microservice"):
                continue
            if not isinstance(team, str) or not team:
                raise BillingError(f"{source}: {kind} {name} has no spec.team")
            if team in RESERVED_TEAMS:
                raise BillingError(f"{source}: {kind} {name}: team name {team!r} is reserved for the report's "
                                   f"own rows ({', '.join(RESERVED_TEAMS)})")
            if kind == "Topic":
                topic = str(spec.get("topicName") or name)
                own._add_topic(topic, team, source)
                subject = _schema_subject(topic, spec, obj.get("status"))
                if subject:
                    own.schema_subjects.setdefault(topic, subject)
            else:
                namespace = str(meta.get("namespace") or "default")
                status = obj.get("status") or {}
                principal = (status.get("principal") if isinstance(status, dict) else None) \
                    or f"User:{namespace}.{name}"
                own.services.append(Microservice(
                    name=name, namespace=namespace, team=team,
                    produces=tuple(str(t) for t in spec.get("produces") or ()),
                    consumes=tuple(str(t) for t in spec.get("consumes") or ()),
                    principal=str(principal),
                    consumer_group=str(spec.get("consumerGroup") or f"{namespace}.{name}")))
        return own

    def _add_topic(self, topic: str, team: str, source: str) -> None:
        if topic in self.topics and self.topics[topic] != team:
            # As with two CRs for one topic in the operator: the first one wins.
            self.warnings.append(f"{source}: topic {topic} claimed by teams {self.topics[topic]} and {team}; "
                                 f"billing it to {self.topics[topic]}")
            return
        self.topics[topic] = team


def _schema_subject(topic: str, spec: dict[str, Any], status: Any) -> str:
    """The subject a Topic's schema is registered under (TopicNameStrategy), or ""."""
    if isinstance(status, dict) and isinstance(status.get("schemaSubject"), str):
        return status["schemaSubject"]
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        return ""
    return f"{topic}-key" if schema.get("key") is True else f"{topic}-value"


def _manifest_files(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise BillingError(f"manifest path {raw} does not exist")
    return files


def load_manifests(paths: Iterable[str | Path]) -> Ownership:
    """Topic and Microservice objects from YAML files (multi-document) and directories of them."""
    own = Ownership()
    for path in _manifest_files(paths):
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise BillingError(f"cannot read manifest {path}: {exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
            raise BillingError(f"manifest {path} is not valid YAML{where}: {problem}") from None
        part = Ownership.from_objects([d for d in docs if isinstance(d, dict)], str(path))
        for topic, team in part.topics.items():
            own._add_topic(topic, team, str(path))
        for topic, subject in part.schema_subjects.items():
            own.schema_subjects.setdefault(topic, subject)
        own.services.extend(part.services)
        own.warnings.extend(part.warnings)
    return own
