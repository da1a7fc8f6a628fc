"""The console's Projections page in a cluster (two replicas on one
PostgreSQL, each with its console): each replica says which replica runs a
projection and that its errors are known there, and a failure met on a
replica is over there once another replica runs the projection (shown as
past, with its time, not as failing now; ``GetProjection`` likewise)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from chronicle.v1 import projection_service_pb2 as pb
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.plugins import Documents, Plugin, ProjectedEvent
from service.plugins.registry import Registry
from tests.support.cluster import projections_settled, replica, runners_of
from tests.support.console import row_of as console_row
from tests.support.console import text_of
from tests.support.grpc_client import Client, command, submit_retrying
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

NAME = "moody.deposits"
# A read model whose handler fails while FAILING holds something: the
# replicas run in this process, so both see it.
moody = Plugin("moody")
deposits = moody.projection(NAME, aggregate_types=["Account"], retry_seconds=0.1)
FAILING: set[str] = set()


@deposits.on(bank.MoneyDeposited)
def _deposited(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    if FAILING:
        raise RuntimeError("the moody handler refuses today")
    documents.put(envelope.aggregate_id, bank.AccountBalance(balance=event.amount))


REGISTRY = Registry([bank_account.plugin, moody])


@pytest.fixture
async def pair(postgres_url: str) -> AsyncIterator[list[tuple[Application, Client]]]:
    FAILING.clear()
    async with AsyncExitStack() as stack:
        replicas = [
            await stack.enter_async_context(replica(postgres_url, registry=REGISTRY, console_listen="127.0.0.1:0"))
            for _ in range(2)
        ]
        apps = [app for app, _ in replicas]
        await eventually(lambda: projections_settled(apps, REGISTRY, NAME), within=20, what="the leases shared out")
        yield replicas
    FAILING.clear()


async def failing_on_its_runner(pair: list[tuple[Application, Client]]) -> tuple[Application, Application, Client]:
    """The replica that runs the projection, failing on a deposit; the other
    replica and its client."""
    (runner,) = runners_of([app for app, _ in pair], NAME)
    other, client = next((app, client) for app, client in pair if app is not runner)
    FAILING.add("on")
    await submit_retrying(client, command("acc-1", bank.OpenAccount(owner="ann")))
    await submit_retrying(client, command("acc-1", bank.Deposit(amount=5)))
    await eventually(
        lambda: "refuses today" in runner.projections.runners[NAME].status.error, what="the runner failing"
    )
    return runner, other, client


async def row_of(app: Application) -> list[str]:
    """The projection's row on ``app``'s Projections page, each cell as markup."""
    return await console_row(app, "/projections", NAME)


async def test_a_replica_says_which_replica_runs_a_projection_and_that_its_errors_are_known_there(
    pair: list[tuple[Application, Client]],
) -> None:
    runner, other, client = await failing_on_its_runner(pair)
    shown: list[str] = []

    async def shown_elsewhere() -> bool:
        # As the other replica's last heartbeat saw the leases.
        nonlocal shown
        shown = await row_of(other)
        return text_of(shown[5]) == "runs on another replica"

    await eventually(shown_elsewhere, what="the runner named on the other replica's page")
    stored = await client.projections.GetProjection(pb.GetProjectionRequest(name=NAME))
    # Position and lag are the projection's (its checkpoint, in the store), as on its runner.
    assert [text_of(cell) for cell in shown[2:5]] == [
        str(stored.position),
        str(stored.log_head),
        str(stored.log_head - stored.position),
    ]
    assert 'class="state-elsewhere"' in shown[5]
    # Its console is on loopback: its address as text, no link (docs/console.md).
    assert text_of(shown[6]) == (
        f"{runner.leases.member.address} ({runner.leases.member_id[:8]})"
        f" console on http://{runner.console.address if runner.console else ''} (from that machine only)"
    )
    assert "<a " not in shown[6]
    # Stopped at an event: the failure as its runner stored it, shown here too.
    assert text_of(shown[8]).startswith(
        "Its errors, if any, are on the replica that runs it.Stopped at an event, as the replica that runs it says:"
    )
    assert "the moody handler refuses today" in text_of(shown[8])
    # Its runner shows the failure, as failing now.
    there = await row_of(runner)
    assert (text_of(there[5]), text_of(there[6])) == ("failed", "this replica")
    assert "the moody handler refuses today" in text_of(there[8]) and 'class="error"' in there[8]
    # GetProjection from the other replica says where it runs, and the stop its runner stored.
    assert (stored.running, stored.runner) == (False, runner.leases.member.address)
    assert "the moody handler refuses today" in stored.error


async def test_a_failure_is_over_on_a_replica_once_another_replica_runs_the_projection(
    pair: list[tuple[Application, Client]],
) -> None:
    runner, other, _ = await failing_on_its_runner(pair)
    await eventually(lambda: shown_failed(runner), what="the failure on its runner's page")
    FAILING.clear()
    # The lease leaves the replica that failed (as when the store was away
    # from it); the other takes the projection over and runs it fine.
    await runner.leases.leave("projections")

    async def caught_up_elsewhere() -> bool:
        status = await status_on(other, pair)
        return status.running and status.position == status.log_head

    await eventually(caught_up_elsewhere, within=20, what="the other replica running it")
    shown = await row_of(runner)
    assert text_of(shown[5]) != "failed" and "state-failed" not in shown[5]
    assert 'class="error"' not in shown[8]
    past = text_of(shown[8])
    assert re.search(r"Over\. Met here last at \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ:", past), past
    assert "the moody handler refuses today" in past and 'class="past-error"' in shown[8]
    # As GetProjection says it from there: nothing holds it there now; what it met there is last_error.
    status = await status_on(runner, pair)
    assert (status.running, status.error) == (False, "")
    assert "the moody handler refuses today" in status.last_error and status.HasField("last_error_time")
    assert other.projections.runners[NAME].status.error == ""


async def shown_failed(app: Application) -> bool:
    state: str = text_of((await row_of(app))[5])
    return state == "failed"


async def status_on(app: Application, pair: list[tuple[Application, Client]]) -> pb.GetProjectionResponse:
    client = next(client for candidate, client in pair if candidate is app)
    status: pb.GetProjectionResponse = await client.projections.GetProjection(pb.GetProjectionRequest(name=NAME))
    return status
