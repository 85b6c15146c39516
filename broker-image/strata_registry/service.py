"""What the registry does: reads from the state, writes through the leader into `_schemas`."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from . import errors
from .formats import COMPATIBILITY_LEVELS, SCHEMA_TYPES, Parsed, Reference, StoredSchema, compatibility_problems, parse
from .kafkalog import SchemasLog
from .state import State, leader_key, schema_key, schema_value, setting_key

log = logging.getLogger(__name__)

MODES = ("READWRITE", "READONLY", "READONLY_OVERRIDE", "IMPORT")


@dataclass
class Settings:
    bootstrap: str
    url: str  # where other instances forward writes to this one
    group_id: str = "strata-schema-registry"
    client_config: dict[str, str] | None = None
    max_schema_bytes: int = 1024 * 1024


class NotLeader(Exception):
    """This instance does not lead the writes; the request goes to `url` (None: no leader known)."""

    def __init__(self, url: str | None) -> None:
        super().__init__(url)
        self.url = url


class Registry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.instance = uuid.uuid4().hex
        self.state = State()
        self.log: SchemasLog | None = None
        self.epoch: int | None = None  # the epoch this instance leads with, when it leads
        self._write_lock = asyncio.Lock()
        self._claiming: asyncio.Task[None] | None = None
        self._parsed: dict[tuple[str, str, tuple[Reference, ...]], Parsed] = {}

    # ---- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self.log = SchemasLog(self.settings.bootstrap, dict(self.settings.client_config or {}),
                              self.settings.group_id, self._on_record, self._on_candidate)
        # The first write creates `_schemas` (the broker creates it for the registry's principal).
        for attempt in range(60):
            try:
                await self.log.produce(b'{"keytype":"NOOP","magic":0}', None, None, timeout=10)
                break
            except (RuntimeError, TimeoutError) as exc:
                if attempt == 59:
                    raise
                log.info("waiting for the broker to take writes to _schemas (%s)", exc)
                await asyncio.sleep(1)
        self.log.start()
        await self.log.caught_up(timeout=120)
        log.info("registry %s caught up: %d schemas, %d subjects, epoch %d", self.instance[:8],
                 len(self.state.schemas), len(self.state.subjects), self.state.epoch)

    async def close(self) -> None:
        if self._claiming is not None:
            self._claiming.cancel()
        if self.log is not None:
            await asyncio.to_thread(self.log.close)

    @property
    def is_leader(self) -> bool:
        return self.epoch is not None and self.epoch == self.state.epoch and self.state.leader_instance == self.instance

    def _on_record(self, offset: int, key: bytes | None, value: bytes | None, epoch: int | None) -> None:
        self.state.apply(offset, key, value, epoch)
        if self.epoch is not None and self.state.epoch != self.epoch:
            log.warning("leader epoch %d took over from this instance's epoch %d", self.state.epoch, self.epoch)
            self.epoch = None

    def _on_candidate(self, candidate: bool) -> None:
        if not candidate:
            if self.epoch is not None:
                log.info("the group revoked the registry partition: no longer leading (epoch %d)", self.epoch)
            self.epoch = None
            if self._claiming is not None:
                self._claiming.cancel()
                self._claiming = None
            return
        if self._claiming is None or self._claiming.done():
            self._claiming = asyncio.get_running_loop().create_task(self._claim())

    async def _claim(self) -> None:
        """Write a LEADER record with the next epoch; lead once it is read back as the winner."""
        assert self.log is not None
        while self.log.candidate:
            try:
                async with self._write_lock:
                    await self.log.caught_up()
                    epoch = self.state.epoch + 1
                    value = {"epoch": epoch, "instance": self.instance, "url": self.settings.url}
                    offset = await self.log.produce(leader_key(epoch), json.dumps(value).encode(), epoch)
                    await self.log.wait_applied(offset)
                    if self.state.epoch == epoch and self.state.leader_instance == self.instance and self.log.candidate:
                        self.epoch = epoch
                        log.info("registry %s leads writes (epoch %d)", self.instance[:8], epoch)
                        return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("claiming the lead failed (%r); trying again", exc)
            await asyncio.sleep(0.5)

    # ---- helpers --------------------------------------------------------------------------------

    def parse(self, schema_type: str, text: str, refs: tuple[Reference, ...]) -> Parsed:
        key = (schema_type, text, refs)
        parsed = self._parsed.get(key)
        if parsed is None:
            parsed = parse(schema_type, text, refs, self.state.resolve)
            if len(self._parsed) > 10000:
                self._parsed.clear()
            self._parsed[key] = parsed
        return parsed

    def parse_stored(self, stored: StoredSchema) -> Parsed:
        return self.parse(stored.schema_type, stored.schema, stored.references)

    def version_entry(self, subject: str, version: str, deleted: bool = False) -> Any:
        versions = self.state.versions(subject, deleted=True)
        if not versions:
            raise errors.subject_not_found(subject)
        if version in ("latest", "-1"):
            live = [v for v in versions if deleted or not v.deleted]
            if not live:
                raise errors.version_not_found(version)
            return live[-1]
        number = parse_version(version)
        entry = self.state.subjects.get(subject, {}).get(number)
        if entry is None or (entry.deleted and not deleted):
            raise errors.version_not_found(number)
        return entry

    def request_schema(self, body: Any) -> tuple[StoredSchema, Parsed]:
        """The schema a register, lookup or compatibility body carries, parsed (42201 when invalid)."""
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            raise errors.invalid_schema("the body has no \"schema\" string")
        text = body["schema"]
        if len(text.encode()) > self.settings.max_schema_bytes:
            raise errors.schema_too_large(len(text.encode()), self.settings.max_schema_bytes)
        schema_type = body.get("schemaType") or "AVRO"
        if schema_type not in SCHEMA_TYPES:
            raise errors.invalid_schema(f"unknown schemaType {schema_type!r}")
        refs = []
        for r in body.get("references") or []:
            try:
                refs.append(Reference(str(r["name"]), str(r["subject"]), int(r["version"])))
            except (KeyError, TypeError, ValueError) as exc:
                raise errors.invalid_schema(f"a reference needs name, subject and version: {r!r}") from exc
        stored = StoredSchema(schema_type, text, tuple(refs))
        return stored, self.parse(schema_type, text, stored.references)

    def find_in_subject(self, subject: str, stored: StoredSchema, parsed: Parsed, deleted: bool = False) -> Any:
        for entry in reversed(self.state.versions(subject, deleted=deleted)):
            other = self.state.schemas.get(entry.schema_id)
            if other is None or other.schema_type != stored.schema_type or other.references != stored.references:
                continue
            if other.schema == stored.schema or self.parse_stored(other).canonical == parsed.canonical:
                return entry
        return None

    def compatibility_messages(self, subject: str, parsed: Parsed, level: str, against: list[Any]) -> list[str]:
        """Problems of `parsed` against the versions `against` (oldest first) under `level`."""
        if level == "NONE" or not against:
            return []
        targets = against if level.endswith("_TRANSITIVE") else against[-1:]
        for entry in reversed(targets):
            old = self.parse_stored(self.state.schemas[entry.schema_id])
            problems = []
            if level.startswith(("BACKWARD", "FULL")):
                problems += compatibility_problems(parsed, old)
            if level.startswith(("FORWARD", "FULL")):
                problems += compatibility_problems(old, parsed)
            if problems:
                stored = self.state.schemas[entry.schema_id]
                return problems + [f"{{oldSchemaVersion: {entry.version}}}", f"{{oldSchema: '{stored.schema}'}}",
                                   f"{{compatibility: '{level}'}}"]
        return []

    # ---- writes (leader only) -------------------------------------------------------------------

    async def _write(self, records: list[tuple[bytes, bytes | None]]) -> None:
        """Append `records` as the leader and wait until they are applied (and not fenced)."""
        assert self.log is not None and self.epoch is not None
        epoch = self.epoch
        offsets = [await self.log.produce(key, value, epoch) for key, value in records]
        await self.log.wait_applied(offsets[-1])
        if any(o in self.state.ignored for o in offsets) or self.state.epoch != epoch:
            raise errors.forwarding_failed("this instance lost the lead while writing; try again")

    def _require_leader(self) -> None:
        if not self.is_leader:
            raise NotLeader(self.state.leader_url if self.state.leader_instance != self.instance else None)

    def check_mode_writable(self, subject: str | None, importing: bool = False) -> str:
        mode = self.state.mode(subject)
        if mode in ("READONLY", "READONLY_OVERRIDE"):
            raise errors.not_permitted(f"Subject {subject} is in read-only mode" if subject
                                       else "The registry is in read-only mode")
        if importing and mode != "IMPORT":
            raise errors.not_permitted(f"Subject {subject} is not in import mode")
        return mode

    async def register(self, subject: str, body: Any, normalize: bool = False) -> dict[str, Any]:
        check_subject(subject)
        importing = isinstance(body, dict) and body.get("id") not in (None, -1, 0)
        mode = self.check_mode_writable(subject, importing)
        stored, parsed = self.request_schema(body)
        self._require_leader()
        async with self._write_lock:
            self._require_leader()
            assert self.log is not None
            await self.log.caught_up()
            existing = self.find_in_subject(subject, stored, parsed)
            if existing is not None and not importing:
                return {"id": existing.schema_id}
            versions = self.state.versions(subject, deleted=True)
            live = [v for v in versions if not v.deleted]
            if mode == "IMPORT":
                schema_id = int(body["id"]) if importing else self._id_for(stored, parsed)
                version = int(body.get("version") or (versions[-1].version + 1 if versions else 1))
                other = self.state.schemas.get(schema_id)
                if other is not None and (other.schema_type != stored.schema_type
                                          or self.parse_stored(other).canonical != parsed.canonical):
                    raise errors.id_does_not_match(f"Overwrite new schema with id {schema_id} is not permitted.")
            else:
                level = self.state.compatibility(subject)
                problems = self.compatibility_messages(subject, parsed, level, live)
                if problems:
                    raise errors.incompatible("Schema being registered is incompatible with an earlier schema for "
                                              f"subject \"{subject}\", details: [{', '.join(problems)}]")
                schema_id = self._id_for(stored, parsed)
                version = versions[-1].version + 1 if versions else 1
            await self._write([(schema_key(subject, version),
                                schema_value(subject, version, schema_id, stored, deleted=False))])
            return {"id": schema_id}

    def _id_for(self, stored: StoredSchema, parsed: Parsed) -> int:
        for schema_id, other in self.state.schemas.items():
            if other.schema_type == stored.schema_type and other.references == stored.references and (
                    other.schema == stored.schema or self.parse_stored(other).canonical == parsed.canonical):
                return schema_id
        return self.state.max_id + 1

    async def delete_subject(self, subject: str, permanent: bool) -> list[int]:
        self.check_mode_writable(subject)
        versions = self.state.versions(subject, deleted=True)
        if not versions:
            raise errors.subject_not_found(subject)
        live = [v for v in versions if not v.deleted]
        if permanent and live:
            raise errors.subject_not_soft_deleted(subject)
        if not permanent and not live:
            raise errors.subject_soft_deleted(subject)
        targets = versions if permanent else live
        for v in targets:
            if self.state.referenced_by(subject, v.version):
                raise errors.reference_exists(f"One or more references exist to the schema "
                                              f"{{magic=1,keytype=SCHEMA,subject={subject},version={v.version}}}.")
        await self._deletes(subject, targets, permanent)
        return [v.version for v in targets]

    async def delete_version(self, subject: str, version: str, permanent: bool) -> int:
        self.check_mode_writable(subject)
        entry = self.version_entry(subject, version, deleted=True)
        if version in ("latest", "-1") and not permanent:
            entry = self.version_entry(subject, version)
        if permanent and not entry.deleted:
            raise errors.version_not_soft_deleted(subject, entry.version)
        if not permanent and entry.deleted:
            raise errors.version_soft_deleted(subject, entry.version)
        if self.state.referenced_by(subject, entry.version):
            raise errors.reference_exists(f"One or more references exist to the schema "
                                          f"{{magic=1,keytype=SCHEMA,subject={subject},version={entry.version}}}.")
        await self._deletes(subject, [entry], permanent)
        return entry.version

    async def _deletes(self, subject: str, entries: list[Any], permanent: bool) -> None:
        self._require_leader()
        async with self._write_lock:
            self._require_leader()
            records: list[tuple[bytes, bytes | None]] = []
            for entry in entries:
                if permanent:
                    records.append((schema_key(subject, entry.version), None))
                else:
                    stored = self.state.schemas[entry.schema_id]
                    records.append((schema_key(subject, entry.version),
                                    schema_value(subject, entry.version, entry.schema_id, stored, deleted=True)))
            if permanent:
                records.append((b'{"keytype":"IDS","magic":0}',
                                json.dumps({"max_id": self.state.max_id}).encode()))
                if not [v for v in self.state.versions(subject, deleted=True) if v not in entries]:
                    records.append((setting_key("CONFIG", subject), None))
            await self._write(records)
            if permanent:
                self._parsed.clear()  # a version number may be given again: parses naming it are stale

    async def set_config(self, subject: str | None, body: Any) -> dict[str, Any]:
        if subject is not None:
            check_subject(subject)
        if not isinstance(body, dict):
            raise errors.bad_request("the body must be a JSON object")
        level = body.get("compatibility", body.get("compatibilityLevel"))
        if not isinstance(level, str) or level.upper() not in COMPATIBILITY_LEVELS:
            raise errors.invalid_compatibility(level)
        level = level.upper()
        await self._setting("CONFIG", subject, {"compatibilityLevel": level})
        return {"compatibility": level}

    async def delete_config(self, subject: str | None) -> dict[str, Any]:
        if subject is not None and subject not in self.state.configs:
            raise errors.compatibility_not_configured(subject)
        previous = self.state.compatibility(subject)
        await self._setting("CONFIG", subject, None)
        return {"compatibilityLevel": previous}

    async def set_mode(self, subject: str | None, body: Any, force: bool) -> dict[str, Any]:
        if subject is not None:
            check_subject(subject)
        if not isinstance(body, dict):
            raise errors.bad_request("the body must be a JSON object")
        mode = body.get("mode")
        if not isinstance(mode, str) or mode.upper() not in MODES:
            raise errors.invalid_mode(mode)
        mode = mode.upper()
        if mode == "IMPORT" and not force:
            busy = self.state.versions(subject, deleted=True) if subject is not None else self.state.subjects
            if busy:
                raise errors.not_permitted("Cannot import since found existing subjects")
        await self._setting("MODE", subject, {"mode": mode})
        return {"mode": mode}

    async def delete_mode(self, subject: str) -> dict[str, Any]:
        if subject not in self.state.modes:
            raise errors.mode_not_configured(subject)
        previous = self.state.mode(subject)
        await self._setting("MODE", subject, None)
        return {"mode": previous}

    async def _setting(self, keytype: str, subject: str | None, value: dict[str, Any] | None) -> None:
        self._require_leader()
        async with self._write_lock:
            self._require_leader()
            await self._write([(setting_key(keytype, subject), None if value is None else json.dumps(value).encode())])


def check_subject(subject: str) -> None:
    if not subject or len(subject) > 1000 or any(ord(c) < 32 for c in subject):
        raise errors.invalid_subject(subject)


def parse_version(version: str) -> int:
    try:
        number = int(version)
    except ValueError:
        raise errors.invalid_version(version) from None
    if number < 1 or number > 2**31 - 1:
        raise errors.invalid_version(version)
    return number
