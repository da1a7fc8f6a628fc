"""A projection whose lease an old plugin version holds, in a mixed fleet,
ends up on a replica that can read what the new version writes
(docs/deployment.md, "Rolling a new plugin version"): two real server
processes on one PostgreSQL database, one loading the purse plugin's v1 and
one its v2 (tests/support/purse), talked to over gRPC.

The v1 replica runs ``purse.totals`` until it meets a ``MoneyDeposited``
of schema 2, which it cannot read: it gives the lease up, the v2 replica
takes it (above its fair share: it adopts it) and goes on from the
checkpoint, so every deposit is counted exactly once; the v1 replica shows
the failure as its ``last_error`` and the v2 replica as the ``runner``; and
it stays there after the v1 replica's pause is over.
"""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import projection_service_pb2 as projections
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from tests.support.grpc_client import Client, command, connect
from tests.support.processes import Replica
from tests.support.purse import TOTALS
from tests.support.waiting import eventually

pytestmark = pytest.mark.asyncio

LEASE_SECONDS = 1.0


def _replica(database_url: str, version: str, log_path: Path) -> Replica:
    return Replica(
        database_url,
        log_path=log_path,
        extra=[
            "--plugin", f"tests.support.purse.{version}", "--no-example-plugins",
            "--lease-seconds", str(LEASE_SECONDS), "--poll-seconds", "0.2", "--anonymous-admin",
        ],
    )  # fmt: skip


async def _projection(client: Client) -> projections.GetProjectionResponse:
    response: projections.GetProjectionResponse = await client.projections.GetProjection(
        projections.GetProjectionRequest(name=TOTALS), timeout=10
    )
    return response


async def _balance(client: Client, purse: str) -> int:
    """The purse's balance in the read model (-1 while it has no document)."""
    try:
        response = await client.projections.GetDocument(
            projections.GetDocumentRequest(projection=TOTALS, key=purse), timeout=10
        )
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return -1
    balance = bank.AccountBalance()
    response.document.Unpack(balance)
    return balance.balance


async def _runs(client: Client) -> bool:
    return (await _projection(client)).running


async def _counted(client: Client, cents: int) -> bool:
    return await _balance(client, "p1") == cents


async def test_a_projection_the_old_version_cannot_go_on_with_moves_to_the_new_one(
    postgres_url: str, tmp_path: Path
) -> None:
    old = _replica(postgres_url, "v1", tmp_path / "v1.log")
    new = _replica(postgres_url, "v2", tmp_path / "v2.log")
    with ExitStack() as stack:
        stack.callback(old.close)
        stack.callback(new.close)
        old.start()
        async with connect(old.address) as at_old:
            await at_old.submit(command("p1", bank.Deposit(amount=2)))  # v1: 2 units, 200 cents
            await eventually(lambda: _counted(at_old, 200), what="v1 counting the first deposit")
            # The v2 replica joins; which of the two runs the projection is
            # their shares' and preferences' choice (by member ids, random):
            # both are started again until the v1 one keeps it, so the lease
            # is v1's to give up.
            for _ in range(10):
                new.start()
                await asyncio.sleep(4 * LEASE_SECONDS)  # the shares settle
                if (await _projection(at_old)).running:
                    break
                new.stop()
                old.stop()
                old.start()  # a new member id (on the same port: the channel reconnects)
                await eventually(lambda: _runs(at_old), what="the v1 replica running the projection again")
            else:
                pytest.fail("the v1 replica never kept the projection's lease")
            async with connect(new.address) as at_new:
                written = await at_new.submit(command("p1", bank.Deposit(amount=250)))  # v2: cents, schema 2

                async def taken_over() -> bool:
                    seen_new, seen_old = await _projection(at_new), await _projection(at_old)
                    return (seen_new.running, seen_old.running, seen_new.position) == (
                        True,
                        False,
                        written.events[-1].position,
                    )

                await eventually(taken_over, within=30, what="the v2 replica running the projection, caught up")
                assert await _balance(at_new, "p1") == 450  # each deposit once
                seen_old, seen_new = await _projection(at_old), await _projection(at_new)
                assert "SCHEMA_VERSION_TOO_NEW" in seen_old.last_error
                assert (seen_old.error, seen_new.error) == ("", "")
                assert seen_new.runner == new.address

                async def named_by_both() -> bool:  # the v1 replica hears of it at its next heartbeat
                    return (await _projection(at_old)).runner == new.address

                await eventually(named_by_both, what="the v1 replica naming the v2 one as the runner")

                # Past the v1 replica's pause the projection stays where it goes on.
                await asyncio.sleep(4 * LEASE_SECONDS)
                more = await at_new.submit(command("p1", bank.Deposit(amount=50)))
                await eventually(lambda: _counted(at_new, 500), within=10, what="the next deposit counted")
                assert (await _projection(at_new)).running
                assert (await _projection(at_new)).position >= more.events[-1].position
