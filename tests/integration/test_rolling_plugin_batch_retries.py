"""A SubmitBatch retried after a new plugin version renamed one of its
command types is answered from its records, as a single Submit's retry is
(docs/deployment.md, "Rolling a new plugin version"): over real sockets
with a real gRPC client, on SQLite (the old version's server, then the
new one's, on one file) and on PostgreSQL (a replica of each version on one
database, at once). The purse plugin (tests/support/purse): v2 no longer
registers ``bank.v1.OpenAccount``.

Only a batch whose ids were recorded, each for the same content, is
answered so: a new batch of the old name is still UNKNOWN_COMMAND_TYPE, a
recorded id sent with other content or beside an id never recorded is
COMMAND_ID_REUSED, and a recorded refusal is raised again."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from chronicle.v1 import command_pb2
from chronicle.v1 import command_service_pb2 as cs
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import Plugin
from service.plugins.registry import Registry
from service.store.sqlite import SqliteStore
from tests.support.cluster import replica
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.purse import v1, v2

pytestmark = pytest.mark.asyncio


class Versions:
    """Opens a server of one plugin version at a time over one store."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self._kind = kind
        self._path = tmp_path / "events.db"
        self._url = request.getfixturevalue("postgres_url") if kind == "postgres" else ""

    @asynccontextmanager
    async def serving(self, plugin: Plugin) -> AsyncIterator[Client]:
        if self._kind == "postgres":
            async with replica(self._url, registry=Registry([plugin])) as (_, client):
                yield client
            return
        store = SqliteStore(self._path)
        await store.open()
        async with running_server(store, registry=Registry([plugin])) as (_, client):
            yield client


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def versions(request: pytest.FixtureRequest, tmp_path: Path) -> Versions:
    return Versions(request.param, tmp_path, request)


def sent(aggregate_id: str, *messages: Message) -> list[command_pb2.Command]:
    return [command(aggregate_id, message, command_id=str(uuid.uuid4())) for message in messages]


async def submit_batch(client: Client, commands: Sequence[command_pb2.Command]) -> cs.SubmitBatchResponse:
    response: cs.SubmitBatchResponse = await client.commands.SubmitBatch(
        cs.SubmitBatchRequest(commands=commands), timeout=30
    )
    return response


async def refused(client: Client, commands: Sequence[command_pb2.Command]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await submit_batch(client, commands)
    return raised.value.code(), details_of(raised.value).reason


def payloads(response: cs.SubmitBatchResponse) -> list[list[str]]:
    return [[e.payload.type_url.rpartition("/")[2] for e in result.events] for result in response.results]


async def test_a_batch_retried_after_its_command_type_was_renamed_is_answered_from_its_records(
    versions: Versions,
) -> None:
    batch = sent("p1", bank.OpenAccount(owner="ann"), bank.Deposit(amount=3))
    async with versions.serving(v1.plugin) as old:
        first = await submit_batch(old, batch)
        assert (first.version, first.replayed) == (2, False)

    async with versions.serving(v2.plugin) as new:
        retried = await submit_batch(new, batch)

        assert (retried.version, retried.replayed) == (2, True)
        assert [r.version for r in retried.results] == [r.version for r in first.results]
        assert payloads(retried) == [["bank.v1.AccountOpened"], ["bank.v1.MoneyDeposited"]]
        assert bank.AccountOpened.FromString(retried.results[0].events[0].payload.value).owner == "ann"
        assert [e.event_id for r in retried.results for e in r.events] == [
            e.event_id for r in first.results for e in r.events
        ]
        # Only a recorded batch is answered so: a new one of the old name is refused.
        fresh = sent("p2", bank.OpenAccount(owner="bo"), bank.Deposit(amount=1))
        assert await refused(new, fresh) == (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_COMMAND_TYPE")
        # Its ids with other content, or beside an id never recorded, are a reuse.
        other = [command("p1", bank.OpenAccount(owner="cy"), command_id=batch[0].command_id), batch[1]]
        assert (await refused(new, other))[1] == "COMMAND_ID_REUSED"
        part = [batch[0], *sent("p1", bank.Deposit(amount=3))]
        assert (await refused(new, part))[1] == "COMMAND_ID_REUSED"
        # The aggregate was not touched by any of it.
        assert (await new.submit(command("p1", bank.Deposit(amount=1)))).version == 3


async def test_a_recorded_refusal_of_a_batch_with_a_renamed_type_is_raised_again(versions: Versions) -> None:
    async with versions.serving(v1.plugin) as old:
        await submit_batch(old, sent("p1", bank.OpenAccount(owner="ann")))
        again = sent("p1", bank.OpenAccount(owner="ann"), bank.Deposit(amount=3))
        first = await refused(old, again)  # p1 exists: refused, and the refusal recorded
        assert first[0] == grpc.StatusCode.ALREADY_EXISTS

    async with versions.serving(v2.plugin) as new:
        assert await refused(new, again) == first
