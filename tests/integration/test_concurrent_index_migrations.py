"""A ``-- concurrently`` migration (index_builds.py; migration 25, the
indexes of aggregate ids in the "C" collation) builds its indexes while
writes go on, repairs the INVALID index an interrupted build left, records
its version only once its indexes are valid, and replicas migrating at once
still migrate once, without a deadlock between the build and the replica
waiting for the migration lock.

Deterministic through locks, not time: a write left uncommitted (a
transaction that inserted an event) holds the build in its first wait
(CREATE INDEX CONCURRENTLY waits for the writes in flight when it starts),
for as long as the test wants, and what each backend waits on is read
from pg_stat_activity."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import psycopg
import pytest

from service.errors import ConfigurationError
from service.store import sql_common
from service.store.postgres import migrations as pg_migrations
from service.store.postgres.index_builds import index_builds
from service.store.sql_common import Migration
from tests.support.schema_versions import DatabaseAt
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

MIGRATIONS = pg_migrations.known_migrations()
NEWEST = MIGRATIONS[-1].version
CODE_POINTS = 25  # the migration that builds the "C"-collation indexes
INDEXES = ("events_aggregate_id_code_points", "data_keys_live_code_points")
CLAIMS_CODE_POINTS = 30  # tenants' claims by scope in the "C" collation (claim_scopes.py)

_INSERT_EVENT = (
    "INSERT INTO chronicle.events (position, event_id, aggregate_id, aggregate_type, version, event_type,"
    " schema_version, payload, command_id, user_id, origin, correlation_id, causation_id, recorded_at)"
    " VALUES (%s, gen_random_uuid(), %s, 'test.Thing', 1, 'test.Happened', 1, '\\x00', %s, '', '', '', '', now())"
)


async def connect(url: str) -> psycopg.AsyncConnection[object]:
    conn: psycopg.AsyncConnection[object] = await psycopg.AsyncConnection.connect(url, autocommit=True)
    return conn


@contextlib.asynccontextmanager
async def write_in_flight(url: str) -> AsyncIterator[psycopg.AsyncConnection[object]]:
    """A transaction that appended an event and commits when the block ends."""
    conn = await psycopg.AsyncConnection.connect(url)
    try:
        await conn.execute(_INSERT_EVENT, (10_000_001, "in-flight", "c-in-flight"))
        yield conn
        await conn.commit()
    finally:
        await conn.close()


async def waits_on(admin: psycopg.AsyncConnection[object], pid: int) -> tuple[str, str] | None:
    """What backend ``pid`` waits on (wait_event_type, its query), if a lock."""
    cursor = await admin.execute(
        "SELECT wait_event_type, query FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'", (pid,)
    )
    row = await cursor.fetchone()
    return None if row is None else (str(row[0]), str(row[1]))  # type: ignore[index]


async def index_state(url: str) -> dict[str, tuple[int, bool]]:
    """Each of migration 25's indexes present: (its oid, whether valid)."""
    async with await connect(url) as conn:
        cursor = await conn.execute(
            "SELECT c.relname, c.oid, i.indisvalid FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid"
            " WHERE c.relnamespace = 'chronicle'::regnamespace AND c.relname = ANY(%s)",
            (list(INDEXES),),
        )
        return {str(r[0]): (int(r[1]), bool(r[2])) for r in await cursor.fetchall()}  # type: ignore[index]


async def versions(url: str) -> list[int]:
    async with await connect(url) as conn:
        cursor = await conn.execute("SELECT version FROM chronicle.schema_migrations ORDER BY version")
        return [int(r[0]) for r in await cursor.fetchall()]  # type: ignore[index]


def migrating(conn: psycopg.AsyncConnection[object]) -> asyncio.Task[int]:
    return asyncio.create_task(pg_migrations.migrate(conn))


async def building(admin: psycopg.AsyncConnection[object], conn: psycopg.AsyncConnection[object]) -> None:
    """Until the migration on ``conn`` is held in its index build (by the write in flight)."""

    async def held() -> bool:
        waiting = await waits_on(admin, conn.info.backend_pid)
        return waiting is not None and "CREATE INDEX" in waiting[1]

    await eventually(held, what="the index build waiting for the write in flight")


async def test_migration_25_builds_valid_indexes_and_then_records_its_version(postgres_at: DatabaseAt) -> None:
    url = await postgres_at(CODE_POINTS - 1, filled=True)
    async with await connect(url) as conn:
        assert await pg_migrations.migrate(conn) == NEWEST
    assert {name: valid for name, (_, valid) in (await index_state(url)).items()} == dict.fromkeys(INDEXES, True)
    assert await versions(url) == list(range(1, NEWEST + 1))
    async with await connect(url) as conn:
        cursor = await conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'chronicle' AND indexname = ANY(%s) ORDER BY 1",
            (list(INDEXES),),
        )
        definitions = [str(r[0]) for r in await cursor.fetchall()]  # type: ignore[index]
    # The same indexes 0.2.0's 0025 built in its transaction: a database migrated by either is alike.
    assert definitions == [
        'CREATE INDEX data_keys_live_code_points ON chronicle.data_keys USING btree (aggregate_id COLLATE "C")'
        " WHERE (wrapped_key IS NOT NULL)",
        'CREATE INDEX events_aggregate_id_code_points ON chronicle.events USING btree (aggregate_id COLLATE "C")',
    ]


