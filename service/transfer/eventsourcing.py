"""An export stream from another event store: the Python ``eventsourcing``
library's PostgreSQL tables (https://pypi.org/project/eventsourcing/).

An application of that library keeps its events in one table (``<app
name>_events``, in the schema ``POSTGRES_SCHEMA`` names): each row an
originator (aggregate) id and version, a topic naming the event's class,
the event's state (JSON by default) and a notification id giving the
application's order. This module reads such a table in notification order
and turns each row into a Chronicle event of a plugin's types through a
mapping function the user writes::

    def mapping(event: EventsourcingEvent) -> ChronicleEvent | None:
        if event.topic.endswith("Account.Deposited"):
            return ChronicleEvent("Account", bank.MoneyDeposited(amount=event.state["amount"]))
        ...

A mapping that knows which values its aggregates hold uniquely (the
e-mail address a handler claims with ``context.claim``) says so on the
event that takes (or gives up) the value::

    ChronicleEvent("User", users.UserRegistered(email=...), claims=[ChronicleClaim("users.email", email)])

The converter follows each value's holder through the events, as a
server follows a handler's claims, and writes the values held at the end
as claim records after the events: the import takes them with the events,
so that the migrated users' addresses stay unique. Two aggregates holding
one value at once (the old application never enforced it) is refused at
conversion (BAD_MAPPING, import_reason CLAIM_HELD), as the import would
refuse it.

The output is an ordinary export stream (header, events, claims, end), so it is
imported like any other, resumably (``chronicle import``). Each event gets
an id derived from its originator id and version, so converting again
yields the same stream and importing it again writes nothing. Versions are
numbered 1, 2, … per aggregate over the events the mapping keeps (the
library's own when it keeps them all, and its first version is 1);
timestamps are the library's (its events' ``timestamp``) unless the mapping
gives one.

The state is decoded as the library's applications encode it by default:
its JSON transcoder with the UUID, Decimal and datetime transcodings. An
application that compresses or encrypts its events, or registers
transcodings of its own, passes its own ``decode``. The library itself is
needed only for that decoding (``pip install eventsourcing``).
"""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from google.protobuf.message import Message
from psycopg import sql

from chronicle.v1 import export_pb2
from service.errors import ConfigurationError, ImportConflict, InvalidInput, PermissionDenied, StoreUnavailable
from service.plugins.context import MAX_SCOPE_BYTES, MAX_VALUE_BYTES
from service.plugins.registry import Registry
from service.store.importing import CLAIM_HELD, events_to_write
from service.store.records import HeldClaim, RecordedEvent
from service.transfer.exporter import FORMAT_VERSION
from service.transfer.records import end_record, exported_claim, exported_event, stored_event, timestamp
from service.transfer.stream import FORMAT

# Event ids are uuid5(this, "<originator id>/<originator version>").
EVENT_ID_NAMESPACE = uuid.UUID("5d1e7c3a-3f7b-4c55-9f5e-0c8e3b1d2a61")
SOURCE = "eventsourcing"
PAGE = 1000
# The columns of the library's PostgreSQL events table this reads.
COLUMNS = ("originator_id", "originator_version", "topic", "state", "notification_id")
# URL schemes psycopg connects with; a conninfo string ("host=... dbname=...") has none.
POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True, slots=True)
class EventsourcingEvent:
    """One row of the library's events table. ``state`` is the event's
    attributes as the library stored them (``timestamp`` a datetime, UUIDs
    and Decimals as such); ``domain_event()`` rebuilds the library's own
    event object, when the application's classes can be imported."""

    originator_id: str
    originator_version: int
    topic: str
    notification_id: int
    state: Mapping[str, Any]
    raw_id: object = field(repr=False, default=None)
    raw_state: bytes = field(repr=False, default=b"")

    def domain_event(self) -> object:
        from eventsourcing.persistence import Mapper, StoredEvent

        mapper: Mapper[Any] = Mapper(transcoder=default_transcoder())
        stored = StoredEvent(
            originator_id=self.raw_id,  # type: ignore[arg-type]
            originator_version=self.originator_version,
            topic=self.topic,
            state=self.raw_state,
        )
        return mapper.to_domain_event(stored)


@dataclass(frozen=True, slots=True)
class ChronicleClaim:
    """A value the event's aggregate claims in ``scope`` with the event
    (``release=True``: gives up), as a handler's ``context.claim`` (and
    ``context.release``) would have: the scope and value the plugin's
    handlers use, normalised as they normalise it (values compare exactly)."""

    scope: str
    value: str
    release: bool = False


