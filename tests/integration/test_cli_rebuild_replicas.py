"""``chronicle projection rebuild`` against a replica that does not run the
projection (two replicas on one PostgreSQL): the rebuild happens (the
reset is in the store; the replica that runs it starts over at its next
look), and the command says where it runs, since only that replica knows
the projection's errors."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack

import pytest

from chronicle.v1 import projection_service_pb2 as pb
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service import cli as cli_module
from service.plugins.registry import Registry
from tests.support.cluster import projections_settled, replica, runners_of
from tests.support.grpc_client import command, submit_retrying
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

NAME = "bank.balances_by_owner"
REGISTRY = Registry([bank_account.plugin])


async def test_a_rebuild_asked_of_a_replica_that_does_not_run_the_projection_names_the_one_that_does(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with AsyncExitStack() as stack:
        pair = [
            await stack.enter_async_context(replica(postgres_url, registry=REGISTRY, anonymous_admin=True))
            for _ in range(2)
        ]
        apps = [app for app, _ in pair]
        await eventually(lambda: projections_settled(apps, REGISTRY, NAME), what="the leases shared out")
        (runner,) = runners_of(apps, NAME)
        other, client = next((app, client) for app, client in pair if app is not runner)
        await submit_retrying(client, command("acc-1", bank.OpenAccount(owner="ann")))

        async def named_there() -> bool:
            # As the other replica's last heartbeat saw the leases.
            status = await client.projections.GetProjection(pb.GetProjectionRequest(name=NAME))
            return (status.running, status.runner) == (False, runner.leases.member.address)

        await eventually(named_there, what="the runner named on the other replica")
        status = await client.projections.GetProjection(pb.GetProjectionRequest(name=NAME))
        capsys.readouterr()
        args = ["projection", "rebuild", NAME, "--server", other.address]
        assert await asyncio.to_thread(cli_module.main, args) == 0
        shown = capsys.readouterr()
        assert (
            f"note: projection {NAME} runs on {runner.leases.member.address}, not on {other.address}: it is rebuilt"
            f" there, and its errors are reported there only, but for a stop at an event (follow them with"
            f" `chronicle projection {NAME}"
            f" --server {runner.leases.member.address}`)"
        ) in shown.err
        done = json.loads(shown.out)
        assert done["projection"] == NAME and done["position"] >= status.log_head
        # Rebuilt where it runs: the owner's document is there again.
        assert runner.projections.runners[NAME].status.position >= status.log_head