async def test_writes_go_on_while_migration_25_builds_its_index(postgres_at: DatabaseAt) -> None:
    """A plain CREATE INDEX queues for a SHARE lock on events behind the
    write in flight, and every later write queues behind it; a concurrent
    build holds only SHARE UPDATE EXCLUSIVE, which writes do not wait for."""
    url = await postgres_at(CODE_POINTS - 1, filled=True)
    async with await connect(url) as admin, await connect(url) as writer, await connect(url) as conn:
        async with write_in_flight(url):
            migration = migrating(conn)
            await building(admin, conn)
            write = asyncio.create_task(writer.execute(_INSERT_EVENT, (10_000_002, "during-build", "c-during")))

            async def written_or_blocked() -> bool:
                return write.done() or await waits_on(admin, writer.info.backend_pid) is not None

            await eventually(written_or_blocked, what="the write done or waiting on a lock")
            assert write.done(), "a write waits on a lock while the index builds"
            await write
            assert not migration.done()  # the build still waits for the write in flight
            assert await versions(url) == list(range(1, CODE_POINTS))
        # the write in flight committed: the build ends
        assert await asyncio.wait_for(migration, 60) == NEWEST
    assert all(valid for _, valid in (await index_state(url)).values())
    async with await connect(url) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM chronicle.events WHERE aggregate_id COLLATE \"C\" >= 'during-build'"
            " AND aggregate_id COLLATE \"C\" < 'during-builf'"
        )
        assert await cursor.fetchone() == (1,)


async def test_an_invalid_index_an_interrupted_build_left_is_rebuilt_by_the_next_run(
    postgres_at: DatabaseAt, caplog: pytest.LogCaptureFixture
) -> None:
    url = await postgres_at(CODE_POINTS - 1, filled=True)
    async with await connect(url) as admin:
        async with write_in_flight(url), await connect(url) as conn:
            migration = migrating(conn)
            await building(admin, conn)
            # The replica migrating is killed mid-build (a pod evicted, its connection lost).
            await admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
            with pytest.raises(psycopg.OperationalError):
                await migration
        left = await index_state(url)
        assert left == {INDEXES[0]: (left[INDEXES[0]][0], False)}, "the build left its index INVALID"
        assert await versions(url) == list(range(1, CODE_POINTS)), "the version was recorded before the index"

        caplog.set_level(logging.WARNING, logger="service.store.postgres.index_builds")
        async with await connect(url) as conn:
            assert await pg_migrations.migrate(conn) == NEWEST
    rebuilt = await index_state(url)
    assert {name: valid for name, (_, valid) in rebuilt.items()} == dict.fromkeys(INDEXES, True)
    assert rebuilt[INDEXES[0]][0] != left[INDEXES[0]][0], "the INVALID index was dropped and built again"
    assert await versions(url) == list(range(1, NEWEST + 1))
    assert any(f"INVALID index chronicle.{INDEXES[0]}" in r.getMessage() for r in caplog.records)


async def test_replicas_migrating_at_once_migrate_once_around_a_concurrent_build(
    postgres_at: DatabaseAt, caplog: pytest.LogCaptureFixture
) -> None:
    """The second replica waits for the lock without holding a snapshot:
    blocked in pg_advisory_lock it would hold one, the build would wait for
    it to end while it waits for the build's lock, and PostgreSQL would
    abort one of them as a deadlock."""
    caplog.set_level(logging.INFO, logger="service.store.postgres.migrations")
    url = await postgres_at(CODE_POINTS - 1, filled=True)
    async with await connect(url) as admin, await connect(url) as first_conn, await connect(url) as second_conn:
        async with write_in_flight(url):
            first = migrating(first_conn)
            await building(admin, first_conn)
            second = migrating(second_conn)
            await eventually(
                lambda: any("another replica is migrating" in r.getMessage() for r in caplog.records),
                what="the second replica waiting for the migration lock",
            )
            assert not second.done()
        # the write in flight committed: the build ends, then the second replica finds nothing to do
        assert await asyncio.wait_for(first, 60) == NEWEST
        assert await asyncio.wait_for(second, 60) == NEWEST
    assert await versions(url) == list(range(1, NEWEST + 1))
    assert all(valid for _, valid in (await index_state(url)).values())


def test_a_concurrently_migration_holds_only_index_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """It runs outside a transaction: a table change in it would be half
    applied when a later statement failed, so it is refused at start."""
    assert [build.name for build in index_builds(MIGRATIONS[CODE_POINTS - 1]) or []] == list(INDEXES)
    assert [build.name for build in index_builds(MIGRATIONS[CLAIMS_CODE_POINTS - 1]) or []] == [
        "claims_per_tenant_code_points"
    ]
    assert all(index_builds(m) is None for m in MIGRATIONS if m.version not in (CODE_POINTS, CLAIMS_CODE_POINTS))
    mixed = Migration(
        NEWEST + 1,
        "mixed",
        "-- concurrently\nCREATE INDEX CONCURRENTLY IF NOT EXISTS x ON chronicle.events (event_type);\n"
        "ALTER TABLE chronicle.events ADD COLUMN note text;\n",
        NEWEST + 1,
    )
    with pytest.raises(ConfigurationError, match=r"ALTER TABLE chronicle\.events ADD COLUMN note"):
        index_builds(mixed)
    monkeypatch.setattr(sql_common, "known_migrations", lambda package: [*MIGRATIONS, mixed])
    with pytest.raises(ConfigurationError, match=f"{NEWEST + 1:04d}_mixed says `-- concurrently`"):
        pg_migrations.known_migrations()  # at start, before any migration runs
    blocking = Migration(NEWEST + 1, "blocking", "-- concurrently\nCREATE INDEX x ON chronicle.events (event_type);", 1)
    with pytest.raises(ConfigurationError, match=r"CREATE INDEX x"):
        index_builds(blocking)