@dataclass(frozen=True, slots=True)
class ChronicleEvent:
    """What a mapping makes of a library event: a Protobuf message of a
    plugin's event type, for an aggregate of ``aggregate_type``
    (``aggregate_id`` default: the originator id; ``timestamp_us`` default:
    the library's timestamp), and the values its aggregate claims or
    releases with it (``claims``)."""

    aggregate_type: str
    message: Message
    aggregate_id: str | None = None
    timestamp_us: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    claims: Sequence[ChronicleClaim] = ()


EventMapping = Callable[[EventsourcingEvent], ChronicleEvent | None]


@dataclass(slots=True)
class Tally:
    """What a conversion read of the library's table and what its mapping
    left out (returned None for): said in the converter's summary, so that
    an event dropped is never dropped silently."""

    read: int = 0
    left_out: int = 0


def default_transcoder() -> Any:
    """The library's JSON transcoder with the transcodings its applications
    register by default."""
    try:
        from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, UUIDAsHex
    except ImportError:
        raise ConfigurationError(
            "reading the eventsourcing library's events needs the library: pip install eventsourcing",
            reason="EVENTSOURCING_MISSING",
        ) from None
    transcoder = JSONTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DecimalAsStr())
    transcoder.register(DatetimeAsISO())
    return transcoder


def event_id(originator_id: str, originator_version: int) -> str:
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{originator_id}/{originator_version}"))


