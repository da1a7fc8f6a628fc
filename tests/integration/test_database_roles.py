"""Least privilege on PostgreSQL (docs/deployment.md, "Database roles"): the
owner migrates (`chronicle migrate`), a serving role with only the rights to
read and write rows serves everything on the current schema; a right
missing at start is one line naming it, not a traceback; `--migrate=never`
refuses an older schema and names `chronicle migrate`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from chronicle.v1 import projection_service_pb2 as pj
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.bank_account.read_model import owner_key
from service.client import ChronicleClient
from service.errors import ConfigurationError
from service.store.postgres import PostgresStore
from service.store.postgres.migrations import known_migrations
from service.store.schema_use import SchemaUse
from service.store.sqlite.migrations import SCHEMA_VERSION
from tests.support.grpc_client import command, running_server
from tests.support.postgres import Cluster
from tests.support.processes import free_port
from tests.support.schema_versions import DatabaseAt, build_sqlite
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

NEWEST = known_migrations()[-1].version
SERVING_GRANTS = (
    "GRANT USAGE ON SCHEMA chronicle TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA chronicle TO {role}",
    "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA chronicle TO {role}",
)


@pytest.fixture
def roles(pg_cluster: Cluster) -> Iterator[tuple[str, str, str]]:
    """(an owner's URL, a serving role's URL, the serving role) on a new
    database the owner owns; the serving role has no right on it yet."""
    tag = uuid.uuid4().hex[:8]
    owner, serving, database = f"chron_owner_{tag}", f"chron_app_{tag}", f"chron_roles_{tag}"
    with psycopg.connect(pg_cluster.admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {owner} LOGIN")
        conn.execute(f"CREATE ROLE {serving} LOGIN")
        conn.execute(f"CREATE DATABASE {database} OWNER {owner}")
        conn.execute(f"REVOKE ALL ON DATABASE {database} FROM PUBLIC")
        conn.execute(f"GRANT CONNECT ON DATABASE {database} TO {serving}")
    url = pg_cluster.url_for(database)
    try:
        yield url.replace("postgres@", f"{owner}@", 1), url.replace("postgres@", f"{serving}@", 1), serving
    finally:
        with psycopg.connect(pg_cluster.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {database} WITH (FORCE)")
            conn.execute(f"DROP ROLE {serving}")
            conn.execute(f"DROP ROLE {owner}")


def migrate(url: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "service", "migrate", "--database-url", url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def serve_refused(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """A server that must not start: its exit and what it said."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "serve",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--database-url",
            url,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.postgres
async def test_a_role_with_only_row_rights_serves_everything_after_the_owner_migrates(
    roles: tuple[str, str, str],
) -> None:
    owner_url, serving_url, serving = roles
    assert (await asyncio.to_thread(migrate, owner_url))["schema_version"] == NEWEST
    assert (await asyncio.to_thread(migrate, owner_url))["schema_version"] == NEWEST  # idempotent
    with psycopg.connect(owner_url, autocommit=True) as conn:
        for grant in SERVING_GRANTS:
            conn.execute(grant.format(role=serving))

    store = PostgresStore(serving_url, pool_size=4)  # --migrate=auto: a current schema needs no DDL
    await store.open()
    try:
        async with (
            running_server(store, anonymous_admin=True, poll_seconds=0.05, lease_seconds=30.0) as (app, raw),
            ChronicleClient.connect(app.address) as client,
        ):
            await client.groups.create("billing", segments=1)
            opened = await raw.submit(command("acc-1", bank.OpenAccount(owner="ann")))
            await raw.submit(command("acc-1", bank.Deposit(amount=5)))
            position = opened.events[0].position

            subscription = client.subscribe()
            first = await asyncio.wait_for(anext(aiter(subscription)), 20)
            assert first.position == position

            document = await raw.projections.GetDocument(
                pj.GetDocumentRequest(projection="bank.balances_by_owner", key=owner_key("ann"), min_position=2),
                timeout=20,
            )
            balance = bank.OwnerBalance()
            assert document.document.Unpack(balance) and document.position >= 2

            async def two_consumed() -> list[str]:
                taken: list[str] = []
                async with client.consume("billing", consumer="c1") as deliveries:
                    async for delivery in deliveries:
                        await delivery.ack()
                        taken.append(delivery.event.event_id)
                        if len(taken) == 2:
                            return taken
                return taken

            assert len(await asyncio.wait_for(two_consumed(), 30)) == 2

            async def acknowledged() -> bool:  # the acks written by the serving role
                return (await client.groups.get("billing")).position == 2

            await eventually(acknowledged, what="the group's checkpoint at 2")
    finally:
        await store.close()


