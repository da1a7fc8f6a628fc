"""The production store: PostgreSQL through psycopg 3 (async, pooled).

Positions and subscriptions. A position from a sequence is handed out at
insert but becomes visible at commit, and transactions commit in another
order than they insert, so a reader at "last position seen" could skip an
event that commits later with a lower position. Chronicle avoids that with
commit-ordered positions under a lock: an append takes positions from the
one-row table ``log_head`` with ``UPDATE … RETURNING``, whose row lock it then
holds until its transaction ends. The next append cannot get a position until
the previous one has committed (or rolled back, giving its positions back), so
positions become visible strictly in order and a reader never skips. The lock
is taken as late as possible (after the command records) and held for one
insert and the commit; on this machine's disk a commit costs ~50 µs. Group
commit (several aggregates' appends in one transaction) amortises it further.
Appends that write no events never touch the lock.

Concurrency per aggregate is the unique key ``(aggregate_id, version)``:
whichever replica inserts a version first wins, the other's insert fails and
becomes ``ConcurrencyConflict``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from service.errors import CommandAlreadyRecorded, ConcurrencyConflict, ConfigurationError, NotUnique, StoreUnavailable
from service.store.base import DEFAULT_KEEP_SNAPSHOTS, AggregateQuery, AuditQuery, check_keep_snapshots
from service.store.notifier import CommitNotifier
from service.store.postgres.blocking import BlockingSide, Work
from service.store.postgres.errors import COMMANDS_KEY, EVENTS_VERSION_KEY, UniqueViolation, translated
from service.store.postgres.group_commit import Append, BatchCounts, GroupCommitter, Outcome, write_batch
from service.store.postgres.migrations import migrate
from service.store.records import (
    ACCEPTED,
    HIDDEN_CLAIM_MARK,
    REFUSED,
    AggregateHead,
    AuditEntry,
    ClaimChange,
    CommandRecord,
    DataKey,
    DocumentWrite,
    HeldClaim,
    LogFilter,
    LogPage,
    NewEvent,
    RecordedEvent,
    Snapshot,
    StoredDocument,
)
from service.store.serialization import load_rejection, rejection_dict

log = logging.getLogger(__name__)
T = TypeVar("T")

# Converted in SQL where that is cheaper than in Python: ids as text, times
# as microseconds, and the usual empty metadata as NULL (no JSON to parse).
# Loading a 10,000-event aggregate spends most of its time turning rows into
# values, so this matters.
_EVENT_COLUMNS = (
    "event_id::text, aggregate_id, aggregate_type, version, position, event_type, schema_version, payload,"
    " (extract(epoch FROM recorded_at) * 1000000)::bigint, command_id, user_id, origin, correlation_id,"
    " causation_id, NULLIF(metadata, '{}'::jsonb)"
)
_COMMAND_COLUMNS = (
    "command_id, aggregate_id, command_type, fingerprint, first_version, last_version, rejection,"
    " principal, user_id, origin, recorded_at"
)

_INSERT_COMMANDS = (
    "INSERT INTO chronicle.commands (" + _COMMAND_COLUMNS + ")"
    " SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::bytea[], %b::bigint[], %b::bigint[], %b::jsonb[],"
    " %b::text[], %b::text[], %b::text[], %b::timestamptz[])"
)
_AUDIT_COLUMNS = "recorded_at, command_id, command_type, aggregate_id, principal, user_id, origin"
_TAKE_POSITIONS = "UPDATE chronicle.log_head SET last_position = last_position + %s RETURNING last_position"
# Inserts nothing unless the aggregate is at the expected version: version
# ``expected`` must exist (or expected is 0), and version ``expected + 1`` is
# guarded by the unique key.
_INSERT_EVENTS = (
    "INSERT INTO chronicle.events (position, event_id, aggregate_id, aggregate_type, version, event_type,"
    " schema_version, payload, metadata, command_id, user_id, origin, correlation_id, causation_id, recorded_at)"
    " SELECT %(first_position)s + e.ord - 1, e.event_id, %(aggregate_id)s, e.aggregate_type,"
    " %(expected)s + e.ord, e.event_type, e.schema_version, e.payload, e.metadata, e.command_id, e.user_id,"
    " e.origin, e.correlation_id, e.causation_id, e.recorded_at"
    " FROM unnest(%(event_ids)s::uuid[], %(aggregate_types)s::text[], %(event_types)s::text[],"
    " %(schema_versions)s::int[], %(payloads)s::bytea[], %(metadata)s::jsonb[], %(command_ids)s::text[],"
    " %(user_ids)s::text[], %(origins)s::text[], %(correlation_ids)s::text[], %(causation_ids)s::text[],"
    " %(recorded_at)s::timestamptz[])"
    " WITH ORDINALITY AS e(event_id, aggregate_type, event_type, schema_version, payload, metadata, command_id,"
    " user_id, origin, correlation_id, causation_id, recorded_at, ord)"
    " WHERE %(expected)s = 0 OR EXISTS (SELECT 1 FROM chronicle.events"
    " WHERE aggregate_id = %(aggregate_id)s AND version = %(expected)s)"
)
# Claims: a new value is inserted and returned in one round trip. A value
# already held is read back to see by whom (ON CONFLICT waits for a
# concurrent transaction inserting the same key, so the loser of a race sees
# the winner); holding it already is fine.
_TAKE_CLAIM = (
    "INSERT INTO chronicle.claims (scope, value, aggregate_id) VALUES (%s, %s, %s)"
    " ON CONFLICT (scope, value) DO NOTHING RETURNING aggregate_id"
)
_CLAIM_OWNER = "SELECT aggregate_id FROM chronicle.claims WHERE scope = %s AND value = %s"
_RELEASE_CLAIM = "DELETE FROM chronicle.claims WHERE scope = %s AND value = %s AND aggregate_id = %s"
_SNAPSHOT_COLUMNS = "aggregate_id, aggregate_type, version, state_type, schema_version, state"
# Below the newest ``keep`` (the OFFSET is keep - 1); with fewer, the
# subquery is NULL and nothing goes.
_PRUNE_SNAPSHOTS = (
    "DELETE FROM chronicle.snapshots WHERE aggregate_id = %(id)s AND version <"
    " (SELECT version FROM chronicle.snapshots WHERE aggregate_id = %(id)s"
    " ORDER BY version DESC OFFSET %(offset)s LIMIT 1)"
)
_VERSION_AT = (
    "SELECT coalesce("
    " (SELECT min(version) - 1 FROM chronicle.events WHERE aggregate_id = %(id)s AND recorded_at > %(at)s),"
    " (SELECT coalesce(max(version), 0) FROM chronicle.events WHERE aggregate_id = %(id)s))"
)
_HEAD = "SELECT aggregate_type, version FROM chronicle.events WHERE aggregate_id = %s ORDER BY version DESC LIMIT 1"


_LATEST_US = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()) * 1_000_000


def _micros(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _moment(micros: int) -> datetime:
    return datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)


def _event(row: TupleRow) -> RecordedEvent:
    # Positional, in RecordedEvent's field order (_EVENT_COLUMNS follows it):
    # a 10,000-event load builds 10,000 of these.
    return RecordedEvent(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        bytes(row[7]),
        row[8],
        row[9],
        row[10],
        row[11],
        row[12],
        row[13],
        dict(row[14]) if row[14] else {},
    )


def _command(row: TupleRow) -> CommandRecord:
    return CommandRecord(
        command_id=row[0],
        aggregate_id=row[1],
        command_type=row[2],
        fingerprint=bytes(row[3]),
        first_version=row[4],
        last_version=row[5],
        rejection=load_rejection(row[6]),
        principal=row[7],
        user_id=row[8],
        origin=row[9],
        recorded_at_us=_micros(row[10]),
    )


class PostgresStore:
    """``EventStore`` on PostgreSQL. Tables live in the ``chronicle`` schema.

    Differs from the contract only in what it adds: the database may be
    unreachable at start-up or go away later. ``open`` then returns anyway
    and the schema is created as soon as the database answers; until then,
    and while it is gone, every call raises ``StoreUnavailable`` and
    ``ping`` says so, which the server reports as NOT_SERVING.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        lock_timeout: float = 5.0,
        keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
    ) -> None:
        self._url = url
        self._keep_snapshots = check_keep_snapshots(keep_snapshots)
        # A transaction stuck on the position lock, or a client that went
        # away mid-transaction, must not stall every writer.
        options = (
            f"-c lock_timeout={int(lock_timeout * 1000)}"
            f" -c idle_in_transaction_session_timeout={int(lock_timeout * 2000)}"
        )
        self._pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=connect_timeout,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, int(connect_timeout)),
                "options": options,
            },
            name="chronicle",
            # The pool's reconnection backoff doubles without bound; give up
            # early instead, so that the next request (the health check runs
            # every few seconds) starts a fresh attempt: recovery then takes
            # seconds after the database is back, not minutes.
            reconnect_timeout=connect_timeout,
        )
        self._connect_timeout = connect_timeout
        # The hot paths (group commit, aggregate loads, log reads) run on
        # psycopg's sync API in threads: a quarter of the CPU (blocking.py).
        self._blocking = BlockingSide(
            url, threads=max(2, min(4, pool_size // 2)), connect_timeout=connect_timeout, options=options
        )
        self._schema_ready = asyncio.Event()
        self._schema_lock = asyncio.Lock()
        # Set when a call found the database unreachable, cleared by the next
        # call that reaches it. While set, calls wait briefly for a pooled
        # connection instead of the full timeout: fail fast, let clients retry.
        self._unreachable = False
        self._commits = CommitNotifier()
        self._group = GroupCommitter(self._append_batch, self._append_alone, flushers=max(1, min(2, pool_size // 2)))
        self._listener: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------

    async def open(self) -> None:
        _check_url(self._url)
        await self._pool.open(wait=False)
        self._blocking.open()
        try:
            await self._ensure_schema()
        except StoreUnavailable as error:
            log.warning("PostgreSQL is not reachable yet (%s); serving NOT_SERVING until it is", error.message)

    async def _ensure_schema(self) -> None:
        if self._schema_ready.is_set():
            return
        async with self._schema_lock:
            if self._schema_ready.is_set():
                return
            # A connection of its own, not the pool's: when the database is
            # missing or refusing, this fails at once instead of waiting for
            # the pool's reconnection schedule.
            async with translated("migration"):
                conn = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout))
                )
                async with conn:
                    version = await migrate(conn)
            log.info("PostgreSQL schema at version %d", version)
            self._schema_ready.set()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._pool.close()
        await self._blocking.close()

    async def ping(self) -> None:
        recovering = self._unreachable
        async with self._connection("ping") as conn:
            await conn.execute("SELECT 1")
        if recovering:
            # Back after an outage: the connections pooled before it are dead
            # but look idle, and the first calls to draw them would fail
            # after health already said SERVING. Replace them now.
            await self._pool.check()
            await self._blocking.check()

    @asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection for one operation, with errors translated."""
        if not self._schema_ready.is_set():
            await self._ensure_schema()
        timeout = min(0.5, self._connect_timeout) if self._unreachable else self._connect_timeout
        try:
            async with translated(what), self._pool.connection(timeout=timeout) as conn:
                yield conn
        except StoreUnavailable:
            self._unreachable = True
            raise
        self._unreachable = False

    async def _blocking_run(self, what: str, work: Work[T], *, read_only: bool = True) -> T:
        """``work`` on the blocking side, with ``_connection``'s rules."""
        if not self._schema_ready.is_set():
            await self._ensure_schema()
        try:
            result = await self._blocking.run(what, work, fast=self._unreachable, read_only=read_only)
        except StoreUnavailable:
            self._unreachable = True
            raise
        self._unreachable = False
        return result

    # -- writes ----------------------------------------------------------

    async def append(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        commands: Sequence[CommandRecord] = (),
        claims: Sequence[ClaimChange] = (),
    ) -> list[RecordedEvent]:
        if claims or not events:
            # Claims need their owner read back, and appends of no events a
            # version check: both take the precise path.
            return await self._append_one(aggregate_id, events, expected_version, commands=commands, claims=claims)
        return await self._group.append(Append(aggregate_id, events, expected_version, commands))

    def batch_counts(self) -> BatchCounts:
        """Group commit's counters (for metrics)."""
        return self._group.counts()

    async def _append_batch(self, batch: Sequence[Append]) -> list[Outcome]:
        outcomes = await self._blocking_run("append", lambda conn: write_batch(conn, batch), read_only=False)
        written = [o[-1].position for o in outcomes if isinstance(o, list) and o]
        if written:
            self._commits.notify(max(written))
        return outcomes

    async def _append_alone(self, append: Append) -> list[RecordedEvent]:
        return await self._append_one(
            append.aggregate_id, append.events, append.expected_version, commands=append.commands
        )

    async def _append_one(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        commands: Sequence[CommandRecord] = (),
        claims: Sequence[ClaimChange] = (),
    ) -> list[RecordedEvent]:
        """One append in its own transaction, reporting its own error
        precisely (the group committer's fallback, and claims)."""
        try:
            async with self._connection("append") as conn, conn.transaction():
                if commands:
                    await conn.execute(_INSERT_COMMANDS, _command_columns(commands))
                # Before the events, so that the position lock is never held
                # while waiting for another transaction's claim; in one order
                # (a stable sort keeps each value's changes in theirs), so two
                # appends claiming the same values wait instead of deadlocking.
                for claim in sorted(claims, key=lambda c: (c.scope, c.value)):
                    await self._change_claim(conn, aggregate_id, expected_version, claim)
                if not events:
                    await self._check_version(conn, aggregate_id, expected_version)
                    return []
                recorded = await self._insert_events(conn, aggregate_id, events, expected_version)
        except UniqueViolation as violation:
            if violation.constraint == COMMANDS_KEY:
                raise await self._already_recorded(commands) from None
            if violation.constraint == EVENTS_VERSION_KEY:
                raise ConcurrencyConflict(aggregate_id, expected_version) from None
            raise StoreUnavailable(f"unexpected unique violation on {violation.constraint}") from violation
        # Committed: wake this process's readers now, without waiting for
        # the NOTIFY to come back from the server.
        self._commits.notify(recorded[-1].position)
        return recorded

    async def _change_claim(
        self, conn: psycopg.AsyncConnection[Any], aggregate_id: str, expected: int, claim: ClaimChange
    ) -> None:
        if claim.release:
            await conn.execute(_RELEASE_CLAIM, (claim.scope, claim.value, aggregate_id))
            return
        cursor = await conn.execute(_TAKE_CLAIM, (claim.scope, claim.value, aggregate_id))
        if await cursor.fetchone() is not None:
            return
        cursor = await conn.execute(_CLAIM_OWNER, (claim.scope, claim.value))
        row = await cursor.fetchone()
        if row is None or row[0] != aggregate_id:
            # A stale version outranks a lost claim (the contract's order):
            # the command was decided on old state and must be decided again.
            await self._check_version(conn, aggregate_id, expected)
            raise NotUnique(claim.scope, claim.value)

    async def _check_version(self, conn: psycopg.AsyncConnection[Any], aggregate_id: str, expected: int) -> None:
        cursor = await conn.execute(_HEAD, (aggregate_id,))
        row = await cursor.fetchone()
        current = row[1] if row else 0
        if current != expected:
            raise ConcurrencyConflict(aggregate_id, expected, current=current)

    async def _insert_events(
        self, conn: psycopg.AsyncConnection[Any], aggregate_id: str, events: Sequence[NewEvent], expected: int
    ) -> list[RecordedEvent]:
        cursor = await conn.execute(_TAKE_POSITIONS, (len(events),))
        row = await cursor.fetchone()
        assert row is not None
        first_position = row[0] - len(events) + 1
        cursor = await conn.execute(
            _INSERT_EVENTS,
            {
                "first_position": first_position,
                "aggregate_id": aggregate_id,
                "expected": expected,
                "event_ids": [e.event_id for e in events],
                "aggregate_types": [e.aggregate_type for e in events],
                "event_types": [e.event_type for e in events],
                "schema_versions": [e.schema_version for e in events],
                "payloads": [e.payload for e in events],
                "metadata": [Jsonb(dict(e.metadata)) for e in events],
                "command_ids": [e.command_id for e in events],
                "user_ids": [e.user_id for e in events],
                "origins": [e.origin for e in events],
                "correlation_ids": [e.correlation_id for e in events],
                "causation_ids": [e.causation_id for e in events],
                "recorded_at": [_moment(e.timestamp_us) for e in events],
            },
        )
        if cursor.rowcount != len(events):
            # The aggregate is not at ``expected``: behind it (that version
            # does not exist). Ahead of it fails on the unique key instead.
            raise ConcurrencyConflict(aggregate_id, expected)
        return [
            RecordedEvent.committed(
                new, aggregate_id=aggregate_id, version=expected + i, position=first_position + i - 1
            )
            for i, new in enumerate(events, start=1)
        ]

    async def _already_recorded(self, commands: Sequence[CommandRecord]) -> CommandAlreadyRecorded | StoreUnavailable:
        for command in commands:
            recorded = await self.find_command(command.command_id)
            if recorded is not None:
                return CommandAlreadyRecorded(recorded)
        return StoreUnavailable("a command id was reported recorded but cannot be found")

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        async with self._connection("save_snapshot") as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO chronicle.snapshots ({_SNAPSHOT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (aggregate_id, version) DO UPDATE SET aggregate_type = excluded.aggregate_type,"
                " state_type = excluded.state_type, schema_version = excluded.schema_version,"
                " state = excluded.state, taken_at = now()",
                (
                    snapshot.aggregate_id,
                    snapshot.aggregate_type,
                    snapshot.version,
                    snapshot.state_type,
                    snapshot.schema_version,
                    snapshot.state,
                ),
            )
            await conn.execute(_PRUNE_SNAPSHOTS, {"id": snapshot.aggregate_id, "offset": self._keep_snapshots - 1})

    # -- reads -----------------------------------------------------------

    async def find_command(self, command_id: str) -> CommandRecord | None:
        async with self._connection("find_command") as conn:
            cursor = await conn.execute(
                f"SELECT {_COMMAND_COLUMNS} FROM chronicle.commands WHERE command_id = %s", (command_id,)
            )
            row = await cursor.fetchone()
        return None if row is None else _command(row)

    async def head(self, aggregate_id: str) -> AggregateHead | None:
        row = await self._blocking_run("head", lambda conn: conn.execute(_HEAD, (aggregate_id,)).fetchone())
        return None if row is None else AggregateHead(row[0], row[1])

    async def read_log(self, after_position: int, log_filter: LogFilter, limit: int) -> LogPage:
        where = ["position > %(after)s"]
        params: dict[str, object] = {"after": after_position, "limit": limit}
        if log_filter.aggregate_types:
            where.append("aggregate_type = ANY(%(aggregate_types)s)")
            params["aggregate_types"] = sorted(log_filter.aggregate_types)
        if log_filter.event_types:
            where.append("event_type = ANY(%(event_types)s)")
            params["event_types"] = sorted(log_filter.event_types)
        if log_filter.aggregate_id is not None:
            where.append("aggregate_id = %(aggregate_id)s")
            params["aggregate_id"] = log_filter.aggregate_id
        if log_filter.origin is not None:
            where.append("origin = %(origin)s")
            params["origin"] = log_filter.origin
        # One statement, one snapshot: the log's end (log_head) and the page
        # agree, and every position up to that end is committed and visible
        # (positions are handed out under log_head's row lock, see above).
        sql = (
            f"WITH page AS (SELECT {_EVENT_COLUMNS} FROM chronicle.events WHERE {' AND '.join(where)}"
            " ORDER BY position LIMIT %(limit)s)"
            " SELECT h.last_position, page.* FROM chronicle.log_head h LEFT JOIN page ON true ORDER BY page.position"
        )
        rows = await self._blocking_run(
            "read_log", lambda conn: conn.execute(sql.encode(), params, binary=True).fetchall()
        )
        head = int(rows[0][0]) if rows else 0
        events = tuple(_event(row[1:]) for row in rows if row[1] is not None)
        scanned_to = events[-1].position if len(events) == limit else max(head, after_position)
        return LogPage(events, scanned_to)

    async def projection_position(self, name: str) -> int:
        async with self._connection("projection_position") as conn:
            cursor = await conn.execute(
                "SELECT position FROM chronicle.projection_checkpoints WHERE name = %s", (name,)
            )
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def load_document(self, projection: str, key: str) -> StoredDocument | None:
        async with self._connection("load_document") as conn:
            cursor = await conn.execute(
                "SELECT key, type_name, data FROM chronicle.projection_documents WHERE projection = %s AND key = %s",
                (projection, key),
            )
            row = await cursor.fetchone()
        return None if row is None else StoredDocument(row[0], row[1], bytes(row[2]))

    async def commit_projection(
        self, name: str, *, expected_position: int, new_position: int, writes: Sequence[DocumentWrite]
    ) -> None:
        async with self._connection("commit_projection") as conn, conn.transaction():
            # The checkpoint row is the guard: moving it from the expected
            # position fails if another replica moved it first, and its row
            # lock serialises two runners of one projection.
            cursor = await conn.execute(
                "INSERT INTO chronicle.projection_checkpoints (name, position) VALUES (%s, 0)"
                " ON CONFLICT (name) DO NOTHING",
                (name,),
            )
            cursor = await conn.execute(
                "UPDATE chronicle.projection_checkpoints SET position = %s, updated_at = now()"
                " WHERE name = %s AND position = %s",
                (new_position, name, expected_position),
            )
            if cursor.rowcount != 1:
                raise ConcurrencyConflict(f"projection:{name}", expected_position)
            deletes = [w.key for w in writes if w.data is None]
            puts = [w for w in writes if w.data is not None]
            if deletes:
                await conn.execute(
                    "DELETE FROM chronicle.projection_documents WHERE projection = %s AND key = ANY(%s)",
                    (name, deletes),
                )
            if puts:
                await conn.execute(
                    "INSERT INTO chronicle.projection_documents (projection, key, type_name, data)"
                    " SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::bytea[])"
                    " ON CONFLICT (projection, key) DO UPDATE SET type_name = excluded.type_name,"
                    " data = excluded.data, updated_at = now()",
                    (name, [w.key for w in puts], [w.type_name for w in puts], [w.data for w in puts]),
                )

    async def log_head(self) -> int:
        async with self._connection("log_head") as conn:
            cursor = await conn.execute("SELECT last_position FROM chronicle.log_head")
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def wait_for_commit(self, after_position: int, max_wait: float) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="chronicle-listen")
        await self._commits.wait_beyond(after_position, max_wait)

    async def _listen(self) -> None:
        """Feed the notifier from NOTIFY, so that commits through any replica
        wake this process's readers. Reconnects for as long as the store is
        open; meanwhile readers fall back to their polling timeout."""
        delay = 0.2
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout))
                )
                async with conn:
                    await conn.execute("LISTEN chronicle_events")
                    # Commits between a reader's last look and this LISTEN sent
                    # their NOTIFY to nobody: the log's end covers them.
                    cursor = await conn.execute("SELECT last_position FROM chronicle.log_head")
                    row = await cursor.fetchone()
                    if row is not None:
                        self._commits.notify(int(row[0]))
                    delay = 0.2
                    async for notice in conn.notifies():
                        if notice.payload.isdigit():
                            self._commits.notify(int(notice.payload))
            except psycopg.Error as error:
                log.debug("LISTEN connection lost (%s); reconnecting in %.1fs", error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def read_aggregate(self, aggregate_id: str, query: AggregateQuery = AggregateQuery()) -> list[RecordedEvent]:
        where = ["aggregate_id = %s", "version >= %s"]
        params: list[object] = [aggregate_id, max(query.from_version, 1)]
        if query.to_version is not None:
            where.append("version <= %s")
            params.append(query.to_version)
        if query.origin is not None:
            where.append("origin = %s")
            params.append(query.origin)
        if query.event_types:
            where.append("event_type = ANY(%s)")
            params.append(sorted(query.event_types))
        sql = f"SELECT {_EVENT_COLUMNS} FROM chronicle.events WHERE {' AND '.join(where)} ORDER BY version"
        if query.backwards:
            sql += " DESC"
        if query.limit is not None:
            sql += " LIMIT %s"
            params.append(query.limit)
        # Binary results: payloads arrive as bytes, not as hex to decode.
        rows = await self._blocking_run(
            "read_aggregate", lambda conn: conn.execute(sql.encode(), params, binary=True).fetchall()
        )
        return [_event(row) for row in rows]

    async def version_at(self, aggregate_id: str, timestamp_us: int) -> int:
        async with self._connection("version_at") as conn:
            # Clamped to what a datetime holds; every event lies within.
            at = _moment(min(max(timestamp_us, 0), _LATEST_US))
            cursor = await conn.execute(_VERSION_AT, {"id": aggregate_id, "at": at})
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def claim_owner(self, scope: str, value: str) -> str | None:
        async with self._connection("claim_owner") as conn:
            cursor = await conn.execute(_CLAIM_OWNER, (scope, value))
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def claims_in_clear(self, limit: int) -> list[HeldClaim]:
        async with self._connection("claims_in_clear") as conn:
            cursor = await conn.execute(
                "SELECT scope, value, aggregate_id FROM chronicle.claims WHERE left(value, 1) <> %s LIMIT %s",
                (HIDDEN_CLAIM_MARK, limit),
            )
            rows = await cursor.fetchall()
        return [HeldClaim(r[0], r[1], r[2]) for r in rows]

    async def hide_claim(self, claim: HeldClaim, hidden_value: str) -> bool:
        async with self._connection("hide_claim") as conn, conn.transaction():
            cursor = await conn.execute(_RELEASE_CLAIM, (claim.scope, claim.value, claim.aggregate_id))
            if cursor.rowcount != 1:
                return False
            await conn.execute(_TAKE_CLAIM, (claim.scope, hidden_value, claim.aggregate_id))
            cursor = await conn.execute(_CLAIM_OWNER, (claim.scope, hidden_value))
            row = await cursor.fetchone()
        return row is not None and row[0] == claim.aggregate_id

    async def load_snapshot(self, aggregate_id: str, *, at_most: int | None = None) -> Snapshot | None:
        sql = f"SELECT {_SNAPSHOT_COLUMNS} FROM chronicle.snapshots WHERE aggregate_id = %s"
        params: list[object] = [aggregate_id]
        if at_most is not None:
            sql += " AND version <= %s"
            params.append(at_most)
        sql += " ORDER BY version DESC LIMIT 1"
        row = await self._blocking_run("load_snapshot", lambda conn: conn.execute(sql.encode(), params).fetchone())
        if row is None:
            return None
        return Snapshot(row[0], row[1], row[2], row[3], row[4], bytes(row[5]))

    # -- audit -----------------------------------------------------------

    async def record_audit_entry(self, entry: AuditEntry) -> None:
        async with self._connection("record_audit_entry") as conn:
            await conn.execute(
                f"INSERT INTO chronicle.refusals ({_AUDIT_COLUMNS}, reason, message, outcome)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    _moment(entry.recorded_at_us),
                    entry.command_id,
                    entry.command_type,
                    entry.aggregate_id,
                    entry.principal,
                    entry.user_id,
                    entry.origin,
                    entry.reason,
                    entry.message,
                    entry.outcome,
                ),
            )

    async def read_audit(self, query: AuditQuery) -> list[AuditEntry]:
        where, params = _audit_filter(query)
        outcome = {None: "", ACCEPTED: " AND rejection IS NULL", REFUSED: " AND rejection IS NOT NULL"}
        rows: list[TupleRow] = []
        refusals: list[TupleRow] = []
        async with self._connection("read_audit") as conn:
            if query.outcome in outcome:
                cursor = await conn.execute(
                    f"SELECT {_COMMAND_COLUMNS} FROM chronicle.commands WHERE {where}{outcome[query.outcome]}"
                    " ORDER BY recorded_at DESC LIMIT %s",
                    (*params, query.limit),
                )
                rows = await cursor.fetchall()
            only = "" if query.outcome is None else " AND outcome = %s"
            cursor = await conn.execute(
                f"SELECT {_AUDIT_COLUMNS}, reason, message, outcome FROM chronicle.refusals WHERE {where}{only}"
                " ORDER BY recorded_at DESC LIMIT %s",
                (*params, *([query.outcome] if query.outcome is not None else []), query.limit),
            )
            refusals = await cursor.fetchall()
        entries = [_command(r).audit_entry() for r in rows] + [_other(r) for r in refusals]
        entries.sort(key=lambda e: e.recorded_at_us, reverse=True)
        return entries[: query.limit]

    # -- data keys -------------------------------------------------------

    async def create_data_key(self, key: DataKey) -> DataKey:
        async with self._connection("create_data_key") as conn:
            # ON CONFLICT waits for a concurrent insert of the same key, so
            # every creator reads back the one that won.
            await conn.execute(
                "INSERT INTO chronicle.data_keys (aggregate_id, master_key_id, wrapped_key) VALUES (%s, %s, %s)"
                " ON CONFLICT (aggregate_id) DO NOTHING",
                (key.aggregate_id, key.master_key_id, key.wrapped),
            )
            stored = await self._load_key(conn, key.aggregate_id)
        assert stored is not None
        return stored

    async def _load_key(self, conn: psycopg.AsyncConnection[Any], aggregate_id: str) -> DataKey | None:
        cursor = await conn.execute(
            "SELECT master_key_id, wrapped_key FROM chronicle.data_keys WHERE aggregate_id = %s", (aggregate_id,)
        )
        row = await cursor.fetchone()
        return None if row is None else DataKey(aggregate_id, row[0], None if row[1] is None else bytes(row[1]))

    async def load_data_key(self, aggregate_id: str) -> DataKey | None:
        async with self._connection("load_data_key") as conn:
            return await self._load_key(conn, aggregate_id)

    async def forget_data_key(self, aggregate_id: str) -> bool:
        async with self._connection("forget_data_key") as conn, conn.transaction():
            cursor = await conn.execute(
                "UPDATE chronicle.data_keys SET master_key_id = NULL, wrapped_key = NULL, forgotten_at = now()"
                " WHERE aggregate_id = %s AND wrapped_key IS NOT NULL",
                (aggregate_id,),
            )
            erased = cursor.rowcount == 1
            await conn.execute("DELETE FROM chronicle.snapshots WHERE aggregate_id = %s", (aggregate_id,))
            # Only an aggregate with a key (or its tombstone) is forgotten;
            # one that never had a key keeps its claims.
            await conn.execute(
                "DELETE FROM chronicle.claims WHERE aggregate_id = %(id)s"
                " AND EXISTS (SELECT 1 FROM chronicle.data_keys WHERE aggregate_id = %(id)s)",
                {"id": aggregate_id},
            )
        return erased

    async def data_keys_to_rewrap(self, active_master_key_id: str, limit: int) -> list[DataKey]:
        async with self._connection("data_keys_to_rewrap") as conn:
            cursor = await conn.execute(
                "SELECT aggregate_id, master_key_id, wrapped_key FROM chronicle.data_keys"
                " WHERE wrapped_key IS NOT NULL AND master_key_id <> %s ORDER BY aggregate_id LIMIT %s",
                (active_master_key_id, limit),
            )
            rows = await cursor.fetchall()
        return [DataKey(r[0], r[1], bytes(r[2])) for r in rows]

    async def rewrap_data_key(self, old: DataKey, new: DataKey) -> bool:
        async with self._connection("rewrap_data_key") as conn:
            cursor = await conn.execute(
                "UPDATE chronicle.data_keys SET master_key_id = %s, wrapped_key = %s"
                " WHERE aggregate_id = %s AND master_key_id = %s AND wrapped_key = %s",
                (new.master_key_id, new.wrapped, old.aggregate_id, old.master_key_id, old.wrapped),
            )
        return cursor.rowcount == 1


