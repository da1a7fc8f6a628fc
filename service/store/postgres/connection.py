"""One PostgreSQL connection, driven by the event loop in pipeline mode.

Why not psycopg's connection objects: measured on this service's machine, a
round trip through psycopg's async API costs the client about 70 µs of CPU
and through its sync API on a thread pool (with the hand-off to the loop)
about 100-150 µs; the service is CPU-bound, and a command makes at least one
round trip. Driving libpq ourselves costs about 6 µs: the socket stays
registered with the loop for the connection's whole life (no reader added
and removed per wait, no thread), and pipeline mode lets many operations
share the connection without waiting for each other's round trips.

An *operation* is a list of statements followed by one Sync. PostgreSQL runs
the statements of an operation in one implicit transaction: they all commit
at the Sync, or the first error rolls all of them back (the statements after
it are not run). So every store method is one operation, atomic, in one
round trip, and many operations from many callers are in flight at once.

psycopg still does what it does well: connecting (``AsyncConnection.connect``,
then we take over its libpq connection), turning error results into its
exception classes (``error_from_result``), and loading binary rows
(``Transformer``, in C).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq
from psycopg.errors import error_from_result
from psycopg.pq.abc import PGresult

log = logging.getLogger(__name__)

_OK = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.EMPTY_QUERY)
_MISSING_STATEMENT = "26000"  # invalid_sql_statement_name: a prepared statement that does not exist
# Errors of a preparation that say nothing is wrong with the statement (a
# lock wait, a statement timeout, the server going away): logged as warnings.
_TRANSIENT = (psycopg.OperationalError,)
BYTEA_OID = 17


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of an operation: SQL with ``$n`` placeholders and its
    parameters. ``name`` set: prepared once per connection (for statements
    run often, so PostgreSQL parses and plans them once). ``binary``: rows
    come back in binary (bytea without hex, numbers without text)."""

    sql: bytes
    params: Sequence[object] = ()
    name: bytes = b""
    binary: bool = False

    @classmethod
    def prepared(cls, sql: str, params: Sequence[object] = (), *, binary: bool = False) -> Statement:
        """A statement of fixed text run often (per batch, per load):
        parsed and planned once per connection, under a name made from its
        text. Not for statements whose best plan depends on their
        parameters (a log page's: see sql.py), which keep custom plans."""
        encoded = sql.encode()
        return cls(encoded, params, name=_prepared_name(encoded), binary=binary)


@functools.lru_cache(maxsize=256)
def _prepared_name(sql: bytes) -> bytes:
    return b"chronicle_" + hashlib.blake2b(sql, digest_size=8).hexdigest().encode()


def encode_params(params: Sequence[object]) -> tuple[list[bytes | None], list[int], list[int]]:
    """Parameter values for libpq: text for everything but bytes (binary
    bytea). Types are left for PostgreSQL to infer from the statement
    (``$1::bigint``), so the SQL says what each one is."""
    values: list[bytes | None] = []
    types: list[int] = []
    formats: list[int] = []
    for value in params:
        if value is None:
            values.append(None)
            types.append(0)
            formats.append(0)
        elif isinstance(value, bytes | bytearray | memoryview):
            values.append(bytes(value))
            types.append(BYTEA_OID)
            formats.append(1)
        elif isinstance(value, bool):
            values.append(b"t" if value else b"f")
            types.append(0)
            formats.append(0)
        elif isinstance(value, str):
            values.append(value.encode())
            types.append(0)
            formats.append(0)
        elif isinstance(value, int):
            values.append(b"%d" % value)
            types.append(0)
            formats.append(0)
        elif isinstance(value, list | tuple):
            values.append(text_array(value).encode())
            types.append(0)
            formats.append(0)
        else:
            raise TypeError(f"no PostgreSQL parameter encoding for {type(value).__name__}")
    return values, types, formats


def text_array(items: Sequence[object]) -> str:
    """A PostgreSQL array literal of text or integers (``{"a","b"}``): every
    element quoted, backslashes and quotes escaped, so any text survives."""
    parts = []
    for item in items:
        if item is None:
            parts.append("NULL")
        elif isinstance(item, int) and not isinstance(item, bool):
            parts.append(str(item))
        else:
            text = str(item).replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'"{text}"')
    return "{" + ",".join(parts) + "}"