async def eventsourcing_export(
    url: str,
    *,
    table: str,
    mapping: EventMapping,
    schema: str = "public",
    registry: Registry | None = None,
    decode: Callable[[bytes], Mapping[str, Any]] | None = None,
    page_size: int = PAGE,
    tally: Tally | None = None,
) -> AsyncIterator[export_pb2.ExportRecord]:
    """The events of the library's table ``schema.table`` at ``url`` as an
    export stream. With ``registry``, each message must be an event type of
    the aggregate type the mapping names (its schema version is the
    plugin's); without, schema version 1. Each event is held to the rules
    the import holds it to (``_fit``), so that what converts imports.
    ``tally`` counts the events read and left out."""
    _check_postgres(url)
    decode = decode or default_transcoder().decode
    tally = tally if tally is not None else Tally()
    # Aggregate id -> its last version and its type, over the events kept so far.
    heads: dict[str, tuple[int, str]] = {}
    # (scope, value) -> the aggregate holding it, after the events kept so far.
    holders: dict[tuple[str, str], str] = {}
    exported = 0
    try:
        connecting = await psycopg.AsyncConnection.connect(url, autocommit=True)
    except psycopg.OperationalError as error:
        raise StoreUnavailable(
            f"cannot reach the eventsourcing application's PostgreSQL: {' '.join(str(error).split())}",
            reason="SOURCE_UNAVAILABLE",
        ) from None
    async with connecting as conn:
        name = sql.Identifier(schema, table)
        with _reading(schema, table):
            head_row = await (
                # Naming every column read: a table of another shape is said before anything is written.
                await conn.execute(
                    sql.SQL("SELECT max(notification_id) FROM (SELECT {} FROM {}) AS events").format(
                        sql.SQL(", ").join(map(sql.Identifier, COLUMNS)), name
                    )
                )
            ).fetchone()
        head = int(head_row[0] or 0) if head_row else 0
        yield export_pb2.ExportRecord(
            header=export_pb2.ExportHeader(
                format=FORMAT,
                format_version=FORMAT_VERSION,
                exported_at=timestamp(time.time_ns() // 1000),
                log_head=head,
                source=SOURCE,
            )
        )
        query = sql.SQL(
            "SELECT originator_id, originator_version, topic, state, notification_id FROM {}"
            " WHERE notification_id > %s AND notification_id <= %s ORDER BY notification_id LIMIT %s"
        ).format(name)
        after = 0
        while True:
            with _reading(schema, table):
                rows = await (await conn.execute(query, (after, head, page_size))).fetchall()
            if not rows:
                break
            for raw_id, version, topic, state, notification_id in rows:
                event = EventsourcingEvent(
                    originator_id=str(raw_id),
                    originator_version=int(version),
                    topic=str(topic),
                    notification_id=int(notification_id),
                    state=_decoded(decode, bytes(state), str(raw_id), int(version), str(topic)),
                    raw_id=raw_id,
                    raw_state=bytes(state),
                )
                tally.read += 1
                try:
                    mapped = mapping(event)
                except Exception as error:
                    raise _mapping_failed(event, error) from None
                if mapped is None:
                    tally.left_out += 1
                    continue
                recorded = _recorded(event, mapped, registry, heads)
                record = exported_event(recorded)
                _fit(event, record, heads)
                _follow_claims(event, mapped, recorded.aggregate_id, holders)
                heads[recorded.aggregate_id] = (recorded.version, recorded.aggregate_type)
                exported += 1
                yield record
            after = int(rows[-1][4])
    for (scope, value), holder in holders.items():
        yield exported_claim(HeldClaim(scope=scope, value=value, aggregate_id=holder))
    yield end_record({"event": exported, "claim": len(holders)})


def _check_postgres(url: str) -> None:
    """Refuse a URL of another database before connecting: the library's
    SQLite and other recorders are not read (psycopg would answer a
    ``sqlite://`` URL with a ProgrammingError about its conninfo)."""
    scheme, separator, _ = url.partition("://")
    if separator and scheme.lower() not in POSTGRES_SCHEMES:
        raise InvalidInput(
            f"--from-url must be the eventsourcing application's PostgreSQL (postgresql://...), not a {scheme}: URL:"
            " only the library's PostgreSQL events table is read (an application on SQLite can move to the library's"
            " PostgreSQL recorder first)",
            reason="UNSUPPORTED_SOURCE",
        )


@contextmanager
def _reading(schema: str, table: str) -> Iterator[None]:
    """Say what stopped a read of ``schema.table`` as one refusal with a
    reason, rather than psycopg's exception."""
    where = f"{schema}.{table}"
    try:
        yield
    except psycopg.errors.UndefinedTable:
        raise InvalidInput(
            f"there is no table {where} there: the library's events are in <application name>_events"
            " (bank_events for an application named Bank), in the schema POSTGRES_SCHEMA names",
            reason="TABLE_NOT_FOUND",
        ) from None
    except psycopg.errors.UndefinedColumn as error:
        raise InvalidInput(
            f"{where} is not an eventsourcing library's events table ({_first_line(error)}): it must have the columns"
            f" {', '.join(COLUMNS)}; the library's events are in <application name>_events",
            reason="NOT_AN_EVENTS_TABLE",
        ) from None
    except psycopg.errors.InsufficientPrivilege as error:
        raise PermissionDenied(
            f"the role of --from-url may not read {where} ({_first_line(error)}): connect as the application's role,"
            f" or GRANT SELECT ON {where} TO it",
            reason="SOURCE_PERMISSION_DENIED",
        ) from None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _bad_mapping(event: EventsourcingEvent, message: str, *, import_reason: str = "") -> InvalidInput:
    """A refusal of what the mapping did with ``event`` (BAD_MAPPING),
    naming it (and the import's reason, for what the import would refuse)."""
    metadata = {
        "originator_id": event.originator_id,
        "originator_version": str(event.originator_version),
        "topic": event.topic,
    }
    if import_reason:
        metadata["import_reason"] = import_reason
    return InvalidInput(message, reason="BAD_MAPPING", metadata=metadata)


def _mapping_failed(event: EventsourcingEvent, error: Exception) -> InvalidInput:
    """The mapping raised ``error`` for ``event``: said as a refusal of it."""
    return _bad_mapping(
        event,
        f"the mapping raised {type(error).__name__}: {error} for {event.topic} ({event.originator_id}"
        f" v{event.originator_version})",
    )


def _decoded(
    decode: Callable[[bytes], Mapping[str, Any]], state: bytes, originator_id: str, version: int, topic: str
) -> Mapping[str, Any]:
    try:
        return decode(state)
    except Exception as error:
        raise InvalidInput(
            f"the state of {topic} ({originator_id} v{version}) does not decode as the library's default JSON"
            f" ({type(error).__name__}: {error}); an application that compresses, encrypts or registers its own"
            " transcodings must give its own decode",
            reason="UNDECODABLE_EVENT",
            metadata={"originator_id": originator_id, "originator_version": str(version), "topic": topic},
        ) from None


def _fit(event: EventsourcingEvent, record: export_pb2.ExportRecord, heads: Mapping[str, tuple[int, str]]) -> None:
    """Refuse (BAD_MAPPING, naming the library's event) what ``chronicle
    import`` would refuse of ``record``: the import's own checks, not a
    copy of them: the record alone (``stored_event``: ids printable and
    short, texts without NUL, BAD_RECORD) and as the next event of its
    aggregate (``events_to_write``: one aggregate is of one type,
    AGGREGATE_TYPE_MISMATCH), its aggregate's events before it being
    those converted before it (``heads``)."""
    try:
        stored = stored_event(record.event, "event")
        events_to_write([stored], stored_at=lambda _: None, head=heads.get)
    except (InvalidInput, ImportConflict) as refused:
        mapped_to = f"{record.event.event.aggregate_type} {record.event.event.aggregate_id!r}"
        raise _bad_mapping(
            event,
            f"the mapping of {event.topic} ({event.originator_id} v{event.originator_version}) made an event the"
            f" import would refuse ({refused.reason}): {refused.message} (mapped to {mapped_to})",
            import_reason=refused.reason,
        ) from None


def _follow_claims(
    event: EventsourcingEvent, mapped: ChronicleEvent, aggregate_id: str, holders: dict[tuple[str, str], str]
) -> None:
    """Take (or give up) the values ``mapped`` claims for ``aggregate_id``
    in ``holders``, as a server would with a handler's claims: holding a
    value already, or releasing one not held, is fine; a value another
    aggregate holds is refused (BAD_MAPPING, import_reason CLAIM_HELD),
    naming both aggregates (not the value: often personal data)."""
    for claim in mapped.claims:
        if not isinstance(claim, ChronicleClaim):
            raise _bad_mapping(
                event,
                f"the mapping of {event.topic} ({event.originator_id} v{event.originator_version}) gave"
                f" {type(claim).__name__} among its claims: each must be a ChronicleClaim",
            )
        problem = _claim_problem(claim)
        if problem:
            raise _bad_mapping(
                event,
                f"the mapping of {event.topic} ({event.originator_id} v{event.originator_version}) claims {problem}",
                import_reason="BAD_RECORD",
            )
        key = (claim.scope, claim.value)
        holder = holders.get(key)
        if claim.release:
            if holder == aggregate_id:
                del holders[key]
        elif holder is None:
            holders[key] = aggregate_id
        elif holder != aggregate_id:
            refused = _bad_mapping(
                event,
                f"the mapping of {event.topic} ({event.originator_id} v{event.originator_version}) claims for"
                f" {aggregate_id!r} a value in {claim.scope!r} that {holder!r} holds: the old application let two"
                " aggregates hold one value, which Chronicle refuses (the import would, CLAIM_HELD). Decide which"
                " keeps it (the mapping leaves the other's claim out, or releases it first)",
                import_reason=CLAIM_HELD,
            )
            refused.metadata.update({"scope": claim.scope, "aggregate_id": aggregate_id, "holder": holder})
            raise refused


def _claim_problem(claim: ChronicleClaim) -> str:
    """What a handler's context would refuse of ``claim`` (context.py's
    rules: a claim that converts is one a command could have taken)."""
    scope, value = claim.scope, claim.value
    if not isinstance(scope, str) or not scope or len(scope.encode()) > MAX_SCOPE_BYTES or not scope.isprintable():
        return f"in the scope {scope!r}: a scope is 1 to {MAX_SCOPE_BYTES} bytes of printable text"
    if not isinstance(value, str) or not value or len(value.encode()) > MAX_VALUE_BYTES or not value.isprintable():
        return f"a value in {scope!r} that is not 1 to {MAX_VALUE_BYTES} bytes of printable text"
    return ""


def _recorded(
    event: EventsourcingEvent, mapped: ChronicleEvent, registry: Registry | None, heads: Mapping[str, tuple[int, str]]
) -> RecordedEvent:
    def bad(description: str) -> InvalidInput:
        return _bad_mapping(
            event, f"the mapping of {event.topic} ({event.originator_id} v{event.originator_version}) {description}"
        )

    if not isinstance(mapped, ChronicleEvent) or not isinstance(mapped.message, Message):
        raise bad("must return a ChronicleEvent with a Protobuf message, or None")
    event_type = str(mapped.message.DESCRIPTOR.full_name)
    schema_version = 1
    if registry is not None:
        spec = registry.event(event_type)
        if spec is None or spec.aggregate.name != mapped.aggregate_type:
            raise bad(f"returned {event_type}, which no loaded plugin declares for {mapped.aggregate_type!r}")
        schema_version = spec.schema_version
    aggregate_id = mapped.aggregate_id or event.originator_id
    when = mapped.timestamp_us if mapped.timestamp_us is not None else _micros(event.state.get("timestamp"))
    if when is None:
        raise bad("gave no timestamp, and the event has no 'timestamp' datetime")
    version = heads[aggregate_id][0] + 1 if aggregate_id in heads else 1
    return RecordedEvent(
        event_id=event_id(event.originator_id, event.originator_version),
        aggregate_id=aggregate_id,
        aggregate_type=mapped.aggregate_type,
        version=version,
        position=event.notification_id,
        event_type=event_type,
        schema_version=schema_version,
        payload=mapped.message.SerializeToString(),
        timestamp_us=when,
        command_id="",
        user_id="",
        origin=SOURCE,
        correlation_id="",
        causation_id="",
        metadata={"eventsourcing.topic": event.topic, **mapped.metadata},
    )


def _micros(moment: object) -> int | None:
    if not isinstance(moment, datetime.datetime):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    delta = moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
