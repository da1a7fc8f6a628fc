"""Versioned SQL migrations for the PostgreSQL store.

Files ``migrations/NNNN_name.sql`` are applied in order, each once, under
an advisory lock, so several replicas starting at the same moment migrate
exactly once and the others wait and then find nothing to do. The
migrations due run in one transaction, but for a ``-- concurrently`` one,
which builds indexes outside any (index_builds.py): the runs before and
after it are a transaction each. A database whose schema is newer than
every migration this code knows is refused: running old code on a new
schema could corrupt it.
So is one that takes no writes (a hot standby, in recovery, or a database
read only by default): it cannot be the store, only a read database
(``--read-database-url``, standby.py).

``open_schema`` reads the version first and runs DDL only when there is a
migration to apply, so a server on a current schema needs no more than
the rights to read and write rows (docs/deployment.md), and a backup
(``SchemaUse.READ_ONLY``) changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import psycopg

from service.errors import ConfigurationError
from service.store import sql_common
from service.store.grouping import GROUP_LEASE_PREFIX
from service.store.postgres.index_builds import build_index, index_builds
from service.store.schema_use import SchemaUse, needs_migrating
from service.store.sql_common import Migration

log = logging.getLogger(__name__)
SCHEMA = "chronicle"
# The advisory lock's key: any constant unlikely to collide with an application's.
MIGRATION_LOCK = 0x43_48_52_4F_4E  # "CHRON"
# How often a replica asks again for the lock another one migrates under.
LOCK_POLL_SECONDS = 0.2


def known_migrations() -> list[Migration]:
    """The migration scripts, in order; a ``-- concurrently`` one that
    holds more than index builds is refused here, at start."""
    migrations = sql_common.known_migrations("service.store.postgres")
    for migration in migrations:
        index_builds(migration)
    return migrations


async def open_schema(conn: psycopg.AsyncConnection[object], use: SchemaUse, *, force: bool = False) -> int:
    """Check the schema as ``use`` needs it, migrating it only when it is
    older and ``use`` is ``MIGRATE``; return its version. Reads alone, but
    for the migration itself, so a role with the rights to read and write
    rows only serves a current schema. A right missing is one line
    (``DATABASE_PERMISSION_DENIED``) naming what each role needs."""
    try:
        if use is not SchemaUse.READ_ONLY:
            async with conn.transaction():
                await _refuse_read_only(conn)
        found, floor = await schema_state(conn)
    except psycopg.errors.InsufficientPrivilege as error:
        raise permission_denied(conn, error, migrating=False) from error
    where = f"the database {described(conn)}"
    if needs_migrating(found, known_migrations()[-1].version, use, where, compatible_from=floor):
        try:
            found = await migrate(conn, force=force)
        except psycopg.errors.InsufficientPrivilege as error:
            raise permission_denied(conn, error, migrating=True) from error
    await _refuse_missing_rights(conn, use)
    return found


# Each table and sequence of the schema that the connected role lacks a
# right on that ``use`` needs (partitions are reached through their parent,
# whose rights count). has_table_privilege with several rights answers
# whether any is held: each is asked on its own.
_MISSING_RIGHTS = f"""
SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = '{SCHEMA}' AND NOT c.relispartition AND (
    (c.relkind IN ('r', 'p') AND NOT (has_table_privilege(c.oid, 'SELECT')
        AND (%(reading)s OR c.relname = 'schema_migrations' OR (has_table_privilege(c.oid, 'INSERT')
            AND has_table_privilege(c.oid, 'UPDATE') AND has_table_privilege(c.oid, 'DELETE')))))
    OR (c.relkind = 'S' AND NOT %(reading)s AND NOT (has_sequence_privilege(c.oid, 'USAGE')
        AND has_sequence_privilege(c.oid, 'SELECT') AND has_sequence_privilege(c.oid, 'UPDATE'))))
