"""Bad input for every RPC: what to send and how to send it.

The RPCs are found in the generated descriptors of ``chronicle.v1`` (every
``*_service_pb2`` module), so a service or method added later is fuzzed
without anyone listing it here. Requests are sent as raw bytes
(``request_serializer=None``), bypassing the client's serialization, so the
server sees exactly what the strategies made: random bytes, valid requests
cut short or corrupted, string fields holding invalid UTF-8, and
structurally valid requests whose values are hostile (huge and empty
strings, control characters, SQL metacharacters, extreme numbers, ``Any``
payloads of unknown types or that do not parse as the declared type).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

import chronicle.v1
from service.plugins.registry import Registry
from tests.support.grpc_client import reason_of

# -- the RPCs ------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    path: str
    input: Descriptor
    client_streaming: bool
    server_streaming: bool

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]


def chronicle_rpcs() -> list[Rpc]:
    """Every method of every service in chronicle.v1."""
    found: list[Rpc] = []
    for module_info in sorted(pkgutil.iter_modules(chronicle.v1.__path__), key=lambda m: m.name):
        if not module_info.name.endswith("_service_pb2"):
            continue
        module = importlib.import_module(f"chronicle.v1.{module_info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found.append(_rpc(service.full_name, method))
    return found


def _rpc(service: str, method: MethodDescriptor) -> Rpc:
    return Rpc(f"/{service}/{method.name}", method.input_type, method.client_streaming, method.server_streaming)


@dataclass(frozen=True)
class Answer:
    code: grpc.StatusCode
    reason: str  # google.rpc.ErrorInfo.reason, "" if none was sent
    responses: list[bytes]


def call(channel: grpc.Channel, rpc: Rpc, data: bytes, *, timeout: float = 10.0) -> Answer:
    """Send ``data`` as the request of ``rpc``; a response stream is read
    for at most one message (a subscription would go on forever)."""
    kind = ("stream" if rpc.client_streaming else "unary") + "_" + ("stream" if rpc.server_streaming else "unary")
    method: Callable[..., Any] = getattr(channel, kind)(rpc.path, request_serializer=None, response_deserializer=None)
    request: Any = iter([data]) if rpc.client_streaming else data
    responses: list[bytes] = []
    try:
        if not rpc.server_streaming:
            return Answer(grpc.StatusCode.OK, "", [method(request, timeout=timeout)])
        stream = method(request, timeout=timeout)
        for response in stream:
            responses.append(response)
            stream.cancel()
            break
        return Answer(grpc.StatusCode.OK, "", responses)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.CANCELLED and responses:  # our own cancel after one message
            return Answer(grpc.StatusCode.OK, "", responses)
        return Answer(error.code(), reason_of(error), [])


# -- values --------------------------------------------------------------

SQL = [
    "'; DROP TABLE chronicle.events; --",
    '" OR 1=1 --',
    "acc-1' OR '1'='1",
    "%s",
    "%(aggregate_id)s",
    "$1",
    "\\",
    "E'\\x00'",
    "chronicle.events",
    "*",
]
CONTROL = ["\x00", "a\x00b", "\n", "\r\n", "\t", "\x1b[2J", "\x7f", "\u202e", "\ufeff", "\u2028"]
EDGE_INTS = [0, 1, -1, 2, 2**31 - 1, -(2**31), 2**32 - 1, 2**53 + 1, 2**63 - 1, -(2**63), 2**63, 2**64 - 1]
INVALID_UTF8 = [b"\xff", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xf0\x28\x8c\xbc", b"abc\xed\xa0\x80"]

nasty_strings: st.SearchStrategy[str] = st.one_of(
    st.just(""),
    st.text(max_size=40),
    st.sampled_from(SQL + CONTROL),
    st.builds(lambda base, n: base * n, st.sampled_from(["a", "é", "\x00", "'"]), st.integers(201, 70_000)),
    st.builds(lambda a, b: a + b, st.sampled_from(CONTROL + SQL), st.text(max_size=20)),
)


def ints_for(field: FieldDescriptor) -> st.SearchStrategy[int]:
    bits = 32 if field.cpp_type in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_UINT32) else 64
    signed = field.cpp_type in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return st.one_of(st.sampled_from([i for i in EDGE_INTS if low <= i <= high]), st.integers(low, high))


class Values:
    """Strategies for hostile but well-formed requests, by descriptor."""

    def __init__(self, registry: Registry, known_ids: list[str]) -> None:
        self._registry = registry
        self._known_ids = known_ids
        commands = [spec.name for aggregate in registry.aggregates for spec in aggregate.commands.values()]
        events = [spec.name for aggregate in registry.aggregates for spec in aggregate.events.values()]
        self._type_names = commands + events
        self._type_urls = st.one_of(
            st.sampled_from([f"type.googleapis.com/{name}" for name in self._type_names]),
            st.sampled_from(["", "type.googleapis.com/", "type.googleapis.com/no.such.Type", "bank.v1.Deposit"]),
            nasty_strings,
        )

    def strings_for(self, field: FieldDescriptor) -> st.SearchStrategy[str]:
        name = field.name
        if name.endswith("command_id"):
            return st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), nasty_strings)
        if name in ("aggregate_id", "key"):
            return st.one_of(st.sampled_from(self._known_ids), nasty_strings)
        if name in ("event_types", "aggregate_types", "projection", "name"):
            known = self._type_names + [a.name for a in self._registry.aggregates]
            known += [p.name for p in self._registry.projections]
            return st.one_of(st.sampled_from(known), nasty_strings)
        return nasty_strings

    def any_values(self, depth: int) -> st.SearchStrategy[any_pb2.Any]:
        def packed(type_url: str, value: bytes) -> any_pb2.Any:
            return any_pb2.Any(type_url=type_url, value=value)

        def declared(name: str) -> st.SearchStrategy[any_pb2.Any]:
            spec = self._registry.command(name) or self._registry.event(name)
            assert spec is not None
            return self.messages(spec.message_type.DESCRIPTOR, depth + 1).map(
                lambda m: packed(f"type.googleapis.com/{name}", m.SerializeToString())
            )

        return st.one_of(
            st.builds(packed, self._type_urls, st.binary(max_size=64)),
            st.sampled_from(self._type_names).flatmap(declared),
        )

    def value(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if field.message_type is not None:
            if field.message_type.full_name == "google.protobuf.Any":
                return self.any_values(depth)
            return self.messages(field.message_type, depth + 1)
        cpp = field.cpp_type
        if cpp == FieldDescriptor.CPPTYPE_STRING:
            return self.strings_for(field) if field.type == FieldDescriptor.TYPE_STRING else st.binary(max_size=256)
        if cpp == FieldDescriptor.CPPTYPE_BOOL:
            return st.booleans()
        if cpp == FieldDescriptor.CPPTYPE_ENUM:
            numbers = [v.number for v in field.enum_type.values] if field.enum_type is not None else [0]
            return st.one_of(st.sampled_from(numbers), st.integers(-5, 1000))
        if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
            return st.floats(allow_nan=True, width=32 if cpp == FieldDescriptor.CPPTYPE_FLOAT else 64)
        return ints_for(field)

    def messages(self, descriptor: Any, depth: int = 0) -> st.SearchStrategy[Message]:
        """Messages of ``descriptor`` (a Descriptor: upb's or Python's)."""
        cls = message_factory.GetMessageClass(descriptor)
        if depth > 4:
            return st.just(cls())
        fields: dict[str, st.SearchStrategy[Any]] = {}
        for field in descriptor.fields:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                key_field, value_field = (
                    field.message_type.fields_by_name["key"],
                    field.message_type.fields_by_name["value"],
                )
                fields[field.name] = st.dictionaries(
                    self.value(key_field, depth), self.value(value_field, depth), max_size=4
                ) | st.dictionaries(st.text(min_size=1, max_size=3), st.just("v"), min_size=65, max_size=70)
            elif field.is_repeated:
                fields[field.name] = st.lists(self.value(field, depth), max_size=3)
                if depth == 0:  # around the limits of lists (100 entries)
                    fields[field.name] |= st.lists(self.value(field, depth + 1), min_size=99, max_size=105)
            else:
                fields[field.name] = self.value(field, depth)

        @st.composite
        def build(draw: st.DrawFn) -> Message:
            message = cls()
            for name, strategy in fields.items():
                if not draw(st.booleans()):
                    continue
                value = draw(strategy)
                field = descriptor.fields_by_name[name]
                if field.message_type is not None and field.message_type.GetOptions().map_entry:
                    getattr(message, name).update(value)
                elif field.is_repeated:
                    getattr(message, name).extend(value)
                elif field.message_type is not None:
                    getattr(message, name).CopyFrom(value)
                else:
                    setattr(message, name, value)
            return message

        return build()


# -- the wire ------------------------------------------------------------

# ``data.draw`` of a test, or the ``draw`` of a composite strategy.
Draw = Callable[..., Any]


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def with_invalid_utf8(descriptor: Any, data: bytes, draw: Draw) -> bytes:
    """``data`` with a string field (if the message has one) set to bytes
    that are not UTF-8: only the wire can carry that."""
    strings = [f for f in descriptor.fields if f.type == FieldDescriptor.TYPE_STRING]
    if not strings:
        return data
    field = draw(st.sampled_from(strings))
    return data + length_delimited(field.number, draw(st.sampled_from(INVALID_UTF8)))


def corrupted(data: bytes, draw: Draw) -> bytes:
    """``data`` cut short, with bytes flipped, or with garbage appended."""
    how = draw(st.sampled_from(["truncate", "flip", "append", "varint"]))
    if how == "truncate" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "flip" and data:
        index = draw(st.integers(0, len(data) - 1))
        return data[:index] + bytes([data[index] ^ draw(st.integers(1, 255))]) + data[index + 1 :]
    if how == "varint":  # an 11-byte varint: longer than any valid one
        return data + varint(draw(st.integers(1, 30)) << 3) + b"\xff" * 10 + b"\x01"
    garbage: bytes = draw(st.binary(min_size=1, max_size=32))
    return data + garbage
