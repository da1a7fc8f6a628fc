"""Work done once: with three replicas on one PostgreSQL, a projection runs
in one of them (by lease), so its handler runs once per event in the whole
cluster; when that replica dies, another takes the projection over after
the lease time and goes on from the checkpoint, applying each event once.
A plugin's reaction (the bank's transfers) likewise."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import projection_service_pb2 as pb
from chronicle.v1 import reaction_service_pb2 as reaction_pb
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.plugins import Plugin
from service.plugins.projections import Documents, ProjectedEvent
from service.plugins.registry import Registry
from tests.support.cluster import projections_settled, replica
from tests.support.cluster import runners_of as cluster_runners_of
from tests.support.grpc_client import Client, command, submit_retrying
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

# A projection that counts its handler's calls, per event: the replicas of
# this test run in one process, so one counter sees the whole cluster.
tally = Plugin("tally")
deposits = tally.projection("tally.deposits", aggregate_types=["Account"])
CALLS: Counter[str] = Counter()


@deposits.on(bank.MoneyDeposited)
def _counted(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    total = documents.get("total", bank.AccountBalance) or bank.AccountBalance()
    total.balance += event.amount
    documents.put("total", total)
    # Counted once the handler has what it needs: the runner calls it again,
    # from the start, when it asks for a document not loaded yet.
    CALLS[envelope.event_id] += 1


REGISTRY = Registry([bank_account.plugin, tally])


@pytest.fixture
async def cluster(postgres_url: str) -> AsyncIterator[list[tuple[Application, Client]]]:
    CALLS.clear()
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(replica(postgres_url, registry=REGISTRY)) for _ in range(3)]


def runners_of(apps: list[Application]) -> list[Application]:
    return cluster_runners_of(apps, "tally.deposits")


def settled(apps: list[Application]) -> bool:
    return projections_settled(apps, REGISTRY, "tally.deposits")


async def caught_up(client: Client) -> bool:
    status = await client.projections.GetProjection(pb.GetProjectionRequest(name="tally.deposits"))
    return bool(status.position == status.log_head)


async def deposit_into(client: Client, accounts: list[str], amount: int) -> list[str]:
    event_ids = []
    for account in accounts:
        response = await submit_retrying(client, command(account, bank.Deposit(amount=amount)))
        event_ids.append(response.events[0].event_id)
    return event_ids


async def test_one_replica_runs_a_projection_and_another_resumes_it_when_that_one_dies(
    cluster: list[tuple[Application, Client]],
) -> None:
    apps = [app for app, _ in cluster]
    await eventually(lambda: settled(apps), within=20, what="the projections shared out")
    (holder,) = runners_of(apps)
    survivors = [(app, client) for app, client in cluster if app is not holder]
    _, writer = survivors[0]
    accounts = [f"acc-{n}" for n in range(20)]
    for account in accounts:
        await submit_retrying(writer, command(account, bank.OpenAccount(owner="o")))
    before = await deposit_into(writer, accounts, 1)
    await eventually(lambda: caught_up(writer), within=20, what="the projection caught up")
    assert dict(CALLS) == dict.fromkeys(before, 1)  # once each, in the whole cluster
    # Only the holder says it runs it.
    statuses = [await c.projections.GetProjection(pb.GetProjectionRequest(name="tally.deposits")) for _, c in cluster]
    assert [s.running for s in statuses] == [app is holder for app in apps]

    # The holder dies: its runner stops mid-life, its leases are neither
    # renewed nor given up, its port closes.
    await holder.projections.stop()
    await holder.leases.stop(leave=False)
    await holder.server.stop(0)
    after = await deposit_into(writer, accounts, 2)
    await eventually(lambda: caught_up(writer), within=20, what="the projection resumed elsewhere")
    (successor,) = runners_of([app for app, _ in survivors])
    assert successor is not holder
    # From the checkpoint: nothing applied twice, nothing skipped.
    assert dict(CALLS) == dict.fromkeys(before + after, 1)
    document = await writer.projections.GetDocument(pb.GetDocumentRequest(projection="tally.deposits", key="total"))
    total = bank.AccountBalance()
    document.document.Unpack(total)
    assert total.balance == 20 * 1 + 20 * 2


def reaction_runners_of(apps: list[Application]) -> list[Application]:
    """The replicas running the bank's transfers now."""
    return [app for app in apps if app.reactions.runners["bank.transfers"].holds_lease]


async def transfer_status(client: Client, transfer_id: str) -> int:
    response = await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id=transfer_id))
    state = bank.Transfer()
    response.state.Unpack(state)
    return int(state.status)


async def balance(client: Client, account: str) -> int:
    response = await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id=account))
    state = bank.Account()
    response.state.Unpack(state)
    return int(state.balance)


async def test_one_replica_runs_a_reaction_and_another_resumes_it_when_that_one_dies(
    cluster: list[tuple[Application, Client]],
) -> None:
    apps = [app for app, _ in cluster]
    await eventually(lambda: settled(apps), within=20, what="the projections and reactions shared out")
    (holder,) = reaction_runners_of(apps)
    survivors = [(app, client) for app, client in cluster if app is not holder]
    _, writer = survivors[0]
    for account in ("acc-a", "acc-b"):
        await submit_retrying(writer, command(account, bank.OpenAccount(owner="o")))
    await submit_retrying(writer, command("acc-a", bank.Deposit(amount=100)))
    transfer = bank.TransferMoney(source_account_id="acc-a", target_account_id="acc-b", amount=30)
    await submit_retrying(writer, command("t-1", transfer))

    async def completed(transfer_id: str) -> bool:
        return await transfer_status(writer, transfer_id) == bank.TRANSFER_STATUS_COMPLETED

    await eventually(lambda: completed("t-1"), within=20, what="the transfer completed")
    # Its events were handled, and its commands sent, by the holder alone.
    handled = {app is holder: app.reactions.runners["bank.transfers"].status.handled for app in apps}
    assert handled[True] > 0
    assert all(app.reactions.runners["bank.transfers"].status.handled == 0 for app in apps if app is not holder)
    statuses = [
        await c.reactions.GetReaction(reaction_pb.GetReactionRequest(name="bank.transfers")) for _, c in cluster
    ]
    assert [s.running for s in statuses] == [app is holder for app in apps]

    # The holder dies without giving its leases up; another replica takes the
    # reaction over after the lease time, from its checkpoint.
    await holder.reactions.stop()
    await holder.projections.stop()
    await holder.leases.stop(leave=False)
    await holder.server.stop(0)
    await submit_retrying(writer, command("t-2", transfer))
    await eventually(lambda: completed("t-2"), within=20, what="the second transfer completed elsewhere")
    (successor,) = reaction_runners_of([app for app, _ in survivors])
    assert successor.reactions.runners["bank.transfers"].status.handled > 0
    # Each debit and credit once: nothing sent twice by the two runners.
    assert (await balance(writer, "acc-a"), await balance(writer, "acc-b")) == (40, 60)