ORDER BY c.relname
"""


async def _refuse_missing_rights(conn: psycopg.AsyncConnection[object], use: SchemaUse) -> None:
    """Refuse to start, naming them, when the role lacks a right on a table
    or sequence: a table a later migration added, granted to the migrating
    role only, would otherwise fail the first call that reaches it, at any
    hour (a reaction's parked commands, a group's first delivery). A
    backup (``READ_ONLY``) needs ``SELECT`` on the tables alone."""
    cursor = await conn.execute(_MISSING_RIGHTS, {"reading": use is SchemaUse.READ_ONLY})
    missing = [str(row[0]) for row in await cursor.fetchall()]  # type: ignore[index]
    if not missing:
        return
    shown = ", ".join(f"{SCHEMA}.{name}" for name in missing[:10]) + (" and more" if len(missing) > 10 else "")
    needs = (
        "a backup needs SELECT on the tables of schema chronicle"
        if use is SchemaUse.READ_ONLY
        else "serving needs SELECT, INSERT, UPDATE, DELETE on the tables of schema chronicle and USAGE, SELECT,"
        " UPDATE on its sequences: grant them again after each migration that adds tables, or once with ALTER"
        " DEFAULT PRIVILEGES"
    )
    raise ConfigurationError(
        f"the database {described(conn)} gives user {conn.info.user} too few rights on {shown}; {needs}"
        f' (docs/deployment.md, "Database roles")',
        reason="DATABASE_PERMISSION_DENIED",
        metadata={"relations": ",".join(missing)},
    )


def permission_denied(
    conn: psycopg.AsyncConnection[object], error: psycopg.Error, *, migrating: bool
) -> ConfigurationError:
    """PostgreSQL refused the store's role a right: which, and what each role needs."""
    needs = (
        "migrating needs the right to change the schema (the owner of schema chronicle, and CREATE on the"
        " database for a new one): run `chronicle migrate --database-url …` as the owner, and serve with"
        " --migrate=never"
        if migrating
        else "serving needs USAGE on schema chronicle, SELECT, INSERT, UPDATE, DELETE on its tables and USAGE,"
        " SELECT, UPDATE on its sequences"
    )
    return ConfigurationError(
        f"the database {described(conn)} refused user {conn.info.user}: {error.diag.message_primary or error};"
        f' {needs} (docs/deployment.md, "Database roles")',
        reason="DATABASE_PERMISSION_DENIED",
    )


async def schema_state(conn: psycopg.AsyncConnection[object]) -> tuple[int, int | None]:
    """The schema's version as it is (0: no Chronicle schema yet) and its
    compatibility floor (None: not recorded, by a Chronicle from before
    floors), changing nothing. ``to_jsonb``: the floor's column is added
    by the first migration a floor-aware Chronicle applies, so it may be
    missing."""
    cursor = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.schema_migrations",))
    row = await cursor.fetchone()
    if not (row and row[0]):  # type: ignore[index]
        return 0, None
    cursor = await conn.execute(
        f"SELECT version, (to_jsonb(m) ->> 'compatible_from')::integer FROM {SCHEMA}.schema_migrations AS m"
        " ORDER BY version DESC LIMIT 1"
    )
    row = await cursor.fetchone()
    if row is None:
        return 0, None
    return int(row[0]), None if row[1] is None else int(row[1])  # type: ignore[index]


async def migrate(conn: psycopg.AsyncConnection[object], *, target: int | None = None, force: bool = False) -> int:
    """Bring the schema up to date (or, for the tests that build a database
    as an earlier Chronicle left it, up to version ``target``); return its
    version. Each migration's row records its compatibility floor. One
    that raises the floor is refused while live replicas run code below it
    (``refuse_stranding``), unless ``force``. ``conn`` in autocommit: a
    ``-- concurrently`` migration builds its indexes outside a transaction
    (index_builds.py); the migrations due around it run in a transaction
    each run of them, as all of them did before."""
    if not conn.autocommit:
        raise ValueError("migrate needs an autocommit connection: CREATE INDEX CONCURRENTLY runs outside transactions")
    migrations = known_migrations()
    async with migration_lock(conn):
        async with conn.transaction():
            await _refuse_read_only(conn)
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await conn.execute(
                f"ALTER TABLE {SCHEMA}.schema_migrations ADD COLUMN IF NOT EXISTS compatible_from integer"
            )
            current, floor = await schema_state(conn)  # again, under the lock: another replica may have migrated
            newest = migrations[-1].version if migrations else 0
            if not needs_migrating(
                current, newest, SchemaUse.MIGRATE, f"the database {described(conn)}", compatible_from=floor
            ):
                return current
            wanted = newest if target is None else min(target, newest)
            if not force and wanted > current:
                await refuse_stranding(conn, current, migrations[wanted - 1].compatible_from)
            runs = _runs(migrations[current:wanted])
            if runs and index_builds(runs[0][0]) is None:
                await _apply(conn, runs.pop(0))  # in this transaction (a savepoint): all or nothing, as before
        for run in runs:
            await _apply(conn, run)
        return max(current, wanted)


