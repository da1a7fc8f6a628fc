"""The databases a server is given are checked for what they are.

- ``--database-url`` must take writes: a hot standby (in recovery) or a
  database read only by default is refused at start-up, exit status 2 and
  one line with the reason ``DATABASE_READ_ONLY`` (migrations.py), not
  PostgreSQL's ``ReadOnlySqlTransaction`` in a traceback.
- ``--read-database-url`` must follow the primary: the primary's database
  or a physical standby of it, which shows the primary's system identifier
  and database OID. Another database (another Chronicle's) is refused at
  start-up (``READ_DATABASE_MISMATCH``); one first reached later refuses
  every read with that reason, never answering NOT_FOUND for aggregates
  that exist (standby.py).
- A read database that goes away (a proxy in front of the real standby,
  pointed at a port nothing listens on, and its connections cut) makes
  reads UNAVAILABLE while commands go on and health stays SERVING; its loss
  and its return are each logged once, and a start-up without it says so,
  not NOT_SERVING (docs/scaling.md, "Reads from a hot standby").
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chronicle.v1 import event_service_pb2 as pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import ConfigurationError, StoreUnavailable
from service.store.postgres import PostgresStore
from service.store.postgres import standby as standby_module
from service.store.postgres.standby import StandbyStore
from tests.support.grpc_client import TEST_SETTINGS, Client, command, details_of, running_server
from tests.support.postgres import Cluster, StandbyPair, schema_on_standby
from tests.support.processes import free_port, serve_until_exit
from tests.support.silent_proxy import SilentProxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

PASSWORD = "not-to-be-printed"  # trust authentication: accepted, and ignored


def with_password(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.replace("@", f":{PASSWORD}@", 1)))


def without_password(url: str) -> str:
    """The URL as the refusal names it: postgresql://user@host:port/database."""
    parts = urlsplit(url)
    return f"postgresql://{parts.username}@{parts.hostname}:{parts.port}{parts.path}"


def through(url: str, port: int) -> str:
    """``url`` reached through a proxy on ``port``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))


async def migrated(url: str) -> PostgresStore:
    store = PostgresStore(url, pool_size=2)
    await store.open()
    await store.ping()
    return store


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The line a server that refused to start ended with: status 2, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    return last


# -- --database-url must take writes ------------------------------------------------


async def test_a_hot_standby_as_the_database_is_refused_at_start_up(standby_urls: tuple[str, str]) -> None:
    primary_url, standby_url = standby_urls
    await schema_on_standby(primary_url, standby_url)  # what an operator's standby holds
    result = await asyncio.to_thread(serve_until_exit, "--database-url", with_password(standby_url))
    assert refusal(result) == (
        f"error: DATABASE_READ_ONLY: the database {without_password(standby_url)} is a hot standby (in recovery):"
        " it takes no writes, so Chronicle cannot keep its store there. --database-url must name the primary;"
        " a hot standby of it belongs in --read-database-url"
    )


async def test_a_database_read_only_by_default_is_refused_and_left_as_it_was(postgres_url: str) -> None:
    name = urlsplit(postgres_url).path.lstrip("/")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    store = PostgresStore(postgres_url, pool_size=1)
    with pytest.raises(ConfigurationError) as refused:
        await store.open()
    await store.close()
    assert refused.value.reason == "DATABASE_READ_ONLY"
    assert refused.value.message.startswith(
        f"the database {without_password(postgres_url)} is read only (default_transaction_read_only is on"
    )
    with psycopg.connect(postgres_url) as conn:  # not even the schema was created
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'chronicle'").fetchone() == (0,)


# -- --read-database-url must follow the primary ------------------------------------


@pytest.fixture
async def two_databases(postgres_url: str, pg_cluster: Cluster) -> AsyncIterator[tuple[str, str]]:
    """Two Chronicle databases on one server, migrated each by itself; the
    first holds an account, acc-1."""
    other = pg_cluster.create_database()
    primary = await migrated(postgres_url)
    await primary.close()
    await (await migrated(other)).close()
    async with running_server(PostgresStore(postgres_url, pool_size=2)) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    yield postgres_url, other
    pg_cluster.drop_database(other)


async def test_another_database_as_the_read_database_is_refused_at_start_up(
    two_databases: tuple[str, str],
) -> None:
    primary_url, other_url = two_databases
    result = await asyncio.to_thread(
        serve_until_exit,
        "--database-url", with_password(primary_url),
        "--read-database-url", with_password(other_url),
    )  # fmt: skip
    line = refusal(result)
    with psycopg.connect(primary_url) as conn:
        oids: dict[str, int] = dict(conn.execute("SELECT datname, oid FROM pg_database").fetchall())
    primary_name, other_name = (urlsplit(url).path.lstrip("/") for url in two_databases)
    assert line == (
        f"error: READ_DATABASE_MISMATCH: --read-database-url {without_password(other_url)} does not follow"
        f" --database-url {without_password(primary_url)}: it is another database (database {other_name!r},"
        f" OID {oids[other_name]}; the primary's is {primary_name!r}, OID {oids[primary_name]}). Reads from it"
        " would answer from other data; give a hot standby of the primary's database (streaming replication,"
        " pg_basebackup -R), or no --read-database-url"
    )


async def test_a_read_database_of_another_cluster_is_refused(postgres_url: str, standby_urls: tuple[str, str]) -> None:
    """Another cluster's database may have the primary's OID (numbers start
    alike in every cluster): the system identifier tells them apart."""
    elsewhere, _ = standby_urls
    await (await migrated(elsewhere)).close()
    primary = await migrated(postgres_url)
    read = StandbyStore(elsewhere, primary=primary, pool_size=1)
    try:
        with pytest.raises(ConfigurationError) as refused:
            await read.open()
    finally:
        await read.close()
        await primary.close()
    assert refused.value.reason == "READ_DATABASE_MISMATCH"
    assert ": it is another PostgreSQL cluster (system identifier " in refused.value.message


@pytest.fixture
def restricted_user(pg_cluster: Cluster, two_databases: tuple[str, str]) -> Iterator[str]:
    """A user that may read Chronicle's tables but not call
    pg_control_system() (EXECUTE revoked from PUBLIC in both databases), as
    a careful DBA may leave it."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_cluster.admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    for url in two_databases:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
            conn.execute(f"GRANT USAGE ON SCHEMA chronicle TO {role}")
            conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA chronicle TO {role}")
    yield role
    for url in two_databases:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
    with psycopg.connect(pg_cluster.admin_url, autocommit=True) as conn:
        conn.execute(f"DROP ROLE {role}")