@pytest.mark.postgres
async def test_a_right_missing_at_start_is_one_line_naming_it(roles: tuple[str, str, str]) -> None:
    owner_url, serving_url, _ = roles
    await asyncio.to_thread(migrate, owner_url)
    refused = await asyncio.to_thread(serve_refused, serving_url)  # no grant on schema chronicle
    assert refused.returncode != 0
    assert "DATABASE_PERMISSION_DENIED" in refused.stderr
    assert "serving needs USAGE on schema chronicle, SELECT, INSERT, UPDATE, DELETE on its tables" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.postgres
async def test_a_table_the_serving_role_was_not_granted_refuses_the_start_naming_it(
    roles: tuple[str, str, str],
) -> None:
    """As after a migration that added a table, granted to the owner only:
    the start is refused naming it, not the first call that reaches it
    hours later (here a reaction's parked commands, a sequence's rows)."""
    owner_url, serving_url, serving = roles
    await asyncio.to_thread(migrate, owner_url)
    with psycopg.connect(owner_url, autocommit=True) as conn:
        for grant in SERVING_GRANTS:
            conn.execute(grant.format(role=serving))
        conn.execute(f"REVOKE DELETE ON chronicle.subscription_groups FROM {serving}")
        conn.execute(f"REVOKE UPDATE ON ALL SEQUENCES IN SCHEMA chronicle FROM {serving}")
        sequences = [
            row[0]
            for row in conn.execute(
                "SELECT sequencename FROM pg_sequences WHERE schemaname = 'chronicle' ORDER BY sequencename"
            )
        ]
    refused = await asyncio.to_thread(serve_refused, serving_url, "--migrate", "never")
    assert refused.returncode == 2, refused.stderr
    assert "DATABASE_PERMISSION_DENIED" in refused.stderr
    named = refused.stderr.partition("too few rights on ")[2].partition(";")[0]
    assert named.split(", ") == sorted(f"chronicle.{name}" for name in ["subscription_groups", *sequences])
    assert "Traceback" not in refused.stderr

    # A backup reads: SELECT is all it needs, and it has it.
    store = PostgresStore(serving_url, pool_size=1, use=SchemaUse.READ_ONLY)
    await store.open()
    await store.close()
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute(f"REVOKE SELECT ON chronicle.claims FROM {serving}")
    store = PostgresStore(serving_url, pool_size=1, use=SchemaUse.READ_ONLY)
    with pytest.raises(ConfigurationError, match=r"too few rights on chronicle\.claims; a backup needs SELECT"):
        await store.open()
    await store.close()


@pytest.mark.postgres
async def test_a_serving_role_cannot_migrate_and_says_who_can(roles: tuple[str, str, str]) -> None:
    _, serving_url, _ = roles
    refused = await asyncio.to_thread(serve_refused, serving_url)  # an empty database: there is DDL to do
    assert "DATABASE_PERMISSION_DENIED" in refused.stderr
    assert "run `chronicle migrate --database-url …` as the owner" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.postgres
async def test_never_migrate_refuses_an_older_postgres_schema_and_leaves_it(postgres_at: DatabaseAt) -> None:
    url = await postgres_at(NEWEST - 1, filled=False)
    refused = await asyncio.to_thread(serve_refused, url, "--migrate", "never")
    assert "SCHEMA_TOO_OLD" in refused.stderr
    assert "chronicle migrate --database-url" in refused.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT max(version) FROM chronicle.schema_migrations").fetchone() == (NEWEST - 1,)


def test_never_migrate_refuses_an_older_sqlite_file_until_it_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    build_sqlite(path, SCHEMA_VERSION - 1, filled=False)
    url = f"sqlite:///{path}"
    refused = serve_refused(url, "--migrate", "never")
    assert f"SCHEMA_TOO_OLD: {path} has schema version {SCHEMA_VERSION - 1}" in refused.stderr
    assert "chronicle migrate --database-url" in refused.stderr
    assert migrate(url) == {"database": url, "schema_version": SCHEMA_VERSION}
