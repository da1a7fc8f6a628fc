"""A reaction's process states as ReactionService.GetProcessState and
ListProcessStates show them: the stored ``chronicle.v1.ProcessState`` (the
state packed as Any, its subjects, its pending deadlines, when it began and
last changed) with the state rendered as JSON
through the loaded plugin's message types, so that an operator (and a
client without the plugin's ``.proto`` files) reads it as it is.

The JSON is rendered with the type the state is stored as, when the
reaction knows it: its ``state`` type, or an old type one of its
``@reaction.upcast_state`` reads. A state stored as a type it does not know
(DOCUMENT_TYPE_MISMATCH) is shown as stored only: its JSON is empty, not
guessed."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from chronicle.v1 import reaction_service_pb2 as pb
from service.api.codec import timestamp
from service.plugins.reactions import Reaction
from service.processing.reaction_documents import STATE_PREFIX, stored_type_of
from service.store.records import StoredDocument

# At most this many keys in one DropProcessState (its one transaction).
MAX_DROPPED = 1000


def shown(reaction: Reaction[Any], document: StoredDocument) -> pb.StoredProcessState:
    """The state ``document`` (a ``state:<key>`` document of ``reaction``)."""
    state_key = document.key.removeprefix(STATE_PREFIX)
    try:
        stored = pb.ProcessState.FromString(document.data)
    except DecodeError:
        return pb.StoredProcessState(state_key=state_key)  # nothing a reaction wrote: nothing to show
    state_type = stored_type_of(stored.state)
    answer = pb.StoredProcessState(
        state_key=state_key,
        state=stored.state,
        state_type=state_type,
        state_json=_as_json(reaction, state_type, stored.state.value),
        subjects=stored.subjects,
    )
    # Its pending deadlines, soonest first (as stored), and when it began
    # and last changed (commit times: unset for a state an older server wrote).
    for entry in stored.deadlines:
        answer.deadlines.add(name=entry.name, due=timestamp(entry.due_us))
    if stored.started_us:
        answer.started.CopyFrom(timestamp(stored.started_us))
    if stored.updated_us:
        answer.updated.CopyFrom(timestamp(stored.updated_us))
    return answer


def _as_json(reaction: Reaction[Any], state_type: str, value: bytes) -> str:
    message_type: type[Message] | None = None
    if reaction.state_type is not None and reaction.state_type.DESCRIPTOR.full_name == state_type:
        message_type = reaction.state_type
    elif state_type in reaction.state_upcasters:
        message_type = reaction.state_upcasters[state_type][0]
    if message_type is None:
        return ""
    try:
        message = message_type.FromString(value)
    except DecodeError:
        return ""
    fields = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


def within(states: list[pb.StoredProcessState], max_bytes: int) -> list[pb.StoredProcessState]:
    """The states up to the one that brings their size to ``max_bytes`` (at
    least one), so that a page always fits in a message."""
    total = 0
    for count, state in enumerate(states, start=1):
        total += state.ByteSize() + 16
        if total >= max_bytes:
            return states[:count]
    return states
