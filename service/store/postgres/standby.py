"""Reads from a PostgreSQL hot standby (``--read-database-url``).

A streaming-replication standby replays the primary's write-ahead log in
order, and its snapshots show a prefix of the primary's commits. Chronicle's
positions become visible in commit order (the ``log_head`` row lock, see
sql.py), so a page of the log read on the standby, with the log's end from
the same snapshot, is exactly what it would have been on the primary a
moment earlier: a subscriber served by the standby never skips either. It is
only behind: by the replication lag (usually milliseconds; seconds or more
under load or after a network fault; without bound while the standby's
replay is paused).

``StandbyStore`` plays the read roles (aggregates, the log, snapshots) on
the standby. It never migrates (a standby is read only, and gets the schema
by replication): a standby whose schema is older than this code's waits for
replication to bring it, one newer is refused. ``LISTEN`` is not possible
during recovery, so ``wait_for_commit`` hears of commits from the primary's
notifications, then waits until the standby has replayed them.

Which database. Before its first read, the read database is checked against
the primary's (``--database-url``): a physical standby is a copy of the
primary's cluster, so it has the primary's system identifier
(``pg_control_system()``) and the database the primary's OID. Another
cluster, or another database of the same cluster (another Chronicle's, a
copy), differs in one of them, and is refused (``READ_DATABASE_MISMATCH``):
at start-up the server does not start; found when the read database is
first reached later, every read is refused until a restart. Where the user
may not call ``pg_control_system()`` only the OIDs are compared (a database
of another cluster with the same OID then goes unseen; said once in the log).

Availability. The server starts when the read database (or the primary, to
check it against) cannot be reached yet; reads answer ``UNAVAILABLE`` until
it can. Commands do not need it, so it does not change the server's health:
``StandbyStore`` pings it every ``watch_interval`` seconds and logs each
loss (WARNING) and each return (INFO) once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import psycopg

from service.errors import ChronicleError, ConfigurationError, StoreUnavailable
from service.store.postgres.database import Database, _check_url
from service.store.postgres.errors import translation
from service.store.postgres.events import EventsRole
from service.store.postgres.log import LogRole
from service.store.postgres.migrations import described, known_migrations, schema_state
from service.store.postgres.snapshots import SnapshotsRole
from service.store.postgres.store import PostgresStore
from service.store.probing import probe, why
from service.store.records import ClaimChange, CommandRecord, NewEvent, RecordedEvent, Snapshot
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# While the standby has not replayed a commit the primary announced, look
# again this often (replay takes milliseconds; there is no signal for it).
_REPLAY_POLL = (0.002, 0.05)

MISMATCH = "READ_DATABASE_MISMATCH"
NOT_READY = "READ_DATABASE_NOT_READY"
# Named in every log line about the read database.
_READS = "reads (ReadAggregate, GetAggregate, Subscribe)"


@dataclass(frozen=True)
class DatabaseIdentity:
    """Which database a connection reached: its cluster's system identifier
    (None: this user may not read it) and the database's OID and name. A
    physical standby shows its primary's."""

    where: str  # the URL, without its password
    system: int | None
    oid: int
    name: str

    def difference(self, primary: DatabaseIdentity) -> str | None:
        """How this (the read database) is certainly not ``primary`` or a
        physical standby of it; None: it may well be."""
        if self.system is not None and primary.system is not None and self.system != primary.system:
            return (
                f"it is another PostgreSQL cluster (system identifier {self.system}; the primary's is {primary.system})"
            )
        if self.oid != primary.oid:
            return (
                f"it is another database (database {self.name!r}, OID {self.oid}; the primary's is"
                f" {primary.name!r}, OID {primary.oid})"
            )
        return None


