"""Schema types: parsing (with references), a canonical form for identity, and compatibility.

- AVRO: parsed by Apache Avro's `avro` package (references become named types in one `Names`);
  compatibility is `avro.compatibility.ReaderWriterCompatibilityChecker`, the Avro spec's rules.
- JSON: JSON Schema checked against its metaschema by `jsonschema`; `$ref`s to other documents
  must name a reference. Compatibility: the rules written in `json_compat` (docs/schema-registry.md).
- PROTOBUF: a `.proto` text (compiled by protoc from grpcio-tools) or a base64 FileDescriptorProto
  (Confluent's "serialized" form, which confluent-kafka's Python serializer sends), built into a
  protobuf DescriptorPool with its references, which checks names and types. Compatibility: the
  wire rules written in `proto_compat`.

Compatibility functions take (reader, writer) and return the list of problems (empty: compatible).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import errors

AVRO, JSON, PROTOBUF = "AVRO", "JSON", "PROTOBUF"
SCHEMA_TYPES = (JSON, PROTOBUF, AVRO)

COMPATIBILITY_LEVELS = ("NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL",
                        "FULL_TRANSITIVE")


@dataclass(frozen=True)
class Reference:
    name: str
    subject: str
    version: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "subject": self.subject, "version": self.version}


@dataclass(frozen=True)
class StoredSchema:
    """A schema as the store keeps it: its type, its text as registered, its references."""

    schema_type: str
    schema: str
    references: tuple[Reference, ...] = ()


# (subject, version) -> the stored schema a reference points at, or None.
Resolver = Callable[[str, int], StoredSchema | None]


@dataclass
class Parsed:
    """A parsed schema: `canonical` identifies it (same canonical, type and references = same id)."""

    schema_type: str
    canonical: str
    obj: Any  # avro Schema | JSON document | FileDescriptorProto
    refs: dict[str, Any] = field(default_factory=dict)  # reference name -> parsed object (JSON, PROTOBUF)


def _ref_closure(references: tuple[Reference, ...], resolve: Resolver, depth: int = 0) -> Iterator[
        tuple[Reference, StoredSchema]]:
    """Referenced schemas, dependencies first (each once)."""
    if depth > 32:
        raise errors.invalid_schema("references nest deeper than 32")
    seen: set[tuple[str, int]] = set()
    for ref in references:
        stored = resolve(ref.subject, ref.version)
        if stored is None:
            raise errors.invalid_schema(f"reference {ref.name!r} -> subject {ref.subject!r} version "
                                        f"{ref.version} not found")
        for sub in _ref_closure(stored.references, resolve, depth + 1):
            key = (sub[0].subject, sub[0].version)
            if key not in seen:
                seen.add(key)
                yield sub
        if (ref.subject, ref.version) not in seen:
            seen.add((ref.subject, ref.version))
            yield ref, stored


def parse(schema_type: str, text: str, references: tuple[Reference, ...], resolve: Resolver) -> Parsed:
    """Parse `text` as `schema_type`; raises RegistryError 42201 when it is not a valid schema."""
    if schema_type == AVRO:
        return _parse_avro(text, references, resolve)
    if schema_type == JSON:
        return _parse_json(text, references, resolve)
    if schema_type == PROTOBUF:
        return _parse_proto(text, references, resolve)
    raise errors.invalid_schema(f"unknown schema type {schema_type!r}")


def compatibility_problems(reader: Parsed, writer: Parsed) -> list[str]:
    """Why data written with `writer` cannot be read with `reader` (empty: it can)."""
    if reader.schema_type != writer.schema_type:
        return [f"Incompatible because of different schema type: {writer.schema_type} -> {reader.schema_type}"]
    if reader.schema_type == AVRO:
        return _avro_compat(reader, writer)
    if reader.schema_type == JSON:
        return json_compat(reader.obj, writer.obj, "#")
    return proto_compat(reader.obj, writer.obj)


# ---- AVRO ---------------------------------------------------------------------------------------


def _parse_avro(text: str, references: tuple[Reference, ...], resolve: Resolver) -> Parsed:
    import avro.errors
    import avro.name
    import avro.schema

    names = avro.name.Names()
    try:
        for _ref, stored in _ref_closure(references, resolve):
            avro.schema.make_avsc_object(json.loads(stored.schema), names)
        doc = json.loads(text)
        schema = avro.schema.make_avsc_object(doc, names)
    except (ValueError, TypeError, KeyError, AttributeError, avro.errors.AvroException) as exc:
        raise errors.invalid_schema(str(exc) or type(exc).__name__) from exc
    return Parsed(AVRO, json.dumps(doc, separators=(",", ":")), schema)


def _avro_compat(reader: Parsed, writer: Parsed) -> list[str]:
    from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

    result = ReaderWriterCompatibilityChecker().get_compatibility(reader.obj, writer.obj)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    where = ", ".join(sorted(map(str, result.locations))) or "/"
    detail = ", ".join(sorted(map(str, result.messages)))
    return [f"{{errorType:'{kind.name.upper()}', description:'The reader schema cannot read data written with the "
            f"writer schema at {where}: {detail}'}}" for kind in result.incompatibilities]


# ---- JSON Schema --------------------------------------------------------------------------------


def _external_refs(doc: Any) -> Iterator[str]:
    if isinstance(doc, dict):
        ref = doc.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            yield ref.split("#", 1)[0]
        for value in doc.values():
            yield from _external_refs(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from _external_refs(value)


def _parse_json(text: str, references: tuple[Reference, ...], resolve: Resolver) -> Parsed:
    import jsonschema
    import jsonschema.exceptions

    def load(source: str) -> Any:
        try:
            doc = json.loads(source)
        except ValueError as exc:
            raise errors.invalid_schema(f"not JSON: {exc}") from exc
        if not isinstance(doc, dict | bool):
            raise errors.invalid_schema("a JSON Schema is an object or a boolean")
        try:
            jsonschema.validators.validator_for(doc).check_schema(doc)
        except jsonschema.exceptions.SchemaError as exc:
            raise errors.invalid_schema(exc.message) from exc
        return doc

    refs: dict[str, Any] = {}
    known: set[str] = set()
    for ref, stored in _ref_closure(references, resolve):
        if stored.schema_type != JSON:
            raise errors.invalid_schema(f"reference {ref.name!r} is {stored.schema_type}, not JSON")
        doc = load(stored.schema)
        refs[ref.name] = doc
        known.add(ref.name)
        if isinstance(doc, dict) and isinstance(doc.get("$id"), str):
            known.add(doc["$id"])
    doc = load(text)
    for target in _external_refs(doc):
        if target and target not in known and not any(target.endswith("/" + k) or k.endswith("/" + target)
                                                      for k in known):
            raise errors.invalid_schema(f"$ref {target!r} names no reference of this schema")
    return Parsed(JSON, json.dumps(doc, separators=(",", ":")), doc, refs)


_JSON_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")


def _types(schema: Any) -> set[str]:
    if not isinstance(schema, dict) or "type" not in schema:
        return set(_JSON_TYPES)
    t = schema["type"]
    types = {t} if isinstance(t, str) else set(t)
    if "number" in types:
        types.add("integer")
    return types


def _closed(schema: dict[str, Any]) -> bool:
    return schema.get("additionalProperties") is False


def json_compat(reader: Any, writer: Any, path: str) -> list[str]:
    """Can every document valid under `writer` be read by `reader`? The rules (a subset of
    Confluent's, documented in docs/schema-registry.md): types, enums, string and number bounds,
    object properties against open or closed content models, required properties, array items."""
    if reader is True or reader == {}:
        return []
    if reader is False:
        return [f"{{errorType:'SCHEMA_REMOVED', location:'{path}'}}"] if writer is not False else []
    if not isinstance(reader, dict) or not isinstance(writer, dict):
        return [] if reader == writer else [f"{{errorType:'TYPE_CHANGED', location:'{path}'}}"]
    problems: list[str] = []
    rtypes, wtypes = _types(reader), _types(writer)
    if not wtypes <= rtypes:
        kind = "TYPE_NARROWED" if rtypes < wtypes else "TYPE_CHANGED"
        problems.append(f"{{errorType:'{kind}', description:'The type at {path} was {sorted(wtypes)}, "
                        f"it is now {sorted(rtypes)}', location:'{path}'}}")
        return problems
    if "enum" in reader:
        missing = [v for v in writer.get("enum", [None]) if v not in reader["enum"]] if "enum" in writer else ["*"]
        if missing:
            problems.append(f"{{errorType:'ENUM_ARRAY_NARROWED', location:'{path}/enum'}}")
    for key, kind, tighter in (("maxLength", "MAX_LENGTH", lambda r, w: r < w), ("minLength", "MIN_LENGTH",
                                                                                   lambda r, w: r > w),
                               ("maximum", "MAXIMUM", lambda r, w: r < w), ("minimum", "MINIMUM",
                                                                             lambda r, w: r > w),
                               ("maxItems", "MAX_ITEMS", lambda r, w: r < w), ("minItems", "MIN_ITEMS",
                                                                               lambda r, w: r > w)):
        if key in reader and (key not in writer or tighter(reader[key], writer[key])):
            verb = "ADDED" if key not in writer else ("DECREASED" if key.startswith("max") else "INCREASED")
            problems.append(f"{{errorType:'{kind}_{verb}', location:'{path}/{key}'}}")
    if "object" in rtypes:
        rprops, wprops = reader.get("properties", {}), writer.get("properties", {})
        for name in rprops.keys() - wprops.keys():
            if not _closed(writer):
                problems.append(f"{{errorType:'PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL', "
                                f"location:'{path}/properties/{name}'}}")
        for name in wprops.keys() - rprops.keys():
            if _closed(reader):
                problems.append(f"{{errorType:'PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL', "
                                f"location:'{path}/properties/{name}'}}")
        for name in rprops.keys() & wprops.keys():
            problems += json_compat(rprops[name], wprops[name], f"{path}/properties/{name}")
        for name in set(reader.get("required", [])) - set(writer.get("required", [])):
            problems.append(f"{{errorType:'REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL', "
                            f"location:'{path}/required/{name}'}}")
    if "array" in rtypes and isinstance(reader.get("items"), dict) and isinstance(writer.get("items"), dict):
        problems += json_compat(reader["items"], writer["items"], f"{path}/items")
    return problems


# ---- PROTOBUF -----------------------------------------------------------------------------------

_WELL_KNOWN_PREFIXES = ("google/protobuf/", "google/type/", "confluent/")


def _proto_from_base64(text: str) -> Any:
    from google.protobuf import descriptor_pb2
    from google.protobuf.message import DecodeError

    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
        proto = descriptor_pb2.FileDescriptorProto()
        proto.ParseFromString(raw)
    except (binascii.Error, ValueError, UnicodeEncodeError, DecodeError) as exc:
        raise errors.invalid_schema(f"not a .proto file nor a serialized FileDescriptorProto: {exc}") from exc
    return proto


def _looks_serialized(text: str) -> bool:
    stripped = text.strip()
    return bool(stripped) and all(c.isalnum() or c in "+/=" for c in stripped) and len(stripped) % 4 == 0


def _proto_from_text(text: str, refs: dict[str, str]) -> Any:
    """Compile `.proto` text (and the referenced files, by name) with protoc from grpcio-tools."""
    from google.protobuf import descriptor_pb2

    try:
        import grpc_tools
    except ImportError as exc:  # pragma: no cover - a dependency
        raise errors.invalid_schema("PROTOBUF text needs grpcio-tools (protoc)") from exc
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    with tempfile.TemporaryDirectory(prefix="strata-registry-proto-") as tmp:
        main = "__strata_schema__.proto"
        for name, source in {**refs, main: text}.items():
            target = os.path.normpath(os.path.join(tmp, name))
            if not target.startswith(tmp + os.sep):
                raise errors.invalid_schema(f"reference name {name!r} leaves the schema's directory")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w") as f:
                f.write(source)
        out = os.path.join(tmp, "out.pb")
        proc = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp}", f"-I{include}",
                               f"--descriptor_set_out={out}", main], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().replace(tmp + os.sep, "")
            raise errors.invalid_schema(detail.replace(main, "schema") or "protoc refused it")
        with open(out, "rb") as f:
            files = descriptor_pb2.FileDescriptorSet.FromString(f.read()).file
    proto = files[-1]
    proto.name = "schema.proto" if proto.name == main else proto.name
    return proto


def proto_descriptor(stored: StoredSchema, resolve: Resolver) -> Any:
    """The FileDescriptorProto of a stored PROTOBUF schema."""
    if _looks_serialized(stored.schema):
        return _proto_from_base64(stored.schema)
    texts = {ref.name: s.schema for ref, s in _ref_closure(stored.references, resolve)}
    for name, source in list(texts.items()):
        if _looks_serialized(source):
            raise errors.invalid_schema(f"reference {name!r} is serialized; a .proto text imports .proto texts")
    return _proto_from_text(stored.schema, texts)


def _parse_proto(text: str, references: tuple[Reference, ...], resolve: Resolver) -> Parsed:
    from google.protobuf import descriptor_pb2, descriptor_pool

    proto = proto_descriptor(StoredSchema(PROTOBUF, text, references), resolve)
    deps = {ref.name: proto_descriptor(stored, resolve) for ref, stored in _ref_closure(references, resolve)}
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(fdp: Any) -> None:
        if fdp.name in added:
            return
        for dep in fdp.dependency:
            if dep in deps:
                add(deps[dep])
            elif dep.startswith(_WELL_KNOWN_PREFIXES):
                _add_well_known(pool, dep, added)
            else:
                raise errors.invalid_schema(f"import {dep!r} names no reference of this schema")
        pool.Add(fdp)
        added.add(fdp.name)

    try:
        for name, dep in deps.items():
            if dep.name != name:
                dep = descriptor_pb2.FileDescriptorProto.FromString(dep.SerializeToString())
                dep.name = name
                deps[name] = dep
        add(proto)
        pool.FindFileByName(proto.name)
    except errors.RegistryError:
        raise
    except Exception as exc:  # the pool's TypeError/KeyError name what is wrong
        raise errors.invalid_schema(str(exc)) from exc
    canonical = base64.b64encode(proto.SerializeToString(deterministic=True)).decode()
    return Parsed(PROTOBUF, canonical, proto, deps)


def _add_well_known(pool: Any, name: str, added: set[str]) -> None:
    import importlib

    from google.protobuf import descriptor_pb2, descriptor_pool

    module = "google.protobuf." + name.rsplit("/", 1)[-1].replace(".proto", "_pb2")
    try:
        importlib.import_module(module)
        found = descriptor_pool.Default().FindFileByName(name)
    except (ImportError, KeyError) as exc:
        raise errors.invalid_schema(f"import {name!r} is not a well-known type this registry knows") from exc
    for dep in found.dependencies:
        _add_well_known(pool, dep.name, added)
    if name not in added:
        fdp = descriptor_pb2.FileDescriptorProto()
        found.CopyToProto(fdp)
        pool.Add(fdp)
        added.add(name)


def _messages(proto: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(prefix: str, messages: Any) -> None:
        for m in messages:
            name = f"{prefix}.{m.name}" if prefix else m.name
            out[name] = m
            walk(name, m.nested_type)

    walk(proto.package, proto.message_type)
    return out


# Scalar kinds that read each other's bytes (the protobuf wire compatibility groups).
_WIRE_GROUPS = [{5, 13, 3, 4, 8}, {17, 18}, {7, 15}, {6, 16}, {9, 12}]  # int32/uint32/int64/uint64/bool, ...
_MESSAGE, _ENUM = 11, 14


def _scalar_compatible(a: int, b: int) -> bool:
    return a == b or any(a in g and b in g for g in _WIRE_GROUPS)


def proto_compat(reader: Any, writer: Any) -> list[str]:
    """Protobuf rules (docs/schema-registry.md): package kept, no message removed, per field number
    the kind (scalar/message/enum), scalar wire group and named type kept, no required field added or
    removed, no field moved into or out of a oneof."""
    problems: list[str] = []
    if reader.package != writer.package:
        problems.append(f"{{errorType:'PACKAGE_CHANGED', description:'{writer.package} -> {reader.package}'}}")
    rmsgs, wmsgs = _messages(reader), _messages(writer)
    for name, wmsg in wmsgs.items():
        rmsg = rmsgs.get(name)
        if rmsg is None:
            problems.append(f"{{errorType:'MESSAGE_REMOVED', location:'#/{name}'}}")
            continue
        rfields = {f.number: f for f in rmsg.field}
        wfields = {f.number: f for f in wmsg.field}
        for number, wf in wfields.items():
            rf = rfields.get(number)
            loc = f"#/{name}/{number}"
            if rf is None:
                if wf.label == 2:
                    problems.append(f"{{errorType:'REQUIRED_FIELD_REMOVED', location:'{loc}'}}")
                continue
            rkind = "message" if rf.type == _MESSAGE else "enum" if rf.type == _ENUM else "scalar"
            wkind = "message" if wf.type == _MESSAGE else "enum" if wf.type == _ENUM else "scalar"
            if rkind != wkind:
                problems.append(f"{{errorType:'FIELD_KIND_CHANGED', location:'{loc}'}}")
            elif rkind == "scalar" and not _scalar_compatible(rf.type, wf.type):
                problems.append(f"{{errorType:'FIELD_SCALAR_KIND_CHANGED', location:'{loc}'}}")
            elif rkind != "scalar" and rf.type_name.lstrip(".") != wf.type_name.lstrip("."):
                problems.append(f"{{errorType:'FIELD_NAMED_TYPE_CHANGED', location:'{loc}'}}")
            if rf.HasField("oneof_index") != wf.HasField("oneof_index"):
                problems.append(f"{{errorType:'FIELD_{'MOVED_TO' if rf.HasField('oneof_index') else 'REMOVED_FROM'}"
                                f"_ONEOF', location:'{loc}'}}")
        for number, rf in rfields.items():
            if number not in wfields and rf.label == 2:
                problems.append(f"{{errorType:'REQUIRED_FIELD_ADDED', location:'#/{name}/{number}'}}")
    return problems
