"""A projection stopped at an event by its handler's failure, as every
replica tells it (docs/plugins.md, "Reading documents"), over real sockets
on one PostgreSQL database: a read waiting past that event is refused
PROJECTION_FAILED at once by the replica that does not run it too, and
GetProjection shows the error there; once a fixed handler goes on, both
answer the read and show no error, and a rebuild starts without it."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import grpc
import pytest

from chronicle.v1 import projection_service_pb2 as pb
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.plugins import Plugin
from service.plugins.projections import Documents, ProjectedEvent
from service.plugins.registry import Registry
from service.processing.projection_failures import has_failure
from tests.support.cluster import replica
from tests.support.grpc_client import Client, command, details_of, submit_retrying
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

NAME = "mending.deposits"
BROKEN = {True}  # holds True while the handler fails
mending = Plugin("mending")
deposits = mending.projection(NAME, aggregate_types=["Account"], retry_seconds=0.1)


@deposits.on(bank.MoneyDeposited)
def _add(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    if True in BROKEN:
        raise RuntimeError("this handler is broken for now")
    total = documents.get("total", bank.AccountBalance) or bank.AccountBalance()
    total.balance += event.amount
    documents.put("total", total)


REGISTRY = Registry([bank_account.plugin, mending])


async def test_every_replica_tells_a_projection_stopped_at_an_event_and_forgets_it_once_it_goes(
    postgres_url: str,
) -> None:
    BROKEN.add(True)
    async with AsyncExitStack() as stack:
        replicas = [
            await stack.enter_async_context(replica(postgres_url, registry=REGISTRY, anonymous_admin=True))
            for _ in range(2)
        ]
        await eventually(
            lambda: sum(app.projections.runners[NAME].holds_lease for app, _ in replicas) == 1,
            what="one replica running the projection",
        )
        ((app, elsewhere),) = [(a, c) for a, c in replicas if not a.projections.runners[NAME].holds_lease]
        await submit_retrying(elsewhere, command("acc-1", bank.OpenAccount(owner="ann")))
        deposited = await submit_retrying(elsewhere, command("acc-1", bank.Deposit(amount=5)))
        position = deposited.events[-1].position
        read = pb.GetDocumentRequest(projection=NAME, key="total", min_position=position)

        async def stopped_everywhere() -> bool:
            statuses = [await c.projections.GetProjection(pb.GetProjectionRequest(name=NAME)) for _, c in replicas]
            return all("this handler is broken for now" in s.error for s in statuses)

        await eventually(stopped_everywhere, what="both replicas showing the failure")
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await elsewhere.projections.GetDocument(read, timeout=20)
        assert loop.time() - started < 2  # at once, not after the server's wait (5 s)
        details = details_of(raised.value)
        assert (details.code, details.reason, details.retry) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "PROJECTION_FAILED",
            False,
        )
        assert details.metadata["failed_at"] == str(position)
        assert "this handler is broken for now" in details.metadata["error"]

        BROKEN.clear()  # the fixed plugin: the runner goes on at its next try (0.1 s)
        await eventually(lambda: _total_at(elsewhere, read, 5), what="the projection going again")
        for _, client in replicas:
            found = await client.projections.GetDocument(read, timeout=20)
            total = bank.AccountBalance()
            assert found.document.Unpack(total) and total.balance == 5
        await eventually(lambda: _no_failure_stored(app), what="the stored failure deleted")
        for _, client in replicas:
            status = await client.projections.GetProjection(pb.GetProjectionRequest(name=NAME))
            assert status.error == ""

        # Stopped again, then rebuilt: the rebuild starts without the old failure.
        BROKEN.add(True)
        again = await submit_retrying(elsewhere, command("acc-1", bank.Deposit(amount=7)))
        await eventually(stopped_everywhere, what="both replicas showing the failure again")
        await elsewhere.projections.RebuildProjection(pb.RebuildProjectionRequest(name=NAME))
        assert await _no_failure_stored(app)  # the rebuild deleted it
        BROKEN.clear()
        later = pb.GetDocumentRequest(projection=NAME, key="total", min_position=again.events[-1].position)
        found = await elsewhere.projections.GetDocument(later, timeout=20)
        assert found.document.Unpack(total) and total.balance == 12


async def _total_at(client: Client, read: pb.GetDocumentRequest, balance: int) -> bool:
    try:
        found = await client.projections.GetDocument(read, timeout=20)
    except grpc.aio.AioRpcError as error:
        if details_of(error).reason == "PROJECTION_FAILED":
            return False
        raise
    total = bank.AccountBalance()
    return found.document.Unpack(total) and total.balance == balance


async def _no_failure_stored(app: Application) -> bool:
    return not await has_failure(app.store.projections, NAME)
