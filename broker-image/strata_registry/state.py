"""The registry's state, rebuilt by replaying `_schemas`, and the records that change it.

Records (keys and values are JSON, as Confluent's; the leader epoch rides in the `strata-epoch` header):

- SCHEMA  key {"keytype":"SCHEMA","subject":S,"version":V,"magic":1}
          value {"subject","version","id","schemaType","references","schema","deleted"}; tombstone =
          the version was permanently deleted.
- CONFIG  key {"keytype":"CONFIG","subject":S|null,"magic":0}  value {"compatibilityLevel":L} | tombstone
- MODE    key {"keytype":"MODE","subject":S|null,"magic":0}    value {"mode":M} | tombstone
- LEADER  key {"keytype":"LEADER","epoch":E,"magic":0}         value {"epoch","instance","url"}
- IDS     key {"keytype":"IDS","magic":0}                      value {"max_id":N} (kept when the highest
          id's versions are permanently deleted, so no id is handed out twice after compaction)
- NOOP    key {"keytype":"NOOP","magic":0}                     written at start-up (creates the topic)

Fencing: a LEADER record whose epoch is above every epoch seen so far makes its instance the writer;
any other write whose epoch is below the highest epoch seen at that point of the log is ignored by
every reader. A writer checks, once its records are read back, that none was ignored.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from .formats import AVRO, Reference, StoredSchema

log = logging.getLogger(__name__)

EPOCH_HEADER = "strata-epoch"
DEFAULT_COMPATIBILITY = "BACKWARD"
DEFAULT_MODE = "READWRITE"


@dataclass
class Version:
    subject: str
    version: int
    schema_id: int
    deleted: bool = False


@dataclass
class State:
    """Everything the REST API reads; changed only by `apply` (records read back from `_schemas`)."""

    schemas: dict[int, StoredSchema] = field(default_factory=dict)
    subjects: dict[str, dict[int, Version]] = field(default_factory=dict)
    configs: dict[str | None, str] = field(default_factory=dict)
    modes: dict[str | None, str] = field(default_factory=dict)
    max_id: int = 0
    epoch: int = 0
    leader_instance: str | None = None
    leader_url: str | None = None
    applied: int = -1  # offset of the last record applied
    ignored: set[int] = field(default_factory=set)  # offsets of fenced writes (recent ones)

    # ---- reads ----------------------------------------------------------------------------------

    def versions(self, subject: str, deleted: bool = False) -> list[Version]:
        return sorted((v for v in self.subjects.get(subject, {}).values() if deleted or not v.deleted),
                      key=lambda v: v.version)

    def resolve(self, subject: str, version: int) -> StoredSchema | None:
        entry = self.subjects.get(subject, {}).get(version)
        return None if entry is None else self.schemas.get(entry.schema_id)

    def subjects_of(self, schema_id: int, deleted: bool = False) -> list[Version]:
        return [v for versions in self.subjects.values() for v in versions.values()
                if v.schema_id == schema_id and (deleted or not v.deleted)]

    def referenced_by(self, subject: str, version: int) -> list[int]:
        ids = set()
        for versions in self.subjects.values():
            for v in versions.values():
                stored = self.schemas.get(v.schema_id)
                if not v.deleted and stored is not None and any(
                        r.subject == subject and r.version == version for r in stored.references):
                    ids.add(v.schema_id)
        return sorted(ids)

    def compatibility(self, subject: str | None) -> str:
        if subject is not None and subject in self.configs:
            return self.configs[subject]
        return self.configs.get(None, DEFAULT_COMPATIBILITY)

    def mode(self, subject: str | None) -> str:
        if subject is not None and subject in self.modes:
            return self.modes[subject]
        return self.modes.get(None, DEFAULT_MODE)

    # ---- the log --------------------------------------------------------------------------------

    def apply(self, offset: int, key: bytes | None, value: bytes | None, epoch: int | None) -> bool:
        """Apply one record of `_schemas`; False when it is fenced (written by a stale leader) or unreadable."""
        self.applied = max(self.applied, offset)
        try:
            k = json.loads(key) if key else None
            v = json.loads(value) if value else None
        except ValueError:
            log.warning("skipping an unreadable record at offset %d of _schemas", offset)
            return False
        if not isinstance(k, dict):
            return False
        keytype = k.get("keytype")
        if keytype == "LEADER":
            if isinstance(v, dict) and int(v.get("epoch", 0)) > self.epoch:
                self.epoch = int(v["epoch"])
                self.leader_instance = v.get("instance")
                self.leader_url = v.get("url")
                return True
            return False
        if keytype == "NOOP":
            return True
        if epoch is not None and epoch < self.epoch:
            log.warning("ignoring a write of leader epoch %d at offset %d (epoch %d leads)", epoch, offset,
                        self.epoch)
            self.ignored.add(offset)
            if len(self.ignored) > 1000:
                self.ignored = set(sorted(self.ignored)[-500:])
            return False
        try:
            if keytype == "SCHEMA":
                self._apply_schema(k, v)
            elif keytype == "CONFIG":
                self._apply_setting(self.configs, k.get("subject"), v, "compatibilityLevel")
            elif keytype == "MODE":
                self._apply_setting(self.modes, k.get("subject"), v, "mode")
            elif keytype == "IDS" and isinstance(v, dict):
                self.max_id = max(self.max_id, int(v.get("max_id", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("skipping a malformed %s record at offset %d of _schemas: %r", keytype, offset, exc)
            return False
        return True

    @staticmethod
    def _apply_setting(table: dict[str | None, str], subject: str | None, value: Any, name: str) -> None:
        if value is None:
            table.pop(subject, None)
        else:
            table[subject] = str(value[name])

    def _apply_schema(self, k: dict[str, Any], v: dict[str, Any] | None) -> None:
        subject, version = str(k["subject"]), int(k["version"])
        if v is None:  # permanently deleted
            versions = self.subjects.get(subject, {})
            gone = versions.pop(version, None)
            if not versions:
                self.subjects.pop(subject, None)
            if gone is not None and not self.subjects_of(gone.schema_id, deleted=True):
                self.schemas.pop(gone.schema_id, None)
            return
        schema_id = int(v["id"])
        refs = tuple(Reference(str(r["name"]), str(r["subject"]), int(r["version"])) for r in v.get("references") or [])
        if schema_id not in self.schemas:
            self.schemas[schema_id] = StoredSchema(str(v.get("schemaType") or AVRO), str(v["schema"]), refs)
        self.subjects.setdefault(subject, {})[version] = Version(subject, version, schema_id, bool(v.get("deleted")))
        self.max_id = max(self.max_id, schema_id)


def schema_key(subject: str, version: int) -> bytes:
    return _dump({"keytype": "SCHEMA", "subject": subject, "version": version, "magic": 1})


def schema_value(subject: str, version: int, schema_id: int, stored: StoredSchema, deleted: bool) -> bytes:
    value: dict[str, Any] = {"subject": subject, "version": version, "id": schema_id, "schema": stored.schema,
                             "deleted": deleted}
    if stored.schema_type != AVRO:
        value["schemaType"] = stored.schema_type
    if stored.references:
        value["references"] = [r.to_json() for r in stored.references]
    return _dump(value)


def setting_key(keytype: str, subject: str | None) -> bytes:
    return _dump({"keytype": keytype, "subject": subject, "magic": 0})


def leader_key(epoch: int) -> bytes:
    return _dump({"keytype": "LEADER", "epoch": epoch, "magic": 0})


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
