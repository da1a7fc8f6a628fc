"""Events as JSON, for the PostgreSQL store's optional copy of each payload
(``--postgres-json-events``): the payload parsed as the plugin's message of
its type and rendered in Protobuf's JSON mapping (field names as in the
proto, 64-bit integers as strings), so that operators can query events in
SQL (``payload_json->>'owner'``). A type no loaded plugin declares has no
copy (None)."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from service.plugins.registry import Registry


def payload_json(registry: Registry) -> Callable[[str, bytes], object]:
    """The function the store calls with each appended event's type and payload."""

    def rendered(event_type: str, payload: bytes) -> object:
        spec = registry.event(event_type)
        if spec is None:
            return None
        try:
            message = spec.message_type.FromString(payload)
        except DecodeError:
            return None  # not this store's to refuse: the copy is only a convenience
        return json_format.MessageToDict(message, preserving_proto_field_name=True)

    return rendered
