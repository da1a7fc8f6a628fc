"""The PostgreSQL store's one way of talking to its database: a few
pipelined connections on the event loop (connection.py), the schema, and
whether the database can be reached.

Every store method is one *operation*: its statements, sent together and
committed together, in one round trip. ``run`` sends an operation on the
connection with the fewest operations in flight (opening another, up to
the pool size, when all are busy), and turns database errors into
Chronicle's (errors.py). ``submit`` is the same without a coroutine, for
group commit's hot path.

Reads and writes use connections of their own. Operations on one connection
run in order, and a write can wait on a lock (the position lock, held by
another replica's transaction until it commits): a read queued behind it
would wait too, and a reader that the lock holder waits for would never be
answered. So a read never queues behind a write.

Availability. The server starts even when the database is unreachable: the
schema is created or migrated on the first operation that reaches it.
While the database is away, operations fail with ``StoreUnavailable`` at
once (one connection attempt at a time is made on their behalf), and the
health check (``ping``) reports it. A connection that breaks fails only the
operations it carried; an operation that only reads is sent once more on
another connection, one that writes is not (its outcome is unknown: the
caller retries with the same command id and idempotency decides). A
database that stops taking writes after start-up (a primary demoted,
``default_transaction_read_only`` turned on) is unavailable for writes
(``STORE_READ_ONLY``, errors.py), and ``ping(writable=True)``, the store's
health check, says so until it takes them again.

Contention. An operation is one transaction (connection.py), so one that
PostgreSQL aborts as a deadlock's victim or for a serialization failure
(errors.rolled_back) left nothing behind and is sent again, read or write,
after a short jittered pause: ``ROLLBACK_ATTEMPTS`` times in all, then
``StoreUnavailable`` (reason ``CONTENTION``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Awaitable, Callable, Sequence

import psycopg
from psycopg.pq.abc import PGresult

from service.errors import ConfigurationError, StoreUnavailable, store_unreachable
from service.store.encryption import sealed_store_without_keys
from service.store.notifier import CommitNotifier
from service.store.postgres import sql
from service.store.postgres.connection import ConnectionLost, PipelinedConnection, Statement
from service.store.postgres.errors import (
    READ_ONLY,
    connect_failure,
    contention,
    misconfigured,
    rolled_back,
    translation,
)
from service.store.postgres.migrations import SCHEMA, known_migrations, open_schema, permission_denied
from service.store.schema_use import SCHEMA_TOO_NEW, SchemaUse
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Operations in flight on every connection before another is opened: a few
# pipelined on one connection cost PostgreSQL less than one each on many.
_BUSY = 2
# Connections for writes: group commit keeps two batches in flight.
_WRITERS = 2
# An operation PostgreSQL rolled back whole to let others go on (a deadlock's
# victim, a serialization failure) is sent again: the deadlock is gone with
# the victim, and the other transaction, which goes on, is usually done
# within milliseconds. Attempts in all, before StoreUnavailable (CONTENTION):
# a few, so that a real lock-order cycle or a storm of conflicts reaches
# the client (who retries later) instead of holding the caller for long.
ROLLBACK_ATTEMPTS = 5
# Seconds before the second attempt, doubled before each further one (4, 8,
# 16, 32 ms: at most 60 ms in all); each pause is drawn between half and all
# of it, so that two operations that aborted each other do not collide again
# in step.
ROLLBACK_BACKOFF = 0.004
# Whether the database takes writes, as the store's own transactions would
# find it: in recovery (a standby) or read only by default (the setting is
# read inside the ping's transaction, after any configuration reload).
_TAKES_WRITES = b"SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'"
# The schema's version and compatibility floor, read with each health ping
# (``migrations.schema_state``'s query): a ``migrate --force`` under a running
# replica is seen within a health interval.
_SCHEMA_STATE = (
    f"SELECT version, (to_jsonb(m) ->> 'compatible_from')::integer FROM {SCHEMA}.schema_migrations AS m"
    " ORDER BY version DESC LIMIT 1"
).encode()


@functools.cache
def _newest_known() -> int:
    """The newest migration this code knows (its scripts read once: every
    writable ping asks, and reading them took the event loop about a
    millisecond)."""
    return known_migrations()[-1].version


class Database:
    def __init__(
        self,
        url: str,
        *,
        connections: int,
        connect_timeout: float,
        lock_timeout: float,
        refuse_sealed: bool = False,
        use: SchemaUse = SchemaUse.MIGRATE,
        force_migration: bool = False,
    ) -> None:
        self.url = self._url = url
        self._use = use
        # Apply a migration that raises the compatibility floor even under
        # live replicas below it (--migrate=force; migrations.py).
        self._force_migration = force_migration
        # A server without master keys: the database is not used at all if
        # it holds data keys sealed by them (checked with the schema, before
        # any operation, also when it is first reached after start-up).
        self._refuse_sealed = refuse_sealed
        self._sealed = False  # found so: every operation is refused
        self._size = max(1, connections)
        self._connect_timeout = connect_timeout
        self._options = session_options(lock_timeout=lock_timeout, read_only=use is SchemaUse.READ_ONLY)
        self._pools = {True: _Pool(max(1, self._size - _WRITERS)), False: _Pool(min(_WRITERS, self._size))}
        self._schema_ready = False
        self.schema_version: int | None = None  # once checked
        # Whether the last ping found the schema's floor above this code (``_check_schema``).
        self._stranded = False
        self._schema_lock: asyncio.Lock | None = None
        self._closed = False
        self.commits = CommitNotifier()
        self._listener: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        _check_url(self._url)
        try:
            await self._ensure_schema(at_open=True)
        except StoreUnavailable as error:
            # The driver's words (the detail), not only the caller's fixed text:
            # the operator reads why here first.
            log.warning("PostgreSQL is not reachable yet (%s); serving NOT_SERVING until it is", error)

    async def close(self) -> None:
        self._closed = True
        await cancel_and_wait(self._listener, "LISTEN for commits", log)
        for pool in self._pools.values():
            await pool.close()

    async def ping(self, *, writable: bool = False) -> None:
        """Return if the database answers; raise StoreUnavailable if not.
        ``writable``: and takes writes (the store's database, not a standby
        read from): one that turned read only after start-up (a primary
        demoted, ``default_transaction_read_only`` set on) is
        ``StoreUnavailable`` with reason ``STORE_READ_ONLY``, so health says
        NOT_SERVING until it takes writes again. Still one round trip."""
        if not writable:
            await self.run("ping", [Statement(b"SELECT 1")], read_only=True)
            return
        checks_schema = self._schema_ready
        statements = [Statement(_TAKES_WRITES), *([Statement(_SCHEMA_STATE)] if checks_schema else [])]
        result, *schema = await self.run("ping", statements, read_only=True)
        if schema and schema[0].ntuples:
            self._check_schema(schema[0])
        if result.get_value(0, 0) == b"t":
            why = "it is in recovery (a hot standby: was the primary demoted?)"
        elif result.get_value(0, 1) == b"t":
            why = "its transactions are read only (default_transaction_read_only is on)"
        else:
            return
        raise StoreUnavailable(f"PostgreSQL takes no writes: {why}", reason=READ_ONLY)

    def _check_schema(self, state: PGresult) -> None:
        """The schema as the last ping read it: its version kept (the
        ``chronicle_schema_version`` gauge reads it), and ``StoreUnavailable``
        SCHEMA_TOO_NEW while its compatibility floor is above the newest
        migration this code knows (``migrate --force`` ran under this
        replica: its code may misread or miswrite the new schema), so
        health says NOT_SERVING; said at ERROR once, until it clears."""
        version_cell, floor_cell = state.get_value(0, 0), state.get_value(0, 1)
        version = int(version_cell or 0)
        floor = version if floor_cell is None else int(floor_cell)  # no floor recorded: the version itself
        if version != self.schema_version:
            log.info("PostgreSQL schema now at version %d (was %s)", version, self.schema_version)
            self.schema_version = version
        newest = _newest_known()
        if floor <= newest:
            if self._stranded:
                log.warning("the schema's compatibility floor (%d) is within this replica's code again", floor)
            self._stranded = False
            return
        message = (
            f"the PostgreSQL schema is at version {version} with compatibility floor {floor}, above the newest"
            f" this replica's code knows ({newest}): a migration ran under it (migrate --force); it reports"
            " NOT_SERVING. Replace it with the new version"
        )
        if not self._stranded:
            log.error("%s", message)
            self._stranded = True
        raise StoreUnavailable(message, reason=SCHEMA_TOO_NEW)

    async def _ensure_schema(self, *, at_open: bool = False) -> None:
        """Migrate the schema, once. A database that takes no writes is a
        mistake in the settings at ``open`` (DATABASE_READ_ONLY, the server
        does not start); reached only later (it was not reachable at start),
        it is refused as unavailable with the same reason, so clients retry
        and health says NOT_SERVING until it takes writes (a failover in
        progress, a primary still read only)."""
        if self._schema_ready:
            return
        if self._sealed:
            # A new exception each time: one instance raised again and again
            # would grow its traceback with every operation refused.
            raise sealed_store_without_keys()
        if self._schema_lock is None:
            self._schema_lock = asyncio.Lock()
        async with self._schema_lock:
            if self._schema_ready:
                return
            # A connection of its own: migrations take an advisory lock and
            # run DDL in one transaction, on psycopg's own terms.
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=max(1, int(self._connect_timeout)),
                    # No lock_timeout: a replica waits out another's migration.
                    options="-c default_transaction_read_only=on" if self._use is SchemaUse.READ_ONLY else "",
                )
                async with conn:
                    version = await open_schema(conn, self._use, force=self._force_migration)
                    try:
                        sealed = self._refuse_sealed and await (await conn.execute(sql.SEALED_DATA_KEY)).fetchone()
                    except psycopg.errors.InsufficientPrivilege as error:
                        raise permission_denied(conn, error, migrating=False) from error
            except ConfigurationError as error:
                if at_open or error.reason != "DATABASE_READ_ONLY":
                    raise
                raise StoreUnavailable(error.message, reason=error.reason) from error
            except Exception as error:
                wrong = misconfigured(error)
                if wrong is not None and at_open:
                    # The settings are wrong, not the database away: the
                    # server does not start (exit 2), as for a role without
                    # rights, rather than serve NOT_SERVING for ever.
                    reason, why = wrong
                    raise ConfigurationError(
                        f"PostgreSQL refused the connection to {_where(self._url)}: {why}", reason=reason
                    ) from None
                translated = connect_failure(error, "migration")
                if translated is None:
                    raise
                raise translated from error
            if sealed:
                self._sealed = True
                raise sealed_store_without_keys()
            log.info("PostgreSQL schema at version %d", version)
            self.schema_version = version
            self._schema_ready = True

    # -- operations ----------------------------------------------------------

    def submit(self, statements: Sequence[Statement]) -> asyncio.Future[list[PGresult]]:
        """Send an operation on a ready connection and return its future,
        with psycopg's errors untranslated (the caller knows what they mean).
        Without a ready connection, the same through ``run``'s slow path."""
        connection = self._pools[False].pick(self._connect) if self._schema_ready else None
        if connection is None:
            return asyncio.ensure_future(self._send_when_ready(statements))
        return connection.run(statements)

    async def _send_when_ready(self, statements: Sequence[Statement]) -> list[PGresult]:
        connection = await self._connection(read_only=False)
        return await connection.run(statements)

    async def run(self, what: str, statements: Sequence[Statement], *, read_only: bool = False) -> list[PGresult]:
        """One operation, its errors translated to Chronicle's. ``what``
        names it in messages (and logs). Sent again when PostgreSQL rolled
        it back (a deadlock, a serialization failure: see ``ROLLBACK_ATTEMPTS``),
        and a read once more when its connection died."""
        resent = False  # a read sent again after its connection died
        rolled = 0  # attempts PostgreSQL rolled back (deadlock, serialization)
        while True:
            try:
                connection = await self._connection(read_only=read_only)
                return await connection.run(statements)
            except ConnectionLost as lost:
                if read_only and not resent and not self._closed:
                    resent = True
                    continue  # the connection died under us (a restart): a read is safe to send again
                raise store_unreachable(f"PostgreSQL unavailable during {what}: {lost}") from lost
            except Exception as error:
                if rolled_back(error):
                    rolled += 1
                    if rolled >= ROLLBACK_ATTEMPTS:
                        raise contention(error, what, attempts=rolled) from error
                    pause = ROLLBACK_BACKOFF * 2 ** (rolled - 1) * random.uniform(0.5, 1.0)
                    log.info(
                        "PostgreSQL rolled back %s (SQLSTATE %s: %s); sending it again in %.0f ms (attempt %d of %d)",
                        what,
                        error.sqlstate,
                        error.diag.message_primary,
                        pause * 1000,
                        rolled + 1,
                        ROLLBACK_ATTEMPTS,
                    )
                    await asyncio.sleep(pause)
                    continue
                translated = translation(error, what)
                if translated is None:
                    raise
                raise translated from error

    async def _connection(self, *, read_only: bool) -> PipelinedConnection:
        if self._closed:
            raise StoreUnavailable("the PostgreSQL store is closed", reason="SHUTTING_DOWN")
        await self._ensure_schema()
        pool = self._pools[read_only]
        connection = pool.pick(self._connect)
        if connection is not None:
            return connection
        # None live: wait for one attempt (shared by every waiting caller).
        try:
            return await asyncio.shield(pool.grow(self._connect))
        except Exception as error:
            translated = connect_failure(error, "connect")
            raise (translated or store_unreachable(f"PostgreSQL unavailable: {error}")) from error

    async def _connect(self) -> PipelinedConnection:
        connection = await PipelinedConnection.connect(
            self._url, connect_timeout=self._connect_timeout, options=self._options
        )
        if self._closed:
            await connection.close()
            raise StoreUnavailable("the PostgreSQL store is closed", reason="SHUTTING_DOWN")
        return connection

    # -- commits from every replica ------------------------------------------

    def listen(self) -> None:
        """Feed ``commits`` from NOTIFY (every append's statement trigger), so
        commits through any replica wake this process's readers. Idempotent."""
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen(), name="chronicle-listen")

    async def _listen(self) -> None:
        delay = 0.2
        while not self._closed:

            def notified(channel: str, payload: str) -> None:
                if payload.isdigit():
                    self.commits.notify(int(payload))

            connection: PipelinedConnection | None = None
            try:
                await self._ensure_schema()
                connection = await PipelinedConnection.connect(
                    self._url, connect_timeout=self._connect_timeout, options=self._options, on_notify=notified
                )
                # Commits between a reader's last look and this LISTEN sent
                # their NOTIFY to nobody: the log's end covers them.
                results = await connection.run([Statement(sql.LISTEN.encode()), Statement(sql.LOG_HEAD.encode())])
                self.commits.notify(int(results[1].get_value(0, 0) or b"0"))
                delay = 0.2
                await connection.lost()
            except (psycopg.Error, StoreUnavailable, OSError) as error:
                log.debug("LISTEN connection lost (%s); reconnecting in %.1fs", error, delay)
            except Exception:
                # Anything else (a schema this server cannot use, a bug):
                # readers fall back to polling meanwhile, so say why, and
                # keep trying as for a lost connection.
                log.exception("LISTEN for commits failed; trying again in %.1fs", delay)
            finally:
                if connection is not None:
                    await connection.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def session_options(*, lock_timeout: float, read_only: bool = False) -> str:
    """Settings of every connection the store opens (libpq ``options``).

    ``lock_timeout``: a statement waiting on a lock (the position lock behind
    a stuck transaction) must not stall every writer. ``jit=off``: the store's
    statements are short, and a plan whose estimated cost crosses the JIT
    threshold (a log page's, whose sorting is priced out on purpose: see
    sql.LOG_PAGE_SETTINGS) would spend ~100 ms compiling itself for a
    sub-millisecond query. ``read_only``: every transaction is (a backup's
    source: PostgreSQL itself then refuses any write, should one be sent).
    """
    options = f"-c lock_timeout={int(lock_timeout * 1000)} -c jit=off"
    return options + " -c default_transaction_read_only=on" if read_only else options