async def identity_of(conn: psycopg.AsyncConnection[object]) -> DatabaseIdentity:
    """The identity of the database ``conn`` (autocommit) is connected to."""
    cursor = await conn.execute("SELECT oid, datname FROM pg_database WHERE datname = current_database()")
    row = await cursor.fetchone()
    assert row is not None
    system: int | None = None
    try:
        cursor = await conn.execute("SELECT system_identifier FROM pg_control_system()")
        found = await cursor.fetchone()
        system = int(found[0]) if found is not None else None  # type: ignore[index]
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFunction):
        pass  # EXECUTE revoked from this user (or a server without it): the OID alone
    return DatabaseIdentity(described(conn), system, int(row[0]), str(row[1]))  # type: ignore[index]


class StandbyDatabase(Database):
    """A ``Database`` that checks the schema instead of migrating it, and
    that it is the primary's database (at ``primary_url``) or a standby of it."""

    def __init__(
        self, url: str, *, primary_url: str, connections: int, connect_timeout: float, lock_timeout: float
    ) -> None:
        super().__init__(url, connections=connections, connect_timeout=connect_timeout, lock_timeout=lock_timeout)
        self._primary_url = primary_url
        self._primary: DatabaseIdentity | None = None
        self._mismatch: str | None = None  # found to be another database: every read is refused
        self._unverified_said = False

    async def open(self) -> None:
        """Check the read database now: raise ``ConfigurationError`` if it
        is not the primary's, ``StoreUnavailable`` if it (or the primary)
        cannot tell yet."""
        _check_url(self._url)
        await self._ensure_schema()

    async def _ensure_schema(self, *, at_open: bool = False) -> None:
        """Check, once, that the read database is the primary's (it
        migrates nothing: ``at_open`` changes nothing here)."""
        if self._schema_ready:
            return
        if self._mismatch is not None:
            raise ConfigurationError(self._mismatch, reason=MISMATCH)  # a new one each time (tracebacks)
        if self._schema_lock is None:
            self._schema_lock = asyncio.Lock()
        async with self._schema_lock:
            if self._schema_ready:
                return
            await self._check()
            self._schema_ready = True

    async def _check(self) -> None:
        newest = known_migrations()[-1].version
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout))
            )
            async with conn:
                identity = await identity_of(conn)
                version, floor = await schema_state(conn)
        except Exception as error:
            translated = translation(error, "connect to the read database")
            if translated is None:
                raise
            raise translated from error
        primary = await self._primary_identity()
        difference = identity.difference(primary)
        if difference is not None:
            self._mismatch = (
                f"--read-database-url {identity.where} does not follow --database-url {primary.where}: {difference}."
                " Reads from it would answer from other data; give a hot standby of the primary's database"
                " (streaming replication, pg_basebackup -R), or no --read-database-url"
            )
            raise ConfigurationError(self._mismatch, reason=MISMATCH)
        if (identity.system is None or primary.system is None) and not self._unverified_said:
            self._unverified_said = True
            log.info(
                "the read database %s has the primary's database OID (%d), but whether it is the same PostgreSQL"
                " cluster is not known: this user may not call pg_control_system()",
                identity.where,
                identity.oid,
            )
        if version == 0:
            raise StoreUnavailable(
                "the read database has no Chronicle schema yet (is it a standby of the primary?)",
                reason=NOT_READY,
            )
        if version > newest and (version if floor is None else floor) > newest:  # compatible: schema_use.py
            raise ConfigurationError(
                f"the read database's schema is at version {version}, newer than this Chronicle knows ({newest})",
                reason="SCHEMA_TOO_NEW",
            )
        if version < newest:
            raise StoreUnavailable(
                f"the read database's schema is at version {version}, not yet {newest}: waiting for replication",
                reason=NOT_READY,
            )

    async def _primary_identity(self) -> DatabaseIdentity:
        """The primary's identity (asked once, on a connection of its own)."""
        if self._primary is None:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._primary_url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout))
                )
                async with conn:
                    self._primary = await identity_of(conn)
            except Exception as error:
                translated = translation(error, "connect to the primary")
                if not isinstance(translated, StoreUnavailable):
                    raise
                raise StoreUnavailable(
                    "the read database cannot be checked against the primary (--database-url) yet:"
                    f" {translated.message}",
                    reason=NOT_READY,
                    detail=translated.detail,
                ) from error
        return self._primary