def _runs(due: list[Migration]) -> list[list[Migration]]:
    """The migrations due, in order, cut around each ``-- concurrently``
    one: it runs alone, the others in one transaction per run of them."""
    runs: list[list[Migration]] = []
    for migration in due:
        if runs and index_builds(migration) is None and index_builds(runs[-1][-1]) is None:
            runs[-1].append(migration)  # in the transaction of the ones before it
        else:
            runs.append([migration])
    return runs


async def _apply(conn: psycopg.AsyncConnection[object], run: list[Migration]) -> None:
    """A run of migrations: a ``-- concurrently`` one's indexes built, then
    its version recorded (so a build interrupted is done again by the next
    run); the others, and their versions, in one transaction."""
    builds = index_builds(run[0])
    if builds is not None:
        log.info("applying PostgreSQL migration %04d_%s (concurrently)", run[0].version, run[0].name)
        for index in builds:
            await build_index(conn, index)
        async with conn.transaction():
            await _record(conn, run[0])
        return
    async with conn.transaction():
        for migration in run:
            log.info("applying PostgreSQL migration %04d_%s", migration.version, migration.name)
            await conn.execute(migration.sql.encode())
            await _record(conn, migration)


async def _record(conn: psycopg.AsyncConnection[object], migration: Migration) -> None:
    await conn.execute(
        f"INSERT INTO {SCHEMA}.schema_migrations (version, name, compatible_from) VALUES (%s, %s, %s)",
        (migration.version, migration.name, migration.compatible_from),
    )


@contextlib.asynccontextmanager
async def migration_lock(conn: psycopg.AsyncConnection[object]) -> AsyncIterator[None]:
    """Hold the migration lock (session level, so it spans the transactions
    and the index builds of one migration run) while the block runs.

    Waited for by asking again every ``LOCK_POLL_SECONDS``, never by
    blocking in ``pg_advisory_lock``: a session blocked there keeps a
    snapshot, and CREATE INDEX CONCURRENTLY waits for every snapshot older
    than its own to end, while that session waits for the builder's lock:
    a deadlock, which PostgreSQL breaks by aborting one of them. An older
    Chronicle (0.2.0) takes ``pg_advisory_xact_lock`` on the same key, which
    excludes this one and the other way round, but waits blocked: one
    starting from a schema below 25 while this one builds may be that
    deadlock's victim, or make the build its victim (the index is then
    INVALID, the version not recorded, and the next run builds it again)."""
    waiting = False
    while not await _took_lock(conn):
        if not waiting:
            log.info("another replica is migrating the database %s; waiting for it", described(conn))
            waiting = True
        await asyncio.sleep(LOCK_POLL_SECONDS)
    try:
        yield
    finally:
        # A connection lost took its session's lock with it.
        with contextlib.suppress(psycopg.Error):
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


async def _took_lock(conn: psycopg.AsyncConnection[object]) -> bool:
    cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK,))
    row = await cursor.fetchone()
    return bool(row and row[0])  # type: ignore[index]


