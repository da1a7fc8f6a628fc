"""Recording what clients saw, and checking it against what the store holds.

Every client operation is recorded with its outcome; afterwards
``check_invariants`` reads the database directly (not through Chronicle, so
it is an independent witness) and asserts the promises:

* every command a client saw acknowledged is stored, with exactly the events
  the client was told about;
* no command's events appear twice (by command id);
* every aggregate's versions are 1..N with no gap, positions increase with
  versions, and its state equals a serial replay of its events;
* a command that was refused wrote nothing.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import grpc
import psycopg
from google.protobuf.message import Message

from chronicle.v1 import command_service_pb2
from service.plugins.registry import Registry
from service.processing.state import apply_messages


@dataclass
class Operation:
    command_id: str
    aggregate_id: str
    message: Message
    outcome: str = "pending"  # "ok", "refused", "unknown"
    event_ids: tuple[str, ...] = ()
    reason: str = ""


@dataclass
class History:
    operations: dict[str, Operation] = field(default_factory=dict)

    def begin(self, aggregate_id: str, message: Message) -> Operation:
        op = Operation(str(uuid.uuid4()), aggregate_id, message)
        self.operations[op.command_id] = op
        return op

    def ok(self, op: Operation, response: command_service_pb2.SubmitResponse) -> None:
        event_ids = tuple(e.event_id for e in response.events)
        if op.outcome == "ok" and op.event_ids != event_ids:
            raise AssertionError(f"command {op.command_id} acknowledged twice with different events")
        op.outcome, op.event_ids = "ok", event_ids

    def refused(self, op: Operation, reason: str) -> None:
        op.outcome, op.reason = "refused", reason

    def unknown(self, op: Operation, error: grpc.aio.AioRpcError) -> None:
        if op.outcome == "pending":
            op.outcome, op.reason = "unknown", error.code().name

    @property
    def acknowledged(self) -> list[Operation]:
        return [op for op in self.operations.values() if op.outcome == "ok"]


@dataclass(frozen=True)
class StoredEvent:
    event_id: str
    aggregate_id: str
    aggregate_type: str
    version: int
    position: int
    event_type: str
    payload: bytes
    command_id: str


def stored_events(database_url: str) -> list[StoredEvent]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT event_id::text, aggregate_id, aggregate_type, version, position, event_type, payload, command_id"
            " FROM chronicle.events ORDER BY position"
        ).fetchall()
    return [StoredEvent(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]), r[7]) for r in rows]


def check_invariants(history: History, database_url: str, registry: Registry) -> dict[str, Message]:
    """Assert every invariant; return each aggregate's replayed state."""
    events = stored_events(database_url)
    by_command: dict[str, list[StoredEvent]] = defaultdict(list)
    by_aggregate: dict[str, list[StoredEvent]] = defaultdict(list)
    for event in events:
        by_command[event.command_id].append(event)
        by_aggregate[event.aggregate_id].append(event)

    for op in history.acknowledged:
        stored = tuple(e.event_id for e in by_command.get(op.command_id, []))
        assert stored == op.event_ids, (
            f"acknowledged command {op.command_id} stored {stored}, client saw {op.event_ids}"
        )
    for op in history.operations.values():
        if op.outcome == "refused":
            assert op.command_id not in by_command, f"refused command {op.command_id} wrote events"

    states: dict[str, Message] = {}
    for aggregate_id, stream in by_aggregate.items():
        versions = [e.version for e in stream]  # in position order
        assert versions == list(range(1, len(stream) + 1)), f"{aggregate_id}: versions {versions} not 1..N in order"
        aggregate = registry.aggregate(stream[0].aggregate_type)
        assert aggregate is not None
        decoded = []
        for event in stream:
            spec = registry.event(event.event_type)
            assert spec is not None, f"unknown event type {event.event_type}"
            decoded.append((spec, spec.message_type.FromString(event.payload)))
        states[aggregate_id] = apply_messages(aggregate, aggregate.new_state(), decoded)
    return states
