"""Message types learned from a running server through gRPC reflection.

The CLI uses this to turn JSON into any plugin's command message and events
back into JSON, without having the plugin's code installed: whatever the
server serves, the CLI can speak.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from service.json_input import JsonInputError, parse_object


class UnknownType(LookupError):
    pass


class RemoteTypes:
    def __init__(self, channel: grpc.Channel) -> None:
        self._pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))

    @property
    def pool(self) -> descriptor_pool.DescriptorPool:
        """The server's types, for Protobuf's JSON mapping of ``Any``."""
        return self._pool

    def message_class(self, full_name: str) -> type[Message]:
        try:
            descriptor = self._pool.FindMessageTypeByName(full_name)
        except KeyError:
            raise UnknownType(f"the server knows no message type {full_name!r}") from None
        return message_factory.GetMessageClass(descriptor)

    def from_json(self, full_name: str, text: str) -> Message:
        """``text`` (a JSON object; empty: ``{}``) as a ``full_name``. The
        JSON is checked first, so a mistake in it is reported before the
        server is even asked for the type."""
        fields = parse_object(text or "{}")
        message = self.message_class(full_name)()
        try:
            json_format.ParseDict(fields, message)
        except json_format.ParseError as error:
            shown = " ".join(str(error).split())  # protobuf's message spans lines
            raise JsonInputError(f"the payload does not fit {full_name}: {shown}") from None
        return message

    def unpack(self, packed: any_pb2.Any) -> dict[str, object]:
        """An Any as a JSON-ready dict with its type, or its raw bytes in hex."""
        name = packed.type_url.rpartition("/")[2]
        try:
            message = self.message_class(name).FromString(packed.value)
        except (UnknownType, Exception):
            return {"@type": packed.type_url, "hex": packed.value.hex()}
        return {"@type": name, **json_format.MessageToDict(message, preserving_proto_field_name=True)}
