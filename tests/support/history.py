"""Recording what clients saw, and checking it against what the store holds.

Every client operation is recorded with its outcome, and every event a
subscriber received; afterwards ``check_invariants`` reads the database
directly (not through Chronicle, so it is an independent witness) and
asserts the promises:

* every command a client saw acknowledged is stored, with exactly the events
  the client was told about, and recorded as accepted;
* no command's events appear twice (by command id), and every stored command
  is one a client sent;
* a command that was refused wrote nothing (at most the record of its
  refusal, with the reason the client was given);
* every aggregate's versions are 1..N with no gap, positions increase with
  versions, and its state equals a serial replay: re-deciding the stored
  commands one after the other, in version order, from the initial state,
  gives exactly the stored events and the stored refusals (so no command was
  decided on a stale state), and every stored snapshot equals the replayed
  state at its version;
* every subscriber received every committed event (by event id) at its
  stored position, none twice after de-duplication by position, and the
  positions it received increase (a position at or below one already seen
  is only ever a re-delivery of the same event, after a reconnection).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import psycopg
from google.protobuf.message import Message

from chronicle.v1 import command_service_pb2
from service.errors import ChronicleError
from service.plugins.api import AggregateType
from service.plugins.context import CommandContext
from service.plugins.registry import Registry
from service.processing.state import apply_messages
from service.store.serialization import load_rejection

# Refusals that depend on more than the command and the state, so a serial
# replay of the handler cannot reproduce them.
_NOT_REPLAYABLE = frozenset({"WrongExpectedVersion"})


@dataclass
class Operation:
    command_id: str
    aggregate_id: str
    message: Message
    outcome: str = "pending"  # "ok", "refused", "unknown"
    event_ids: tuple[str, ...] = ()
    reason: str = ""
    failed_attempts: list[str] = field(default_factory=list)  # how each attempt without an answer ended


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

    def unknown(self, op: Operation, error: grpc.aio.AioRpcError | str) -> None:
        """No answer, or one that leaves open whether the command ran."""
        failure = error if isinstance(error, str) else error.code().name
        op.failed_attempts.append(failure)
        if op.outcome == "pending":
            op.outcome, op.reason = "unknown", failure

    @property
    def in_flight(self) -> list[Operation]:
        """Operations sent (or about to be) and not yet answered for good."""
        return [op for op in self.operations.values() if op.outcome in ("pending", "unknown")]

    @property
    def acknowledged(self) -> list[Operation]:
        return [op for op in self.operations.values() if op.outcome == "ok"]


@dataclass
class SubscriberLog:
    """The events one subscriber received, in order of receipt, across
    however many streams (reconnections) it took."""

    name: str
    deliveries: list[tuple[int, str]] = field(default_factory=list)

    def record(self, position: int, event_id: str) -> None:
        self.deliveries.append((position, event_id))

    @property
    def last_position(self) -> int:
        return max((position for position, _ in self.deliveries), default=0)


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


@dataclass(frozen=True)
class StoredCommand:
    command_id: str
    aggregate_id: str
    first_version: int
    last_version: int
    rejection_kind: str | None
    rejection_reason: str | None


@dataclass(frozen=True)
class StoredSnapshot:
    aggregate_id: str
    version: int
    state: bytes


@dataclass(frozen=True)
class Stored:
    events: list[StoredEvent]
    commands: list[StoredCommand]
    snapshots: list[StoredSnapshot]


def stored_events(database_url: str) -> list[StoredEvent]:
    return read_store(database_url).events


def read_store(database_url: str) -> Stored:
    with psycopg.connect(database_url) as conn:
        events = conn.execute(
            "SELECT event_id::text, aggregate_id, aggregate_type, version, position, event_type, payload, command_id"
            " FROM chronicle.events ORDER BY position"
        ).fetchall()
        commands = conn.execute(
            "SELECT command_id, aggregate_id, first_version, last_version, rejection FROM chronicle.commands"
        ).fetchall()
        snapshots = conn.execute("SELECT aggregate_id, version, state FROM chronicle.snapshots").fetchall()
    rejections = [load_rejection(r[4]) for r in commands]
    return Stored(
        [StoredEvent(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]), r[7]) for r in events],
        [
            StoredCommand(r[0], r[1], r[2], r[3], j.kind if j else None, j.reason if j else None)
            for r, j in zip(commands, rejections, strict=True)
        ],
        [StoredSnapshot(r[0], r[1], bytes(r[2])) for r in snapshots],
    )


def check_invariants(
    history: History, database_url: str, registry: Registry, *, subscribers: Iterable[SubscriberLog] = ()
) -> dict[str, Message]:
    """Assert every invariant; return each aggregate's replayed state."""
    stored = read_store(database_url)
    by_command: dict[str, list[StoredEvent]] = defaultdict(list)
    by_aggregate: dict[str, list[StoredEvent]] = defaultdict(list)
    for event in stored.events:
        by_command[event.command_id].append(event)
        by_aggregate[event.aggregate_id].append(event)
    records = {c.command_id: c for c in stored.commands}

    for op in history.acknowledged:
        got = tuple(e.event_id for e in by_command.get(op.command_id, []))
        assert got == op.event_ids, f"acknowledged command {op.command_id} stored {got}, client saw {op.event_ids}"
        record = records.get(op.command_id)
        assert record is not None and record.rejection_kind is None, (
            f"acknowledged command {op.command_id} is not recorded as accepted: {record}"
        )
    for op in history.operations.values():
        if op.outcome == "refused":
            assert op.command_id not in by_command, f"refused command {op.command_id} wrote events"
            record = records.get(op.command_id)
            assert record is None or record.rejection_reason == op.reason, (
                f"refused command {op.command_id} ({op.reason}) is recorded as {record}"
            )
    for record in stored.commands:
        assert record.command_id in history.operations, f"stored command {record.command_id} was never sent"

    states: dict[str, Message] = {}
    commands_of: dict[str, list[StoredCommand]] = defaultdict(list)
    for record in stored.commands:
        commands_of[record.aggregate_id].append(record)
    snapshots_of: dict[str, dict[int, bytes]] = defaultdict(dict)
    for snapshot in stored.snapshots:
        snapshots_of[snapshot.aggregate_id][snapshot.version] = snapshot.state
    for aggregate_id in sorted(set(by_aggregate) | set(commands_of)):
        stream = by_aggregate.get(aggregate_id, [])
        versions = [e.version for e in stream]  # in position order
        assert versions == list(range(1, len(stream) + 1)), f"{aggregate_id}: versions {versions} not 1..N in order"
        aggregate = _aggregate_type(registry, stream, commands_of[aggregate_id], history)
        states[aggregate_id] = _serial_replay(
            aggregate, aggregate_id, stream, commands_of[aggregate_id], history, snapshots_of[aggregate_id], registry
        )
    for log in subscribers:
        _check_subscriber(log, stored.events)
    return states