class StandbyStore(EventsRole, LogRole, SnapshotsRole):
    """The read roles on a hot standby of ``primary``'s database. Writes
    (``append``, ``save_snapshot``) are never sent here.

    ``open`` raises ``ConfigurationError`` for a read database that is not
    the primary's (``READ_DATABASE_MISMATCH``) or has a newer schema; one
    that cannot be reached yet is logged, and reads wait for it. With
    ``watch_interval``, it is pinged that often from ``open`` to ``close``,
    and each loss and return is logged once (``check``)."""

    def __init__(
        self,
        url: str,
        *,
        primary: PostgresStore,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        lock_timeout: float = 5.0,
        watch_interval: float | None = None,
    ) -> None:
        self._db = StandbyDatabase(
            url,
            primary_url=primary.url,
            connections=pool_size,
            connect_timeout=connect_timeout,
            lock_timeout=lock_timeout,
        )
        self._primary = primary
        # A load looks for its snapshot among the newest the primary keeps.
        self._keep_snapshots = primary.keep_snapshots
        self._watch_interval = watch_interval
        self._watch: asyncio.Task[None] | None = None
        # What the log last said: available (True), not (False), refused
        # (a ConfigurationError: said once, for good), nothing yet (None).
        self._said: bool | str | None = None
        self._answered = False  # since open: "available again", or for the first time

    @property
    def url(self) -> str:
        return self._db.url

    async def open(self) -> None:
        try:
            await self._db.open()
        except StoreUnavailable as error:
            self._said = False
            log.warning(
                "the read database (--read-database-url) is not ready yet (%s); until it is, %s answer UNAVAILABLE,"
                " while commands go on and health stays SERVING",
                error.message,
                _READS,
            )
        else:
            self._said = self._answered = True
        if self._watch_interval is not None:
            self._watch = asyncio.get_running_loop().create_task(self._watching(), name="chronicle-read-database")

    async def close(self) -> None:
        await cancel_and_wait(self._watch, "the read database's watch", log)
        await self._db.close()

    async def ping(self) -> None:
        await self._db.ping()

    async def check(self) -> bool:
        """Ping the read database once, log what changed; return whether it answered."""
        failure = await probe(self.ping, within=max(self._watch_interval or 1.0, 1.0) * 2)
        if isinstance(failure, ConfigurationError):
            if self._said != failure.reason:
                self._said = failure.reason
                log.error(
                    "the read database is refused, and with it every read: %s: %s", failure.reason, failure.message
                )
            return False
        if failure is not None:
            self._lost(why(failure))
            return False
        if self._said is not True:
            if self._said is False:
                log.info(
                    "the read database (--read-database-url) is available%s; %s are served from it",
                    " again" if self._answered else "",
                    _READS,
                )
            self._said = True
        self._answered = True
        return True

    def _lost(self, why: str) -> None:
        if self._said is True or self._said is None:
            log.warning(
                "the read database (--read-database-url) is unavailable (%s); until it answers again, %s answer"
                " UNAVAILABLE, while commands go on and health stays SERVING",
                why,
                _READS,
            )
        self._said = False

    async def _watching(self) -> None:
        assert self._watch_interval is not None
        while True:
            await asyncio.sleep(self._watch_interval)
            await self.check()

    def append(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        commands: Sequence[CommandRecord] = (),
        claims: Sequence[ClaimChange] = (),
    ) -> Awaitable[list[RecordedEvent]]:
        raise _no_writes()

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        raise _no_writes()

    async def wait_for_commit(self, after_position: int, max_wait: float) -> None:
        """Return when the standby shows an event after ``after_position``
        (the primary announced it, and the standby replayed it), or after
        ``max_wait`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        await self._primary.wait_for_commit(after_position, max_wait)
        delay = _REPLAY_POLL[0]
        while loop.time() < deadline:
            if await self.log_head() > after_position:
                return
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, _REPLAY_POLL[1])


def _no_writes() -> ChronicleError:
    # A bug if it happens: the composition root sends writes to the primary.
    return ChronicleError("the read database (a standby) takes no writes", reason="READ_ONLY_DATABASE")