class _Pool:
    """Connections of one kind (reads or writes), opened as they are needed."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.connections: list[PipelinedConnection] = []
        self._connecting: asyncio.Task[PipelinedConnection] | None = None

    def pick(self, connect: Callable[[], Awaitable[PipelinedConnection]]) -> PipelinedConnection | None:
        """The live connection with the fewest operations in flight; opens
        another in the background when every one is busy."""
        best: PipelinedConnection | None = None
        dead = False
        for connection in self.connections:
            if connection.broken:
                dead = True
            elif best is None or connection.in_flight < best.in_flight:
                best = connection
        if dead:
            self.connections = [c for c in self.connections if not c.broken]
        if best is not None and best.in_flight >= _BUSY and len(self.connections) < self.size:
            self.grow(connect)
        return best

    def grow(self, connect: Callable[[], Awaitable[PipelinedConnection]]) -> asyncio.Task[PipelinedConnection]:
        """One more connection; one attempt at a time."""
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._open(connect), name="chronicle-pg-connect")
            self._connecting.add_done_callback(_observed)
        return self._connecting

    async def _open(self, connect: Callable[[], Awaitable[PipelinedConnection]]) -> PipelinedConnection:
        connection = await connect()
        self.connections.append(connection)
        return connection

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
        for connection in self.connections:
            await connection.close()
        self.connections.clear()


def _observed(task: asyncio.Task[PipelinedConnection]) -> None:
    # A failed background attempt is reported to whoever awaits it; nobody
    # may (the pool was only growing), so mark it seen.
    if not task.cancelled():
        task.exception()


def _where(url: str) -> str:
    """Where ``url`` connects, as migrations.described names a connection:
    postgresql://user@host:port/database, no password, no parameters."""
    params = psycopg.conninfo.conninfo_to_dict(url)  # checked by _check_url
    return (
        f"postgresql://{params.get('user', '')}@{params.get('host', '')}:{params.get('port', '5432')}"
        f"/{params.get('dbname', '')}"
    )


_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


def _check_url(url: str) -> None:
    """Refuse a URL libpq would only refuse later, on every reconnection."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as error:
        raise ConfigurationError(f"malformed PostgreSQL URL: {error}", reason="BAD_DATABASE_URL") from None
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in _SSL_MODES:
        raise ConfigurationError(
            f"malformed PostgreSQL URL: sslmode {sslmode!r} is none of {', '.join(sorted(_SSL_MODES))}",
            reason="BAD_DATABASE_URL",
        )
    ports = str(params.get("port") or "5432").split(",")
    if not all(port.strip().isdigit() for port in ports):
        raise ConfigurationError(
            f"malformed PostgreSQL URL: port {params.get('port')!r} is not a number", reason="BAD_DATABASE_URL"
        )
