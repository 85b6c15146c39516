"""`strata replay --decode`: Confluent-framed values (schema registry wire format) as JSON.

A framed value is the byte 0, the schema id (4 bytes, big-endian) and the payload; for Protobuf
the payload starts with the message indexes (a zigzag varint count, then that many zigzag
varints; a lone 0 means the first message of the file). The schema is fetched once per id from
the registry (`GET /schemas/ids/{id}`, Protobuf with `?format=serialized`, the FileDescriptorProto)
and the payload is decoded by type:

* AVRO: fastavro's schemaless reader with the writer's schema (references resolved as named
  types). In the JSON out: bytes and fixed as standard base64 strings, decimals as strings,
  dates and times as ISO 8601 strings, UUIDs as strings; unions as the plain value.
* JSON: the payload is JSON already; it is parsed and written back compact.
* PROTOBUF: the message type the indexes point to, built from the descriptor (and its
  references) in a private DescriptorPool, parsed, and written with protobuf's json_format
  (proto field names, defaults left out, 64-bit integers as strings, as protobuf's JSON mapping says).

A value that is not framed (shorter than 5 bytes or not starting with 0) is written as without
--decode. A framed value whose schema id the registry does not know, or whose payload does not
decode, is an error naming its partition and offset, unless `--decode-errors raw`, which writes
such values as without --decode.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import importlib
import io
import json
import struct
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

from .replay import ReplayError


class DecodeError(ReplayError):
    """A framed value that cannot be decoded (unknown schema id, bad payload, registry down)."""


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, decimal.Decimal):
        return str(obj)
    if isinstance(obj, datetime.date | datetime.time | datetime.datetime):
        return obj.isoformat()
    if isinstance(obj, uuid.UUID):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON")


def _zigzag_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(data):
            raise DecodeError("truncated message index")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
    return (result >> 1) ^ -(result & 1), pos


class Decoder:
    """Schema-registry decoding for one worker: schemas cached by id."""

    def __init__(self, url: str, pass_errors: bool = False, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.pass_errors = pass_errors
        self.timeout = timeout
        self.readers: dict[int, Callable[[bytes], Any]] = {}
        import orjson

        self.dumps = orjson.dumps

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path, headers={"Accept": "application/vnd.schemaregistry.v1+json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("message")
            except (ValueError, AttributeError):
                message = None
            raise DecodeError(f"the registry answered HTTP {exc.code} to {path}" +
                              (f": {message}" if message else "")) from None
        except (urllib.error.URLError, OSError) as exc:
            raise DecodeError(f"cannot reach the schema registry at {self.url}: "
                              f"{getattr(exc, 'reason', exc)}") from None

    def decode(self, value: bytes, partition: int, offset: int) -> tuple[bytes, int] | None:
        """(the value as JSON text, its schema id), or None for a value to write as it is."""
        if len(value) < 5 or value[0] != 0:
            return None
        (schema_id,) = struct.unpack_from(">I", value, 1)
        try:
            reader = self.readers.get(schema_id)
            if reader is None:
                reader = self.readers[schema_id] = self._reader(schema_id)
            return self.dumps(reader(value[5:]), default=_json_default), schema_id
        except Exception as exc:  # noqa: BLE001 - any failure is this record's, named with its position
            if self.pass_errors:
                return None
            reason = str(exc) if isinstance(exc, DecodeError) else f"{type(exc).__name__}: {exc}"
            raise DecodeError(f"partition {partition} offset {offset}: cannot decode the value with schema id "
                              f"{schema_id}: {reason} (--decode-errors raw writes such values undecoded)") from None

    def _reader(self, schema_id: int) -> Callable[[bytes], Any]:
        try:
            entry = self._get(f"/schemas/ids/{schema_id}")
        except DecodeError as exc:
            if "HTTP 404" in str(exc):
                raise DecodeError(f"schema id {schema_id} is not in the registry at {self.url}") from None
            raise
        kind = entry.get("schemaType") or "AVRO"
        if kind == "AVRO":
            return self._avro(entry)
        if kind == "JSON":
            import orjson

            return orjson.loads
        if kind == "PROTOBUF":
            return self._protobuf(schema_id, entry)
        raise DecodeError(f"schema id {schema_id} has the unknown type {kind!r}")

    def _reference_schemas(self, entry: dict[str, Any], query: str = "") -> list[dict[str, Any]]:
        """The schemas a schema references, depth first (a reference's own references before it)."""
        out: list[dict[str, Any]] = []
        seen: set[tuple[str, int]] = set()

        def walk(refs: list[dict[str, Any]]) -> None:
            for ref in refs or ():
                key = (ref["subject"], int(ref["version"]))
                if key in seen:
                    continue
                seen.add(key)
                got = self._get(f"/subjects/{urllib.parse.quote(ref['subject'], safe='')}/versions/"
                                f"{ref['version']}{query}")
                walk(got.get("references") or [])
                out.append({**got, "name": ref["name"]})

        walk(entry.get("references") or [])
        return out

    def _avro(self, entry: dict[str, Any]) -> Callable[[bytes], Any]:
        from fastavro import parse_schema, schemaless_reader

        named: dict[str, Any] = {}
        for ref in self._reference_schemas(entry):
            parse_schema(json.loads(ref["schema"]), named_schemas=named)
        schema = parse_schema(json.loads(entry["schema"]), named_schemas=named)

        def read(payload: bytes) -> Any:
            buf = io.BytesIO(payload)
            out = schemaless_reader(buf, schema, None)
            if buf.tell() != len(payload):
                raise DecodeError(f"{len(payload) - buf.tell()} byte(s) left after the Avro record")
            return out

        return read

    def _protobuf(self, schema_id: int, entry: dict[str, Any]) -> Callable[[bytes], Any]:
        from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
        from google.protobuf.descriptor_pool import Default

        # The well-known types' files enter protobuf's default pool when their modules are imported.
        for name in ("any", "api", "duration", "empty", "field_mask", "source_context", "struct", "timestamp",
                     "type", "wrappers"):
            importlib.import_module(f"google.protobuf.{name}_pb2")

        served = self._get(f"/schemas/ids/{schema_id}?format=serialized")
        main = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(served["schema"]))
        pool = descriptor_pool.DescriptorPool()
        added: set[str] = set()
        deps = {}
        for ref in self._reference_schemas(entry, "?format=serialized"):
            fdp = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(ref["schema"]))
            fdp.name = ref["name"]
            deps[ref["name"]] = fdp

        def add(fdp: Any) -> None:
            if fdp.name in added:
                return
            for dep in fdp.dependency:
                if dep in deps:
                    add(deps[dep])
                elif dep not in added:  # a well-known type (google/protobuf/...): from protobuf itself
                    known = descriptor_pb2.FileDescriptorProto()
                    Default().FindFileByName(dep).CopyToProto(known)
                    add(known)
            pool.Add(fdp)
            added.add(fdp.name)

        add(main)
        file_desc = pool.FindFileByName(main.name)
        classes: dict[tuple[int, ...], Any] = {}

        def message_class(indexes: tuple[int, ...]) -> Any:
            cls = classes.get(indexes)
            if cls is None:
                types = [file_desc.message_types_by_name[m.name] for m in main.message_type]  # declared order
                desc = None
                for i in indexes:
                    if i >= len(types):
                        raise DecodeError(f"message index {list(indexes)} is not in the schema")
                    desc = types[i]
                    types = list(desc.nested_types)
                cls = classes[indexes] = message_factory.GetMessageClass(desc)
            return cls

        def read(payload: bytes) -> Any:
            count, pos = _zigzag_varint(payload, 0)
            indexes: list[int] = []
            for _ in range(count):
                index, pos = _zigzag_varint(payload, pos)
                indexes.append(index)
            msg = message_class(tuple(indexes) or (0,))()
            msg.ParseFromString(payload[pos:])
            return json_format.MessageToDict(msg, preserving_proto_field_name=True)

        return read
