"""Projections served over a real socket: the bank's balances by owner, on
every store, and a server killed while projecting."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from chronicle.v1 import projection_service_pb2 as pb
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins.registry import Registry
from service.store.base import StoreAdapter
from tests.support.grpc_client import Client, command, connect, details_of, running_server, submit_retrying
from tests.support.history import stored_events
from tests.support.processes import server_process
from tests.support.waiting import eventually

PROJECTION = "bank.balances_by_owner"


@pytest.fixture
async def client(store: StoreAdapter) -> AsyncIterator[Client]:
    async with running_server(store, poll_seconds=0.1) as (_, connected):
        yield connected


async def caught_up(client: Client) -> None:
    async def check() -> bool:
        status = await client.projections.GetProjection(pb.GetProjectionRequest(name=PROJECTION))
        return bool(status.position == status.log_head and status.running)

    await eventually(check, what="the projection catching up")


async def owner_balance(client: Client, owner: str) -> bank.OwnerBalance:
    response = await client.projections.GetDocument(pb.GetDocumentRequest(projection=PROJECTION, key=f"owner:{owner}"))
    document = bank.OwnerBalance()
    assert response.document.Unpack(document)
    return document


async def test_balances_by_owner_follow_the_commands(client: Client) -> None:
    await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    await client.submit(command("acc-2", bank.OpenAccount(owner="ann")))
    await client.submit(command("acc-3", bank.OpenAccount(owner="bob")))
    await client.submit(command("acc-1", bank.Deposit(amount=50)))
    await client.submit(command("acc-2", bank.Deposit(amount=5)))
    await client.submit(command("acc-1", bank.Withdraw(amount=20)))
    await client.submit(command("acc-3", bank.Deposit(amount=9)))
    await caught_up(client)
    assert await owner_balance(client, "ann") == bank.OwnerBalance(
        owner="ann", balance=35, account_ids=["acc-1", "acc-2"]
    )
    assert (await owner_balance(client, "bob")).balance == 9


async def test_the_projection_reports_where_it_stands(client: Client) -> None:
    await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    await caught_up(client)
    status = await client.projections.GetProjection(pb.GetProjectionRequest(name=PROJECTION))
    assert status.aggregate_types == ["Account"]
    assert "bank.v1.MoneyDeposited" in status.event_types
    assert status.error == ""


@pytest.mark.parametrize(
    ("call", "code", "reason"),
    [
        ("GetDocument", grpc.StatusCode.NOT_FOUND, "PROJECTION_NOT_FOUND"),
        ("GetDocument-missing", grpc.StatusCode.NOT_FOUND, "DOCUMENT_NOT_FOUND"),
        ("GetDocument-empty-key", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_KEY"),
        ("GetProjection", grpc.StatusCode.NOT_FOUND, "PROJECTION_NOT_FOUND"),
        ("GetProjection-empty", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PROJECTION"),
    ],
)
async def test_bad_projection_requests(client: Client, call: str, code: grpc.StatusCode, reason: str) -> None:
    requests: dict[str, Any] = {
        "GetDocument": client.projections.GetDocument(pb.GetDocumentRequest(projection="nope", key="k")),
        "GetDocument-missing": client.projections.GetDocument(pb.GetDocumentRequest(projection=PROJECTION, key="x")),
        "GetDocument-empty-key": client.projections.GetDocument(pb.GetDocumentRequest(projection=PROJECTION, key="")),
        "GetProjection": client.projections.GetProjection(pb.GetProjectionRequest(name="nope")),
        "GetProjection-empty": client.projections.GetProjection(pb.GetProjectionRequest(name="")),
    }
    for name, pending in requests.items():
        if name != call:
            pending.cancel()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await requests[call]
    details = details_of(raised.value)
    assert (details.code, details.reason) == (code, reason)


@pytest.mark.postgres
@pytest.mark.slow
async def test_a_server_killed_while_projecting_applies_every_event_exactly_once(postgres_url: str) -> None:
    owners = ["ann", "bob", "cy"]
    with server_process(postgres_url, extra=["--poll-seconds", "0.1"]) as first:
        async with connect(first.address) as client:
            for i in range(12):
                await client.submit(command(f"acc-{i}", bank.OpenAccount(owner=owners[i % 3])))

            acknowledged = 0

            async def load(worker: int) -> None:
                nonlocal acknowledged
                for n in range(25):
                    await submit_retrying(client, command(f"acc-{(worker + n) % 12}", bank.Deposit(amount=worker + 1)))
                    acknowledged += 1

            writers = asyncio.gather(*(load(w) for w in range(8)), return_exceptions=True)
            await eventually(lambda: acknowledged >= 40, what="the load running")
            assert not writers.done()
            first.stop(signal.SIGKILL)  # mid-load, mid-projection
            ended = await writers
            # The load was cut short: writers gave up on the dead server.
            assert acknowledged < 8 * 25
            assert all(isinstance(e, grpc.aio.AioRpcError) for e in ended if e is not None), ended

    with server_process(postgres_url, extra=["--poll-seconds", "0.1"]) as second:
        async with connect(second.address) as client:
            await caught_up(client)
            expected = _balances_from_the_log(postgres_url)
            for owner in owners:
                assert (await owner_balance(client, owner)).balance == expected[owner]


def _balances_from_the_log(database_url: str) -> dict[str, int]:
    """What the read model must say: a fresh replay of every stored event."""
    registry = Registry([bank_account.plugin])
    owner_of: dict[str, str] = {}
    totals: dict[str, int] = {}
    for event in stored_events(database_url):
        spec = registry.event(event.event_type)
        assert spec is not None
        message: Any = spec.message_type.FromString(event.payload)
        if isinstance(message, bank.AccountOpened):
            owner_of[event.aggregate_id] = message.owner
            totals.setdefault(message.owner, 0)
        elif isinstance(message, bank.MoneyDeposited):
            totals[owner_of[event.aggregate_id]] += message.amount
        elif isinstance(message, bank.MoneyWithdrawn):
            totals[owner_of[event.aggregate_id]] -= message.amount
    return totals