def _other(row: TupleRow) -> AuditEntry:
    return AuditEntry(
        recorded_at_us=_micros(row[0]),
        command_id=row[1],
        command_type=row[2],
        aggregate_id=row[3],
        principal=row[4],
        user_id=row[5],
        origin=row[6],
        reason=row[7],
        message=row[8],
        outcome=row[9],
    )


def _audit_filter(query: AuditQuery) -> tuple[str, list[object]]:
    """The WHERE condition both audit tables share (they have these columns)."""
    where: list[str] = ["true"]
    params: list[object] = []
    for column, value in (
        ("aggregate_id", query.aggregate_id),
        ("principal", query.principal),
        ("command_id", query.command_id),
    ):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if query.since_us is not None:
        where.append("recorded_at >= %s")
        params.append(_moment(query.since_us))
    if query.until_us is not None:
        where.append("recorded_at < %s")
        params.append(_moment(query.until_us))
    return " AND ".join(where), params


def _check_url(url: str) -> None:
    """Refuse a URL libpq would only refuse later, on every reconnection."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as error:
        raise ConfigurationError(f"malformed PostgreSQL URL: {error}", reason="BAD_DATABASE_URL") from None
    ports = str(params.get("port") or "5432").split(",")
    if not all(port.strip().isdigit() for port in ports):
        raise ConfigurationError(
            f"malformed PostgreSQL URL: port {params.get('port')!r} is not a number", reason="BAD_DATABASE_URL"
        )


def _command_columns(commands: Sequence[CommandRecord]) -> tuple[list[Any], ...]:
    return (
        [c.command_id for c in commands],
        [c.aggregate_id for c in commands],
        [c.command_type for c in commands],
        [c.fingerprint for c in commands],
        [c.first_version for c in commands],
        [c.last_version for c in commands],
        [None if c.rejection is None else Jsonb(rejection_dict(c.rejection)) for c in commands],
        [c.principal for c in commands],
        [c.user_id for c in commands],
        [c.origin for c in commands],
        [_moment(c.recorded_at_us) for c in commands],
    )