def _aggregate_type(
    registry: Registry, stream: Sequence[StoredEvent], commands: Sequence[StoredCommand], history: History
) -> AggregateType[Any]:
    if stream:
        found = registry.aggregate(stream[0].aggregate_type)
    else:  # only refusals: the type the commands were for
        spec = registry.command(history.operations[commands[0].command_id].message.DESCRIPTOR.full_name)
        found = spec.aggregate if spec is not None else None
    assert found is not None
    return found


def _serial_replay(
    aggregate: AggregateType[Any],
    aggregate_id: str,
    stream: Sequence[StoredEvent],
    commands: Sequence[StoredCommand],
    history: History,
    snapshots: dict[int, bytes],
    registry: Registry,
) -> Message:
    """Decide the stored commands again, one at a time in version order, and
    compare with what was stored; return the final state."""
    by_first_version: dict[int, list[StoredCommand]] = defaultdict(list)
    for record in commands:
        by_first_version[record.first_version].append(record)
    state: Message = aggregate.new_state()
    version, replayed = 0, 0
    while True:
        # Commands decided on the state at ``version`` that appended nothing
        # (refusals, handlers returning no event), then the one whose events
        # start at ``version + 1``.
        at_this_version = by_first_version.get(version + 1, [])
        for record in (r for r in at_this_version if r.last_version < r.first_version):
            replayed += 1
            produced, refusal = _decide(aggregate, aggregate_id, version, history.operations[record.command_id], state)
            if record.rejection_kind in _NOT_REPLAYABLE:
                continue
            expected = record.rejection_reason
            assert refusal == expected and not produced, (
                f"{aggregate_id} v{version}: command {record.command_id} was stored as refused ({expected}),"
                f" a serial replay gives {refusal or [type(m).__name__ for m in produced]}"
            )
        appending = [r for r in at_this_version if r.last_version >= r.first_version]
        if version == len(stream):
            assert not appending and replayed == len(commands), (
                f"{aggregate_id}: commands recorded at versions it never reached:"
                f" {[c for c in commands if c.first_version > version + 1 or c in appending]}"
            )
            return state
        assert len(appending) == 1, f"{aggregate_id} v{version + 1}: recorded by {appending}"
        (record,) = appending
        replayed += 1
        events = stream[version : record.last_version]
        assert [e.command_id for e in events] == [record.command_id] * (record.last_version - version), (
            f"{aggregate_id}: versions {record.first_version}..{record.last_version} are not all {record.command_id}'s"
        )
        produced, refusal = _decide(aggregate, aggregate_id, version, history.operations[record.command_id], state)
        assert refusal is None, f"{aggregate_id} v{version}: a serial replay refuses {record.command_id}: {refusal}"
        assert [(m.DESCRIPTOR.full_name, m.SerializeToString()) for m in produced] == [
            (e.event_type, e.payload) for e in events
        ], f"{aggregate_id} v{version}: a serial replay of {record.command_id} gives other events than stored"
        decoded = []
        for event in events:
            spec = registry.event(event.event_type)
            assert spec is not None, f"unknown event type {event.event_type}"
            decoded.append((spec, spec.message_type.FromString(event.payload)))
        state = apply_messages(aggregate, state, decoded)
        version = record.last_version
        if version in snapshots:
            snapshot = aggregate.state_type.FromString(snapshots[version])
            assert snapshot == state, f"{aggregate_id}: the snapshot at v{version} differs from the replayed state"


