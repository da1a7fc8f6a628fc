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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence

import psycopg

from service.errors import ChronicleError, ConfigurationError, StoreUnavailable
from service.store.postgres.database import Database
from service.store.postgres.errors import translation
from service.store.postgres.events import EventsRole
from service.store.postgres.log import LogRole
from service.store.postgres.migrations import SCHEMA, known_migrations
from service.store.postgres.snapshots import SnapshotsRole
from service.store.postgres.store import PostgresStore
from service.store.records import ClaimChange, CommandRecord, NewEvent, RecordedEvent, Snapshot

log = logging.getLogger(__name__)

# While the standby has not replayed a commit the primary announced, look
# again this often (replay takes milliseconds; there is no signal for it).
_REPLAY_POLL = (0.002, 0.05)


class StandbyDatabase(Database):
    """A ``Database`` that checks the schema instead of migrating it."""

    async def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        newest = known_migrations()[-1].version
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout))
            )
            async with conn:
                cursor = await conn.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA}.schema_migrations")
                row = await cursor.fetchone()
        except psycopg.errors.UndefinedTable:
            raise StoreUnavailable(
                "the read database has no Chronicle schema yet (is it a standby of the primary?)",
                reason="READ_DATABASE_NOT_READY",
            ) from None
        except Exception as error:
            translated = translation(error, "connect to the read database")
            if translated is None:
                raise
            raise translated from error
        version = int(row[0]) if row else 0
        if version > newest:
            raise ConfigurationError(
                f"the read database's schema is at version {version}, newer than this Chronicle knows ({newest})",
                reason="SCHEMA_TOO_NEW",
            )
        if version < newest:
            raise StoreUnavailable(
                f"the read database's schema is at version {version}, not yet {newest}: waiting for replication",
                reason="READ_DATABASE_NOT_READY",
            )
        self._schema_ready = True


class StandbyStore(EventsRole, LogRole, SnapshotsRole):
    """The read roles on a hot standby of ``primary``'s database. Writes
    (``append``, ``save_snapshot``) are never sent here."""

    def __init__(
        self,
        url: str,
        *,
        primary: PostgresStore,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        lock_timeout: float = 5.0,
    ) -> None:
        self._db = StandbyDatabase(
            url, connections=pool_size, connect_timeout=connect_timeout, lock_timeout=lock_timeout
        )
        self._primary = primary

    @property
    def url(self) -> str:
        return self._db.url

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    async def ping(self) -> None:
        await self._db.ping()

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
