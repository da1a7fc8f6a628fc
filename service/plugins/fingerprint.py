"""What an aggregate's snapshot depends on, as one short string.

A snapshot is the state that the apply functions built from events read at
their schema versions, serialized with the state message's layout. It can
stand in for those events only for code that reads them the same way, so
each snapshot is saved with a fingerprint of:

- the state message's layout: the ``DescriptorProto`` of the state type and
  of every message and enum it reaches (a field's type or number changed,
  or a field added, shows; a field renamed shows too, harmlessly);
- the plugin's ``state_schema_version`` (the plugin's word that the state's
  meaning changed);
- each event type the aggregate applies, at its current schema version, and
  each upcaster step it registers (a new upcaster changes what the events
  say, so a state built without it is not the state built with it).

It cannot see a change of code alone: an apply function, upcaster or
handler whose logic changed at the same versions. That still needs a
``state_schema_version`` bump (docs/plugins.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.descriptor_pb2 import DescriptorProto, EnumDescriptorProto
from google.protobuf.message import Message

__all__ = ["state_fingerprint"]

# 16 bytes of SHA-256 as hex: far from any chance collision, short in a row.
_FINGERPRINT_BYTES = 16


def state_fingerprint(
    state: type[Message],
    state_schema_version: int,
    events: Iterable[tuple[str, int]],
    upcasters: Iterable[tuple[str, int]],
) -> str:
    """The fingerprint of a state message, its schema version, the applied
    events ``(name, schema_version)`` and the upcaster steps ``(event type,
    from_version)``; the same inputs in any order give the same string."""
    digest = hashlib.sha256()
    digest.update(f"state_schema_version={state_schema_version}\n".encode())
    for name, layout in sorted(_layouts(state.DESCRIPTOR)):
        digest.update(f"layout {name} {len(layout)}\n".encode())
        digest.update(layout)
    for name, version in sorted(events):
        digest.update(f"event {name} v{version}\n".encode())
    for name, from_version in sorted(upcasters):
        digest.update(f"upcaster {name} v{from_version}\n".encode())
    return digest.hexdigest()[: 2 * _FINGERPRINT_BYTES]


def _layouts(root: Any) -> Iterator[tuple[str, bytes]]:
    """The serialized descriptor of ``root`` and of every message and enum
    its fields reach (nested ones included: their layout is the state's)."""
    seen: set[str] = set()
    # The C implementation's descriptor classes are not the stubs' (hence Any).
    pending: list[Any] = [root]
    while pending:
        descriptor = pending.pop()
        if descriptor.full_name in seen:
            continue
        seen.add(descriptor.full_name)
        if isinstance(descriptor, EnumDescriptor):
            enum_proto = EnumDescriptorProto()
            descriptor.CopyToProto(enum_proto)
            yield descriptor.full_name, enum_proto.SerializeToString(deterministic=True)
            continue
        proto = DescriptorProto()
        descriptor.CopyToProto(proto)
        yield descriptor.full_name, proto.SerializeToString(deterministic=True)
        for field in descriptor.fields:
            if field.message_type is not None:
                pending.append(field.message_type)
            if field.enum_type is not None:
                pending.append(field.enum_type)
