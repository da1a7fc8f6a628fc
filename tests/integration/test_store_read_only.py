"""A PostgreSQL that stops taking writes after the server started, and takes
them again.

The fault is an operator's (or a failover's) at run time:
``ALTER SYSTEM SET default_transaction_read_only = on; SELECT pg_reload_conf()``
on the server's own cluster. docs/deployment.md ("Health"): NOT_SERVING
while the store cannot take the calls, which fail ``UNAVAILABLE`` with a
``RetryInfo``, here with reason ``STORE_READ_ONLY`` (errors.py: SQLSTATE
25006, ReadOnlySqlTransaction); SERVING again, and the same command accepted
on its retry, once the database takes writes, without a restart. Before,
every write was ``INTERNAL`` with a traceback in the log and health stayed
SERVING. (A database read only at start-up is refused instead,
DATABASE_READ_ONLY: test_read_database_checks.py.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterator
from dataclasses import replace

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import start
from service.errors import StoreUnavailable
from service.store.postgres import PostgresStore
from service.store.records import ClaimChange
from tests.support.events import command_record, new_event
from tests.support.grpc_client import TEST_SETTINGS, command, connect, details_of
from tests.support.postgres import Cluster, start_cluster
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A cluster of this module's own: the fault is set for the whole cluster."""
    own = start_cluster(own=True)
    yield own
    own.shutdown()


def _read_only(cluster: Cluster, on: bool) -> None:
    setting = "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
    with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM {setting}")
        conn.execute("SELECT pg_reload_conf()")


@pytest.fixture
def url(cluster: Cluster) -> Iterator[str]:
    made = cluster.create_database()
    try:
        yield made
    finally:
        _read_only(cluster, False)
        cluster.drop_database(made)


async def _refused(call: Awaitable[object]) -> StoreUnavailable | None:
    """What ``call`` was refused with; None if it went through."""
    try:
        await call
    except StoreUnavailable as error:
        return error
    return None


async def _ping_refused(store: PostgresStore) -> StoreUnavailable | None:
    return await _refused(store.ping())


async def test_the_store_refuses_writes_as_read_only_and_takes_them_again_without_reopening(
    cluster: Cluster, url: str
) -> None:
    store = PostgresStore(url, pool_size=4)
    await store.open()
    try:
        await store.append("acc-0", [new_event()], 0)
        await store.ping()

        _read_only(cluster, True)

        async def ping_refused() -> bool:
            return await _ping_refused(store) is not None

        await eventually(ping_refused, what="the ping to say the database takes no writes")
        said = await _ping_refused(store)
        assert said is not None
        assert said.reason == "STORE_READ_ONLY", said
        assert said.message == (
            "PostgreSQL takes no writes: its transactions are read only (default_transaction_read_only is on)"
        )
        # A burst, through group commit and the precise path (claims) alike:
        # each refused as read only, nothing written.
        appends = [store.append(f"acc-{i}", [new_event()], 0) for i in range(1, 9)]
        claimed = store.append(
            "user-1",
            [new_event()],
            0,
            commands=[command_record("user-1", 1, 1)],
            claims=[ClaimChange("users.email", "ann@example.com")],
        )
        refusals = await asyncio.gather(*(_refused(call) for call in [*appends, claimed]))
        for refusal in refusals:
            assert refusal is not None, "a write went through on a read-only database"
            assert refusal.reason == "STORE_READ_ONLY", refusal
            assert "takes no writes" in refusal.message and "read-only transaction" in refusal.message
        assert (await store.read_aggregate("acc-0"))[0].version == 1  # reads go on

        _read_only(cluster, False)

        async def answers() -> bool:
            return await _ping_refused(store) is None

        await eventually(answers, what="the ping to pass once the database takes writes")
        await store.append("acc-1", [new_event()], 0)
        await store.append(
            "user-1",
            [new_event()],
            0,
            commands=[command_record("user-1", 1, 1)],
            claims=[ClaimChange("users.email", "ann@example.com")],
        )
        assert [e.version for e in await store.read_aggregate("acc-1")] == [1]
    finally:
        await store.close()


async def test_a_database_first_reached_read_only_after_start_is_unavailable_until_it_takes_writes(
    cluster: Cluster, url: str
) -> None:
    """A server that started while its database was away migrates at its
    first operation. A database read only then is not a setting to fix before
    start (DATABASE_READ_ONLY refuses that at start-up) but a state that
    passes: the operation is UNAVAILABLE with the same reason (clients retry),
    not INTERNAL, and the next one after it takes writes migrates and goes on."""
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    store = PostgresStore(url, pool_size=2)  # not opened: as after an open that found no database
    try:
        refused = await _refused(store.append("acc-1", [new_event()], 0))
        assert refused is not None
        assert refused.reason == "DATABASE_READ_ONLY", refused
        assert "read only" in refused.message
        with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
        await store.append("acc-1", [new_event()], 0)
        assert [e.version for e in await store.read_aggregate("acc-1")] == [1]
    finally:
        await store.close()


async def _serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


async def test_a_server_whose_database_turns_read_only_answers_unavailable_reports_not_serving_and_recovers(
    cluster: Cluster, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    app = await start(replace(TEST_SETTINGS, database_url=url, health_interval=0.1))
    try:
        async with connect(app.address) as client:
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
            assert await _serving(app.address)

            _read_only(cluster, True)
            caplog.clear()

            # The first deposit the database refuses (until every session
            # has reloaded its configuration, some may still go through).
            refused: grpc.aio.AioRpcError | None = None
            deposit = command("acc-1", bank.Deposit(amount=5))
            for _ in range(200):
                try:
                    await client.submit(deposit)
                except grpc.aio.AioRpcError as error:
                    refused = error
                    break
                deposit = command("acc-1", bank.Deposit(amount=5))
                await asyncio.sleep(0.05)
            assert refused is not None, "every deposit went through on a read-only database"
            details = details_of(refused)
            assert (details.code, details.reason, details.retry) == (
                grpc.StatusCode.UNAVAILABLE,
                "STORE_READ_ONLY",
                True,
            ), details

            async def not_serving() -> bool:
                return not await _serving(app.address)

            await eventually(not_serving, what="NOT_SERVING while the database takes no writes")
            # A burst of commands meanwhile: each UNAVAILABLE, none INTERNAL.
            burst = await asyncio.gather(
                *(client.submit(command(f"acc-{i}", bank.OpenAccount(owner="bob"))) for i in range(2, 22)),
                return_exceptions=True,
            )
            for outcome in burst:
                assert isinstance(outcome, grpc.aio.AioRpcError), outcome
                assert (outcome.code(), details_of(outcome).reason) == (
                    grpc.StatusCode.UNAVAILABLE,
                    "STORE_READ_ONLY",
                ), details_of(outcome)
            # Refusals are logged as such, one line each, never with a traceback.
            tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
            assert not tracebacks, [r.getMessage() for r in tracebacks]
            assert any(
                "store unavailable, reporting NOT_SERVING" in r.getMessage() and "takes no writes" in r.getMessage()
                for r in caplog.records
            )

            _read_only(cluster, False)
            await eventually(lambda: _serving(app.address), what="SERVING once the database takes writes again")
            response = await client.submit(deposit)  # the refused command, retried with its id
            assert response.version >= 2
    finally:
        await app.stop(grace=1)
