"""Operating on PostgreSQL: opening an up-to-date or a too new schema, bad
URLs, a database that is missing at start-up, or goes away and comes back.
(Migrating an older database, also from several replicas at once:
test_migrations_over_data.py.)"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import start
from service.errors import ConfigurationError, StoreUnavailable, SubjectsForgotten
from service.store.postgres import PostgresStore, sql
from service.store.records import ClaimChange, DataKey, DocumentWrite, LogFilter, Snapshot
from tests.support.contents import contents
from tests.support.events import command_record, new_event
from tests.support.grpc_client import TEST_SETTINGS, command, connect, details_of
from tests.support.postgres import Cluster
from tests.support.processes import serve_until_exit
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres


async def test_opening_an_up_to_date_schema_changes_nothing(postgres_url: str) -> None:
    first = PostgresStore(postgres_url, pool_size=1)
    await first.open()
    email = ClaimChange("users.email", "ann@example.com")
    await first.append("u-1", [new_event()], 0, commands=[command_record("u-1", 1, 1)], claims=[email])
    await first.save_snapshot(Snapshot("u-1", "User", 1, "users.v1.User", 1, b"x"))
    await first.close()
    before = await contents(first)
    second = PostgresStore(postgres_url, pool_size=1)
    await second.open()
    try:
        await second.ping()
        assert (await contents(second)).changes_since(before) == {}  # schema, migrations and rows alike
    finally:
        await second.close()


async def test_a_schema_newer_than_the_code_is_refused(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, pool_size=1)
    await store.open()
    await store.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO chronicle.schema_migrations (version, name) VALUES (999, 'from_the_future')")
    newer = PostgresStore(postgres_url, pool_size=1)
    with pytest.raises(ConfigurationError) as raised:
        await newer.open()
    assert raised.value.reason == "SCHEMA_TOO_NEW"
    assert "999" in raised.value.message
    await newer.close()


async def test_a_malformed_url_is_refused_at_open() -> None:
    store = PostgresStore("postgresql://user@localhost:notaport/db")
    with pytest.raises(ConfigurationError) as raised:
        await store.open()
    assert raised.value.reason == "BAD_DATABASE_URL"


def test_the_server_exits_with_a_clear_message_on_a_malformed_url() -> None:
    result = serve_until_exit("--database-url", "postgresql://u@h:x/db")
    assert result.returncode != 0
    assert "malformed PostgreSQL URL" in result.stderr


async def _serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


async def test_a_database_missing_at_start_up_stops_it_and_a_restart_once_it_exists_serves(pg_cluster: Cluster) -> None:
    """A database that does not exist is a URL that cannot work (waiting on
    it used to serve NOT_SERVING for ever, the cause only in later
    warnings): the start stops with DATABASE_NOT_FOUND, and the start after
    the database is made serves (what a supervisor's restart does)."""
    name = "chronicle_appears_later"
    url = pg_cluster.url_for(name)
    settings = replace(TEST_SETTINGS, database_url=url, health_interval=0.1)
    with pytest.raises(ConfigurationError) as refused:
        await start(settings)
    assert refused.value.reason == "DATABASE_NOT_FOUND"
    with psycopg.connect(pg_cluster.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    app = await start(settings)
    try:
        assert await _serving(app.address)
        async with connect(app.address) as client:
            response = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
            assert response.version == 1
    finally:
        await app.stop(grace=1)
        pg_cluster.drop_database(url)


async def test_a_database_that_goes_away_and_comes_back_is_served_again_without_a_restart(
    private_cluster: Cluster,
) -> None:
    url = private_cluster.create_database()
    app = await start(replace(TEST_SETTINGS, database_url=url, health_interval=0.1))
    try:
        async with connect(app.address) as client:
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
            assert await _serving(app.address)

            private_cluster.stop("immediate")

            async def not_serving() -> bool:
                return not await _serving(app.address)

            await eventually(not_serving, what="NOT_SERVING while the database is gone")
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await client.submit(command("acc-1", bank.Deposit(amount=5)))
            details = details_of(raised.value)
            assert details.code == grpc.StatusCode.UNAVAILABLE
            assert details.retry

            private_cluster.start()
            await eventually(lambda: _serving(app.address), what="SERVING after the database came back")
            response = await client.submit(command("acc-1", bank.Deposit(amount=5)))
            assert response.version == 2
    finally:
        await app.stop(grace=1)


async def test_once_a_ping_succeeds_after_an_outage_every_path_serves_its_next_call(private_cluster: Cluster) -> None:
    store = PostgresStore(private_cluster.create_database(), pool_size=4)
    await store.open()
    await store.read_log(0, LogFilter(), 10)  # a pooled connection on each side
    await store.ping()
    private_cluster.stop("immediate")
    with pytest.raises(StoreUnavailable):
        await store.ping()
    private_cluster.start()
    await store.ping()  # what health reports SERVING on
    # Not one call fails on a connection pooled before the outage.
    await store.read_log(0, LogFilter(), 10)
    await store.load_snapshot("acc-1")
    assert await store.head("acc-1") is None
    await store.close()


async def test_calls_on_an_unreachable_database_raise_store_unavailable() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:9/none", pool_size=1, connect_timeout=1)
    await store.open()
    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.read_aggregate("a-1")
    await store.close()


async def test_a_read_model_commit_racing_a_forget_does_not_bring_the_document_back(postgres_url: str) -> None:
    """A forget that has taken its key's row when a projection's commit comes:
    the commit waits for it, then sees the tombstone and writes nothing, so the
    document the forget deletes is not written again behind its back."""
    store = PostgresStore(postgres_url, pool_size=2)
    await store.open()
    try:
        await store.create_data_key(DataKey("acc-1", "m1", b"w" * 40))
        document = DocumentWrite("owner:ann", "t.Doc", b"ann", ("acc-1",))
        await store.commit_projection("p", expected_position=0, new_position=1, writes=[document])
        with psycopg.connect(postgres_url) as forget:
            # The forget's first statement, its transaction still open.
            forget.execute(
                "UPDATE chronicle.data_keys SET master_key_id = NULL, wrapped_key = NULL, forgotten_at = now()"
                " WHERE aggregate_id = 'acc-1'"
            )
            commit = asyncio.ensure_future(
                store.commit_projection("p", expected_position=1, new_position=2, writes=[document])
            )
            await _waiting_for_a_lock(postgres_url)
            assert not commit.done()
            forget.execute(sql.DELETE_DOCUMENTS_OF_FORGOTTEN.replace("$1", "'acc-1'"))
            forget.commit()
            with pytest.raises(SubjectsForgotten):
                await commit
        assert await store.load_document("p", "owner:ann") is None
        assert await store.projection_position("p") == 1
    finally:
        await store.close()


async def _waiting_for_a_lock(url: str) -> None:
    async def blocked() -> bool:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()
        return bool(row and row[0] > 0)

    await eventually(blocked, what="the commit waiting for the forget's lock")