def _decide(
    aggregate: AggregateType[Any], aggregate_id: str, version: int, op: Operation, state: Message
) -> tuple[list[Message], str | None]:
    """The handler's answer for ``op`` on ``state``: events, or a refusal's reason."""
    spec = aggregate.commands[op.message.DESCRIPTOR.full_name]
    context = CommandContext(
        aggregate_id=aggregate_id, aggregate_type=aggregate.name, version=version, command_id=op.command_id
    )
    working = aggregate.state_type()
    working.CopyFrom(state)
    try:
        produced = spec.handler(op.message, working, context)
    except ChronicleError as refused:
        return [], refused.reason
    if produced is None:
        return [], None
    return ([produced] if isinstance(produced, Message) else list(produced)), None


def _check_subscriber(log: SubscriberLog, events: Sequence[StoredEvent]) -> None:
    committed = {e.event_id: e.position for e in events}
    first_at: dict[int, str] = {}
    highest = 0
    for position, event_id in log.deliveries:
        assert committed.get(event_id) == position, (
            f"subscriber {log.name} received {event_id} at position {position}; stored at {committed.get(event_id)}"
        )
        if position > highest:
            first_at[position], highest = event_id, position
        else:
            assert first_at.get(position) == event_id, (
                f"subscriber {log.name} received position {position} after {highest} for the first time:"
                " it skipped that event earlier"
            )
    missing = set(committed) - set(first_at.values())
    assert not missing, f"subscriber {log.name} never received {len(missing)} committed events, e.g. {min(missing)}"
