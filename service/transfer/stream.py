"""Export streams in files: length-delimited Protobuf (the format to move
stores with: every byte as stored), or JSON lines (for people: one record
per line in Protobuf's JSON mapping, payloads as JSON when their type is
known). Readers tell the two apart by the first line.

Length-delimited means each ``ExportRecord`` is its size as a base-128
varint followed by its bytes, as Protobuf's ``writeDelimitedTo`` and
``parseDelimitedFrom`` (Java, C++) and most languages' libraries do it.

JSON lines encode each payload again from its JSON on the way back: equal
in meaning, not necessarily in bytes (field order, unknown fields). A
payload whose type the writer did not know, or a sealed one, is carried as
``{"@type": …, "@base64": …}`` and comes back byte for byte.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any, BinaryIO

from google.protobuf import descriptor_pool, json_format
from google.protobuf.message import DecodeError

from chronicle.v1 import export_pb2
from service.errors import FieldViolation, InvalidInput

# What an export's header says it is (ExportHeader.format).
FORMAT = "chronicle.export"
EXPORT_INCOMPLETE = "EXPORT_INCOMPLETE"
BINARY = "binary"
JSON_LINES = "jsonl"
FORMATS = (BINARY, JSON_LINES)
# A record larger than this is not one Chronicle wrote (a server's messages are smaller).
MAX_RECORD_BYTES = 256 * 1024 * 1024


class Writer:
    """Writes records to ``out`` in ``format``; ``pool`` resolves payload
    types for JSON (the default pool holds the loaded plugins')."""

    def __init__(self, out: BinaryIO, format: str, *, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        if format not in FORMATS:
            raise ValueError(f"unknown export format {format!r}: {' or '.join(FORMATS)}")
        self._out = out
        self._json = format == JSON_LINES
        self._pool = pool or descriptor_pool.Default()

    def write(self, record: export_pb2.ExportRecord) -> None:
        if self._json:
            self._out.write(json.dumps(to_json(record, self._pool), ensure_ascii=False).encode() + b"\n")
        else:
            data = record.SerializeToString()
            self._out.write(_varint(len(data)) + data)


def to_json(record: export_pb2.ExportRecord, pool: descriptor_pool.DescriptorPool) -> dict[str, object]:
    """A record in Protobuf's JSON mapping, with its payload as JSON when
    ``pool`` knows its type, else as its bytes in base64."""
    if record.WhichOneof("record") != "event" or not record.event.event.HasField("payload"):
        return json_format.MessageToDict(record, preserving_proto_field_name=True, descriptor_pool=pool)
    try:
        return json_format.MessageToDict(record, preserving_proto_field_name=True, descriptor_pool=pool)
    except (TypeError, KeyError, json_format.Error):
        pass  # a payload type the pool does not know
    bare = export_pb2.ExportRecord()
    bare.CopyFrom(record)
    bare.event.event.ClearField("payload")
    data = json_format.MessageToDict(bare, preserving_proto_field_name=True, descriptor_pool=pool)
    payload = record.event.event.payload
    data["event"]["event"]["payload"] = {
        "@type": payload.type_url,
        "@base64": base64.b64encode(payload.value).decode(),
    }
    return data


def from_json(data: object, pool: descriptor_pool.DescriptorPool, *, where: str) -> export_pb2.ExportRecord:
    """A record from ``to_json``'s form."""
    if not isinstance(data, dict):
        raise InvalidInput.for_field(where, "must be a JSON object", reason="BAD_RECORD")
    record = export_pb2.ExportRecord()
    raw: dict[str, Any] | None = None
    envelope = data.get("event", {}).get("event") if isinstance(data.get("event"), dict) else None
    if isinstance(envelope, dict) and isinstance(envelope.get("payload"), dict) and "@base64" in envelope["payload"]:
        raw = envelope["payload"]
        data = {**data, "event": {**data["event"], "event": {k: v for k, v in envelope.items() if k != "payload"}}}
    elif isinstance(envelope, dict) and isinstance(envelope.get("payload"), dict):
        _check_payload_type(envelope, pool, where)
    try:
        json_format.ParseDict(data, record, descriptor_pool=pool)
        if raw is not None:
            record.event.event.payload.type_url = str(raw.get("@type", ""))
            record.event.event.payload.value = base64.b64decode(str(raw["@base64"]), validate=True)
    except (json_format.ParseError, ValueError, TypeError) as error:
        shown = " ".join(str(error).split())
        raise InvalidInput.for_field(where, f"is not an export record: {shown}", reason="BAD_RECORD") from None
    return record


def _check_payload_type(envelope: dict[str, Any], pool: descriptor_pool.DescriptorPool, where: str) -> None:
    """An event whose payload's ``@type`` no loaded plugin declares cannot
    be read from JSON (its fields are known only to its type): refused as
    the importer refuses such an event (UNKNOWN_EVENT_TYPE, naming it),
    not with Protobuf's "Can not find message descriptor"."""
    type_url = envelope["payload"].get("@type")
    if not isinstance(type_url, str):
        return  # Protobuf says what is wrong with it
    event_type = type_url.rpartition("/")[2]
    try:
        pool.FindMessageTypeByName(event_type)
    except KeyError:
        why = (
            f"no loaded plugin declares event type {event_type!r}, so its payload cannot be read from JSON (load"
            " the plugin that does; a payload of a type Chronicle does not know can only be carried as"
            ' {"@type": ..., "@base64": ...}, and is then refused for the same reason unless a plugin reads it)'
        )
        raise InvalidInput(
            f"{where}: event {envelope.get('event_id', '')} (aggregate {envelope.get('aggregate_id', '')!r}) cannot"
            f" be imported: {why}",
            reason="UNKNOWN_EVENT_TYPE",
            violations=(FieldViolation(f"{where}.event.event.payload", why),),
            metadata={
                "record": where.removeprefix("record[").removesuffix("]"),
                "event_id": str(envelope.get("event_id", "")),
                "aggregate_id": str(envelope.get("aggregate_id", "")),
                "event_type": event_type,
            },
        ) from None


def read(source: BinaryIO, *, pool: descriptor_pool.DescriptorPool | None = None) -> Iterator[export_pb2.ExportRecord]:
    """The records of ``source``, in either format (told apart by the first
    line: JSON lines begin with a JSON object, a binary stream with a varint).

    A source whose first record is not a ``chronicle.export`` header (a text
    file, another program's JSON, bytes that do not parse) is NOT_AN_EXPORT;
    one that ends inside a record (a binary record cut short, a last JSON
    line without its end) is EXPORT_INCOMPLETE, after the whole records
    before it."""
    pool = pool or descriptor_pool.Default()
    if _peek(source, len(_BOM) + 1) == _BOM + b"{":
        # JSON lines saved by an editor (or PowerShell) that begins files
        # with a UTF-8 byte order mark: read as without it (before, taken
        # for the binary format, a record of 258,989,551 bytes).
        source.read(len(_BOM))
    first = source.readline() if _peek(source) == b"{" else b""
    if first:
        try:
            data = json.loads(first)
        except ValueError:
            data = None
        if isinstance(data, dict):
            yield from _json_lines(data, source, pool)
            return
    yield from _delimited(first, source)


def _not_an_export(why: str) -> InvalidInput:
    return InvalidInput(
        f"this is not a Chronicle export: an export begins with a {FORMAT!r} header, and {why}",
        reason="NOT_AN_EXPORT",
    )


def _checked_first(record: export_pb2.ExportRecord) -> export_pb2.ExportRecord:
    """The first record, if it is an export's header."""
    if record.WhichOneof("record") != "header" or record.header.format != FORMAT:
        raise _not_an_export("its first record is not one")
    return record


# UTF-8's byte order mark, which some editors write at a text file's start.
_BOM = b"\xef\xbb\xbf"


def _peek(source: BinaryIO, count: int = 1) -> bytes:
    peek = getattr(source, "peek", None)
    if peek is not None:
        return bytes(peek(count)[:count])
    raise TypeError("reading an export needs a buffered binary file")


def _json_lines(
    first: dict[str, object], source: BinaryIO, pool: descriptor_pool.DescriptorPool
) -> Iterator[export_pb2.ExportRecord]:
    try:
        header = from_json(first, pool, where="record[0]")
    except InvalidInput:
        raise _not_an_export("its first line is JSON of something else") from None
    yield _checked_first(header)
    for index, line in enumerate(source, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as error:
            if not line.endswith(b"\n"):
                # The last line, without its end: the file was cut inside it
                # (every record the writer writes ends with a new line).
                raise _cut(index) from None
            raise InvalidInput.for_field(f"record[{index}]", f"is not JSON: {error}", reason="BAD_RECORD") from None
        yield from_json(data, pool, where=f"record[{index}]")


def _delimited(already: bytes, source: BinaryIO) -> Iterator[export_pb2.ExportRecord]:
    buffer = bytearray(already)
    index = 0

    def take(count: int) -> bytes | None:
        while len(buffer) < count:
            chunk = source.read(max(count - len(buffer), 65536))
            if not chunk:
                return None
            buffer.extend(chunk)
        taken = bytes(buffer[:count])
        del buffer[:count]
        return taken

    def bad(description: str) -> InvalidInput:
        if index == 0:  # what the file begins with is no export's header
            return _not_an_export(f"its first bytes are not a record: it {description}")
        return InvalidInput.for_field(f"record[{index}]", description, reason="BAD_RECORD")

    while True:
        size, shift = 0, 0
        while True:
            byte = take(1)
            if byte is None:
                if shift:
                    raise _cut(index) if index else bad("ends inside its first record's length")
                return
            size |= (byte[0] & 0x7F) << shift
            shift += 7
            if not byte[0] & 0x80:
                break
            if shift > 63:
                raise bad("has no valid length")
        if size > MAX_RECORD_BYTES:
            raise bad(f"is {size} bytes long, too long")
        data = take(size)
        if data is None:
            raise _cut(index) if index else bad(f"announces a record of {size} bytes, longer than the file")
        record = export_pb2.ExportRecord()
        try:
            record.ParseFromString(data)
        except DecodeError:
            raise bad("does not parse as an export record") from None
        yield _checked_first(record) if index == 0 else record
        index += 1


def _cut(index: int) -> InvalidInput:
    return InvalidInput(
        f"the export is cut short inside record {index}: the file is incomplete (the {index} records before it"
        " are whole)",
        reason=EXPORT_INCOMPLETE,
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
