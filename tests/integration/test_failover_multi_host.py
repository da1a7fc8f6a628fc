"""docs/deployment.md, "Disaster recovery": servers given a libpq multi-host
URL with ``target_session_attrs=read-write`` follow a standby promoted after
the primary is lost, without a restart: UNAVAILABLE (STORE_UNAVAILABLE)
while no host takes writes, then commands run on the new primary. A real
primary and streaming standby (``pg_basebackup -R``), a real server and
client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import grpc
import psycopg
import pytest

from chronicle.v1 import command_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.postgres import PostgresStore
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.postgres import StandbyPair, start_standby_pair
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres


@pytest.fixture
def pair() -> Iterator[StandbyPair]:
    """A pair of this test's own: it stops the primary and promotes the standby."""
    started = start_standby_pair()
    yield started
    started.shutdown()


def multi_host(primary_url: str, standby_url: str) -> str:
    """Both hosts in one URL; a connection takes the one that accepts writes."""
    primary, standby = urlsplit(primary_url), urlsplit(standby_url)
    hosts = f"{primary.netloc},{standby.hostname}:{standby.port}"
    return urlunsplit(primary._replace(netloc=hosts, query="target_session_attrs=read-write"))


async def test_a_server_on_a_multi_host_url_serves_again_once_the_standby_is_promoted(pair: StandbyPair) -> None:
    primary_url, standby_url = await asyncio.to_thread(pair.create_database)
    async with running_server(PostgresStore(multi_host(primary_url, standby_url)), anonymous_admin=True) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))

        await asyncio.to_thread(pair.primary.stop, "immediate")
        deposit = command("acc-1", bank.Deposit(amount=5))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.submit(deposit)
        assert details_of(refused.value).reason == "STORE_UNAVAILABLE"  # the standby refuses the session: read only

        await asyncio.to_thread(pair.standby.promote)
        await eventually(lambda: accepted(client, deposit), what="the command accepted on the promoted standby")

    with psycopg.connect(standby_url) as conn:
        rows = conn.execute("SELECT aggregate_id, version FROM chronicle.events ORDER BY position").fetchall()
    assert rows == [("acc-1", 1), ("acc-1", 2)]


async def accepted(client: Client, built: command_pb2.Command) -> bool:
    """Whether ``built`` ran (or had run: the same command id is not run twice)."""
    try:
        await client.submit(built)
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return False
    return True