@dataclass(slots=True, eq=False)
class _Operation:
    reply: asyncio.Future[list[PGresult]] | None  # None: a statement being prepared
    results: list[PGresult] = field(default_factory=list)
    error: psycopg.Error | None = None
    prepared: bytes = b""
    # A statement being prepared: the error result PostgreSQL refused it with.
    refusal: PGresult | None = None
    # An operation: the preparations still in flight when it was sent, of
    # statements it uses (it fails on the missing statement if one fails).
    after: tuple[_Operation, ...] = ()


class ConnectionLost(psycopg.OperationalError):
    """The connection broke; operations in flight have unknown outcomes."""


class PipelinedConnection:
    """A libpq connection in pipeline mode whose socket the event loop
    watches. ``run`` sends an operation and returns a future of its results
    (one ``PGresult`` per statement); operations complete in the order they
    were sent. A broken connection fails every operation in flight with
    ``ConnectionLost`` and is never used again (``broken``)."""

    def __init__(
        self,
        owner: psycopg.AsyncConnection[Any],
        loop: asyncio.AbstractEventLoop,
        *,
        on_notify: Callable[[str, str], None] | None = None,
    ) -> None:
        self._owner = owner  # psycopg's connection: kept for closing it, never used for I/O again
        self._pg = owner.pgconn
        self._loop = loop
        self._socket = self._pg.socket
        self._in_flight: deque[_Operation] = deque()
        self._prepared: set[bytes] = set()  # prepared, or being prepared
        self._preparing: dict[bytes, _Operation] = {}  # being prepared: its operation
        self._on_notify = on_notify
        self._writing = False
        self.broken = False
        self._lost: asyncio.Future[None] = loop.create_future()
        self._pg.nonblocking = 1
        self._pg.enter_pipeline_mode()
        loop.add_reader(self._socket, self._readable)

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        connect_timeout: float,
        options: str = "",
        on_notify: Callable[[str, str], None] | None = None,
    ) -> PipelinedConnection:
        owner = await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=max(1, int(connect_timeout)), options=options
        )
        return cls(owner, asyncio.get_running_loop(), on_notify=on_notify)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def backend_pid(self) -> int:
        return int(self._pg.backend_pid)

    def run(self, statements: Sequence[Statement]) -> asyncio.Future[list[PGresult]]:
        """Send ``statements`` as one operation (one implicit transaction)."""
        reply: asyncio.Future[list[PGresult]] = self._loop.create_future()
        if self.broken:
            reply.set_exception(ConnectionLost("the connection to PostgreSQL is closed"))
            return reply
        pg = self._pg
        after: list[_Operation] = []
        try:
            for statement in statements:
                if statement.name:
                    if statement.name not in self._prepared:
                        self._prepare(statement)
                    preparing = self._preparing.get(statement.name)
                    if preparing is not None and preparing not in after:
                        after.append(preparing)
            operation = _Operation(reply, after=tuple(after))
            for statement in statements:
                values, types, formats = encode_params(statement.params)
                result_format = 1 if statement.binary else 0
                if statement.name:
                    pg.send_query_prepared(statement.name, values, formats, result_format)
                else:
                    pg.send_query_params(statement.sql, values, types, formats, result_format)
            pg.pipeline_sync()
        except psycopg.Error as error:
            self._break(error)
            reply.set_exception(ConnectionLost(str(error)))
            return reply
        self._in_flight.append(operation)
        self._flush()
        return reply

    def _prepare(self, statement: Statement) -> None:
        """Parse a named statement in an operation of its own (so that its
        fate does not hang on the statements around it), before first use.
        Operations run in order, so every later one finds it prepared."""
        _, types, _ = encode_params(statement.params)
        self._pg.send_prepare(statement.name, statement.sql, types)
        self._pg.pipeline_sync()
        preparing = _Operation(None, prepared=statement.name)
        self._prepared.add(statement.name)
        self._preparing[statement.name] = preparing
        self._in_flight.append(preparing)

    def _flush(self) -> None:
        try:
            pending = self._pg.flush()
        except psycopg.Error as error:
            self._break(error)
            return
        if pending and not self._writing:
            self._writing = True
            self._loop.add_writer(self._socket, self._writable)
        elif not pending and self._writing:
            self._writing = False
            self._loop.remove_writer(self._socket)

    def _writable(self) -> None:
        self._flush()

    def _readable(self) -> None:
        pg = self._pg
        try:
            pg.consume_input()
            while self._in_flight and not pg.is_busy():
                result = pg.get_result()
                if result is not None:
                    self._take(result)
            if self._on_notify is not None:
                while (notice := pg.notifies()) is not None:
                    self._on_notify(notice.relname.decode(), notice.extra.decode())
        except psycopg.Error as error:
            self._break(error)
            return
        if pg.status == pq.ConnStatus.BAD:
            self._break(ConnectionLost("the server closed the connection"))

    def _take(self, result: PGresult) -> None:
        operation = self._in_flight[0]
        status = result.status
        if status == pq.ExecStatus.PIPELINE_SYNC:
            self._in_flight.popleft()
            self._finish(operation)
            return
        if status == pq.ExecStatus.PIPELINE_ABORTED:
            return  # skipped after an earlier error of the same operation
        if status not in _OK:
            if operation.error is None:
                operation.error = error_from_result(result, encoding="utf-8")
                if operation.reply is None:
                    operation.refusal = result
            return
        operation.results.append(result)

    def _finish(self, operation: _Operation) -> None:
        if operation.reply is None:
            if self._preparing.get(operation.prepared) is operation:
                del self._preparing[operation.prepared]
            if operation.error is not None:
                # The operations sent since that use the statement fail on
                # it missing (see _failure); the next use prepares it again.
                self._prepared.discard(operation.prepared)
                level = logging.WARNING if isinstance(operation.error, _TRANSIENT) else logging.ERROR
                log.log(level, "PostgreSQL refused to prepare %s: %s", operation.prepared.decode(), operation.error)
            return
        if operation.reply.done():
            return  # the caller gave up waiting; the outcome stands all the same
        if operation.error is not None:
            operation.reply.set_exception(self._failure(operation, operation.error))
        else:
            operation.reply.set_result(operation.results)

    def _failure(self, operation: _Operation, error: psycopg.Error) -> psycopg.Error:
        """What ``operation`` failed with, told as it is to the caller.

        An operation that uses a statement whose preparation PostgreSQL
        refused (a lock wait that timed out while parsing it, say) fails on
        the statement missing (``InvalidSqlStatementName``, 26000): it fails
        as the preparation did instead, so that the caller hears why (a lock
        timeout is StoreUnavailable, errors.py), never a missing statement.

        Why not send it again once the statement is prepared: that would be
        safe, even for an append (nothing of it ran: the statement it lacked
        failed inside its implicit transaction, which PostgreSQL rolled back
        whole, so it cannot have committed), but its preparation would wait
        on the same lock again, doubling the wait (errors.py: a lock wait
        that timed out is not retried). The caller retries later, an append
        with its command id.
        """
        if error.sqlstate != _MISSING_STATEMENT:
            return error
        for preparing in operation.after:
            if preparing.refusal is not None:
                # A new exception for each operation (and not the preparation's
                # own): one instance raised in many tasks grows one traceback.
                return error_from_result(preparing.refusal, encoding="utf-8")
        # Missing, though this connection prepared it (nothing Chronicle does
        # drops a statement; a pooler in transaction mode would): forget it,
        # so that its next use prepares it again on this connection.
        message = error.diag.message_primary or ""
        self._prepared.difference_update([name for name in self._prepared if name.decode() in message])
        return error

    async def lost(self) -> None:
        """Return when the connection breaks (or is closed)."""
        await asyncio.shield(self._lost)

    def _break(self, error: BaseException) -> None:
        if self.broken:
            return
        self.broken = True
        self._lost.set_result(None)
        log.debug("PostgreSQL connection lost: %s", error)
        self._loop.remove_reader(self._socket)
        if self._writing:
            self._loop.remove_writer(self._socket)
        lost = ConnectionLost(f"the connection to PostgreSQL was lost: {str(error).strip() or type(error).__name__}")
        while self._in_flight:
            operation = self._in_flight.popleft()
            if operation.reply is not None and not operation.reply.done():
                operation.reply.set_exception(lost)
        self._pg.finish()

    async def close(self) -> None:
        if not self.broken:
            self._break(ConnectionLost("closed"))
        await self._owner.close()