# Live servers whose code knows a schema below a floor, read whatever the
# schema's version: the table comes with migration 10, its version columns
# with 22 (to_jsonb: a column missing reads as NULL, a member of a version
# from before them, whose schema is below any floor a later migration
# raises). Servers are the members of every lease group but subscription
# groups' (GROUP_LEASE_PREFIX): a group's members are its consumers, with
# no address nor version, whose servers are members of their own; named,
# each was a phantom replica of unknown version.
_LIVE_MEMBERS_BELOW = f"""
SELECT DISTINCT m.address, coalesce(to_jsonb(m) ->> 'version', ''),
    coalesce((to_jsonb(m) ->> 'schema_version')::integer, 0)
FROM {SCHEMA}.lease_members AS m
WHERE m.expires_at > now() AND coalesce((to_jsonb(m) ->> 'schema_version')::integer, 0) < %s
    AND left(m.lease_group, %s) <> %s
ORDER BY 1
"""


async def refuse_stranding(conn: psycopg.AsyncConnection[object], current: int, floor: int) -> None:
    """Refuse (``MIGRATION_UNDER_OLD_REPLICAS``) to raise the schema's
    compatibility floor to ``floor`` while a live replica (a lease member
    that beat within its lease time) runs code that knows a schema below
    it: it would fail on the migrated schema, and refuse it when it
    restarts. A rolling upgrade across such a migration stops the old
    replicas first (deployment.md); ``--migrate=force`` (``chronicle migrate
    --force``) applies it all the same."""
    if floor <= current:
        return  # additive all the way: the old code runs on the result
    cursor = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.lease_members",))
    row = await cursor.fetchone()
    if not (row and row[0]):  # type: ignore[index]
        return
    cursor = await conn.execute(_LIVE_MEMBERS_BELOW.encode(), (floor, len(GROUP_LEASE_PREFIX), GROUP_LEASE_PREFIX))
    stranded = [(str(r[0]), str(r[1]), int(r[2])) for r in await cursor.fetchall()]  # type: ignore[index]
    if not stranded:
        return
    named = "; ".join(
        f"{address} (version {version or 'older than 0.2.0'}, schema {schema or 'unknown'})"
        for address, version, schema in stranded[:10]
    ) + (f"; and {len(stranded) - 10} more" if len(stranded) > 10 else "")
    raise ConfigurationError(
        f"the database {described(conn)} is at schema version {current}, and the migrations due raise its"
        f" compatibility floor to {floor}, which live replicas run below: {named}. Stop them first (their"
        " membership lapses a lease time after they stop), or apply it anyway with --migrate=force"
        ' (chronicle migrate --force); docs/deployment.md, "Upgrading and rolling back"',
        reason="MIGRATION_UNDER_OLD_REPLICAS",
        metadata={"replicas": ",".join(address for address, _, _ in stranded)},
    )


async def _refuse_read_only(conn: psycopg.AsyncConnection[object]) -> None:
    """Refuse a database that takes no writes, before the first DDL would
    fail with PostgreSQL's own words (``ReadOnlySqlTransaction``). In a
    transaction: ``transaction_read_only`` is then what it would be for the
    migrations (``default_transaction_read_only``, or on during recovery)."""
    cursor = await conn.execute("SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'")
    row = await cursor.fetchone()
    in_recovery, read_only = (bool(row[0]), bool(row[1])) if row else (False, False)  # type: ignore[index]
    if not (in_recovery or read_only):
        return
    why = (
        "is a hot standby (in recovery)"
        if in_recovery
        else "is read only (default_transaction_read_only is on for this database or user)"
    )
    raise ConfigurationError(
        f"the database {described(conn)} {why}: it takes no writes, so Chronicle cannot keep its store there."
        " --database-url must name the primary; a hot standby of it belongs in --read-database-url",
        reason="DATABASE_READ_ONLY",
    )


def described(conn: psycopg.AsyncConnection[object]) -> str:
    """Where ``conn`` is connected, as a URL without its password."""
    info = conn.info
    if info.host.startswith("/"):  # a Unix-domain socket's folder
        return f"postgresql://{info.user}@/{info.dbname}?host={info.host}&port={info.port}"
    host = f"[{info.host}]" if ":" in info.host else info.host
    return f"postgresql://{info.user}@{host}:{info.port}/{info.dbname}"