def as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}@{parts.hostname}:{parts.port}"))


async def test_without_pg_control_system_another_database_is_still_refused(
    two_databases: tuple[str, str], restricted_user: str, caplog: pytest.LogCaptureFixture
) -> None:
    primary_url, other_url = two_databases
    # The witness: that user is denied it.
    with (
        psycopg.connect(as_user(other_url, restricted_user)) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("SELECT system_identifier FROM pg_control_system()")
    primary = PostgresStore(primary_url, pool_size=1)
    refused_store = StandbyStore(as_user(other_url, restricted_user), primary=primary, pool_size=1)
    try:
        with pytest.raises(ConfigurationError) as refused:
            await refused_store.open()
    finally:
        await refused_store.close()
    assert refused.value.reason == "READ_DATABASE_MISMATCH"
    assert ": it is another database (database " in refused.value.message
    # The primary's own database, read as that user: the OIDs agree, and
    # the log says that is all it could check.
    caplog.set_level(logging.INFO, logger=standby_module.__name__)
    same = StandbyStore(as_user(primary_url, restricted_user), primary=primary, pool_size=1)
    try:
        await same.open()
        assert len(await same.read_aggregate("acc-1")) == 1
    finally:
        await same.close()
        await primary.close()
    said = [r.getMessage() for r in caplog.records if r.name == standby_module.__name__]
    assert len(said) == 1 and "whether it is the same PostgreSQL cluster is not known" in said[0], said


async def test_a_read_database_first_reached_after_start_up_is_checked_then(
    postgres_url: str, pg_cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Not there at start-up (the server starts, as it does without its
    database), then another Chronicle database appears at that URL: reads
    are refused, with the reason, instead of answering NOT_FOUND for an
    aggregate the primary holds; commands go on."""
    caplog.set_level(logging.INFO, logger=standby_module.__name__)
    later = pg_cluster.url_for(f"chronicle_test_{uuid.uuid4().hex[:12]}")
    settings = replace(TEST_SETTINGS, database_url=postgres_url, read_database_url=later, health_interval=0.05)
    try:
        async with running_server(PostgresStore(postgres_url, pool_size=2), settings=settings) as (app, client):
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
            with pytest.raises(grpc.aio.AioRpcError) as waiting:
                await client.events.GetAggregate(pb.GetAggregateRequest(aggregate_id="acc-1"))
            assert (details_of(waiting.value).code, details_of(waiting.value).reason) == (
                grpc.StatusCode.UNAVAILABLE,
                "STORE_UNAVAILABLE",
            )
            with psycopg.connect(pg_cluster.admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{urlsplit(later).path.lstrip("/")}"')
            await (await migrated(later)).close()

            async def refused() -> bool:
                try:
                    await client.events.GetAggregate(pb.GetAggregateRequest(aggregate_id="acc-1"))
                except grpc.aio.AioRpcError as error:
                    details = details_of(error)
                    assert details.code != grpc.StatusCode.NOT_FOUND, details
                    return details.reason == "READ_DATABASE_MISMATCH"
                raise AssertionError("answered from the other database")

            await eventually(refused, what="reads refused")
            stream = client.events.ReadAggregate(pb.ReadAggregateRequest(aggregate_id="acc-1"))
            with pytest.raises(grpc.aio.AioRpcError) as read:
                [e async for e in stream]
            assert (details_of(read.value).code, details_of(read.value).reason) == (
                grpc.StatusCode.INTERNAL,
                "READ_DATABASE_MISMATCH",
            )
            assert "does not follow --database-url" in details_of(read.value).message
            subscription = client.events.Subscribe(pb.SubscribeRequest(after_position=0))
            with pytest.raises(grpc.aio.AioRpcError) as subscribed:
                await subscription.read()
            assert details_of(subscribed.value).reason == "READ_DATABASE_MISMATCH"
            await client.submit(command("acc-1", bank.Deposit(amount=5)))  # commands go on
            assert await health_of(client) == health_pb2.HealthCheckResponse.SERVING
            await eventually(lambda: errors_logged(caplog) == 1, what="the refusal logged")
            await asyncio.sleep(0.3)  # several more checks: still said once
            assert errors_logged(caplog) == 1
            assert app.standby is not None
    finally:
        pg_cluster.drop_database(later)


def errors_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        1
        for r in caplog.records
        if r.name == standby_module.__name__
        and r.levelno == logging.ERROR
        and "READ_DATABASE_MISMATCH" in r.getMessage()
    )


# -- a read database that goes away and comes back ----------------------------------


async def health_of(client: Client) -> int:
    response = await health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest())
    return int(response.status)


def said(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """What the server logged about the read database: (level, message)."""
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == standby_module.__name__]


@pytest.fixture
async def proxied_standby(
    standby_urls: tuple[str, str], standby_pair: StandbyPair
) -> AsyncIterator[tuple[str, str, SilentProxy]]:
    """The primary's URL, the standby's through a proxy, and the proxy:
    the schema already on the standby."""
    primary_url, standby_url = standby_urls
    await schema_on_standby(primary_url, standby_url)
    port = urlsplit(standby_url).port
    assert port is not None
    async with SilentProxy(port).running() as proxy:
        yield primary_url, through(standby_url, proxy.port), proxy


async def go_away(proxy: SilentProxy) -> int:
    """Every connection through ``proxy`` cut, later ones refused: a read
    database that is gone. Returns the port to give back."""
    port = proxy.target_port
    proxy.target_port = free_port()  # nothing listens there: each new connection is closed at once
    await proxy.cut()
    return port


async def reads_answer(client: Client, *, min_position: int = 0) -> int | None:
    """The gRPC status code of a GetAggregate of acc-1, None when answered."""
    try:
        await client.events.GetAggregate(pb.GetAggregateRequest(aggregate_id="acc-1", min_position=min_position))
    except grpc.aio.AioRpcError as error:
        details = details_of(error)
        assert (details.code, details.reason, details.retry) == (
            grpc.StatusCode.UNAVAILABLE,
            "STORE_UNAVAILABLE",
            True,
        ), details
        return int(details.code.value[0])
    return None


async def test_a_read_database_that_goes_away_is_logged_once_each_way_and_health_stays_serving(
    proxied_standby: tuple[str, str, SilentProxy], caplog: pytest.LogCaptureFixture
) -> None:
    primary_url, read_url, proxy = proxied_standby
    caplog.set_level(logging.INFO, logger=standby_module.__name__)
    settings = replace(TEST_SETTINGS, database_url=primary_url, read_database_url=read_url, health_interval=0.05)
    async with running_server(PostgresStore(primary_url, pool_size=2), settings=settings) as (app, client):
        opened = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        assert await reads_answer(client, min_position=opened.events[0].position) is None
        assert said(caplog) == []
        port = await go_away(proxy)

        async def unavailable() -> bool:
            return await reads_answer(client) is not None

        await eventually(unavailable, what="reads UNAVAILABLE")
        await eventually(lambda: len(said(caplog)) == 1, what="the loss logged")
        ((level, message),) = said(caplog)
        assert level == logging.WARNING
        assert message.startswith("the read database (--read-database-url) is unavailable (")
        assert message.endswith(
            "); until it answers again, reads (ReadAggregate, GetAggregate, Subscribe) answer UNAVAILABLE,"
            " while commands go on and health stays SERVING"
        )
        deposited = await client.submit(command("acc-1", bank.Deposit(amount=5)))  # commands go on
        assert await health_of(client) == health_pb2.HealthCheckResponse.SERVING
        assert app.health.serving
        await asyncio.sleep(0.3)  # several more checks find it gone: said once
        assert len(said(caplog)) == 1
        proxy.target_port = port
        await eventually(lambda: len(said(caplog)) == 2, what="the return logged")
        assert said(caplog)[1] == (
            logging.INFO,
            "the read database (--read-database-url) is available again;"
            " reads (ReadAggregate, GetAggregate, Subscribe) are served from it",
        )
        assert await reads_answer(client, min_position=deposited.events[0].position) is None
        await asyncio.sleep(0.3)
        assert len(said(caplog)) == 2
        assert await health_of(client) == health_pb2.HealthCheckResponse.SERVING


async def test_a_server_started_without_its_read_database_says_what_it_serves(
    proxied_standby: tuple[str, str, SilentProxy], caplog: pytest.LogCaptureFixture
) -> None:
    primary_url, read_url, proxy = proxied_standby
    caplog.set_level(logging.WARNING)
    caplog.set_level(logging.INFO, logger=standby_module.__name__)
    port = await go_away(proxy)
    settings = replace(TEST_SETTINGS, database_url=primary_url, read_database_url=read_url, health_interval=0.05)
    async with running_server(PostgresStore(primary_url, pool_size=2), settings=settings) as (_, client):
        assert not [r.getMessage() for r in caplog.records if "NOT_SERVING" in r.getMessage()]
        ((level, message),) = said(caplog)
        assert level == logging.WARNING
        assert "NOT_SERVING" not in message
        assert message.startswith("the read database (--read-database-url) is not ready yet (")
        assert message.endswith(
            "); until it is, reads (ReadAggregate, GetAggregate, Subscribe) answer UNAVAILABLE,"
            " while commands go on and health stays SERVING"
        )
        opened = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        assert await reads_answer(client) is not None
        assert await health_of(client) == health_pb2.HealthCheckResponse.SERVING
        proxy.target_port = port
        await eventually(lambda: len(said(caplog)) == 2, what="the read database's arrival logged")
        assert said(caplog)[1] == (
            logging.INFO,
            "the read database (--read-database-url) is available;"
            " reads (ReadAggregate, GetAggregate, Subscribe) are served from it",
        )
        assert await reads_answer(client, min_position=opened.events[0].position) is None


async def test_a_standby_store_that_cannot_reach_the_primary_waits_to_check(
    standby_urls: tuple[str, str],
) -> None:
    """The check needs the primary: until it answers, reads from the
    standby are unavailable (not served unchecked)."""
    primary_url, standby_url = standby_urls
    await schema_on_standby(primary_url, standby_url)
    primary = PostgresStore(through(primary_url, free_port()), pool_size=1)
    read = StandbyStore(standby_url, primary=primary, pool_size=1)
    await read.open()  # starts all the same
    try:
        with pytest.raises(StoreUnavailable) as unavailable:
            await read.read_aggregate("acc-1")
        assert unavailable.value.reason == "READ_DATABASE_NOT_READY"
        assert "cannot be checked against the primary (--database-url) yet" in unavailable.value.message
    finally:
        await read.close()
        await primary.close()
