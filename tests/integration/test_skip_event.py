"""Getting a projection past one poisoned event without a new plugin
(``SkipEvent``, ``client.projections.skip``, ``chronicle projection NAME
--skip POSITION``), over a real socket on SQLite and PostgreSQL: the event
is parked as ``on_failure="park"`` parks one and the projection goes on; a
position it is not stopped at is refused NOT_STOPPED_AT; only an
administrator may, audited; on another replica than the runner's,
PROJECTION_RUNS_ELSEWHERE naming it; a rebuild with the plugin fixed
applies the event again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from chronicle.v1 import admin_service_pb2 as admin_pb
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.cli import main as cli
from service.client import ChronicleClient, FailedPrecondition, InvalidArgument, PermissionDenied
from service.plugins import Plugin
from service.plugins.projections import Documents, ProjectedEvent
from service.plugins.registry import Registry
from service.store.base import StoreAdapter
from tests.support.cluster import projections_settled, replica
from tests.support.grpc_client import connect, running_server
from tests.support.stores import STORES, store_site
from tests.support.waiting import eventually

TOTALS = "poisoned.totals"
# Deposits of these amounts make the handler fail (a bug the plugin has
# until the test "fixes" it by emptying the set).
POISON: set[int] = set()
poisoned = Plugin("poisoned")
totals = poisoned.projection(TOTALS, aggregate_types=["Account"], retry_seconds=30.0)
# The same, but parking after more tries than a test lasts: still trying the 13.
PATIENT = "poisoned.patient"
patient = poisoned.projection(
    PATIENT, aggregate_types=["Account"], on_failure="park", max_attempts=1000, retry_seconds=30.0
)
REGISTRY = Registry([bank_account.plugin, poisoned])


@totals.on(bank.MoneyDeposited)
def _deposited(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    if event.amount in POISON:
        raise ValueError(f"cannot count {event.amount}")
    total = documents.get("total", bank.AccountBalance) or bank.AccountBalance()
    total.balance += event.amount
    documents.put("total", total)


patient.on(bank.MoneyDeposited)(_deposited)


@pytest.fixture(autouse=True)
def poison() -> None:
    POISON.clear()
    POISON.add(13)


@pytest.fixture(params=["sqlite", "postgres"])
async def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    async with STORES[request.param](store_site(request, tmp_path)) as opened:
        yield opened


@pytest.fixture
async def served(sql_store: StoreAdapter) -> AsyncIterator[tuple[Application, ChronicleClient]]:
    async with (
        running_server(sql_store, registry=REGISTRY, anonymous_admin=True, poll_seconds=0.05) as (app, _),
        ChronicleClient.connect(app.address) as client,
    ):
        yield app, client


async def stopped_on_poison(client: ChronicleClient) -> int:
    """5, 13 (poisoned) and 7 deposited; the position of the 13, once the
    projection stands still there."""
    await client.submit("acc-1", bank.OpenAccount(owner="ann"))
    await client.submit("acc-1", bank.Deposit(amount=5))
    poisoned_at = (await client.submit("acc-1", bank.Deposit(amount=13))).position
    await client.submit("acc-1", bank.Deposit(amount=7))

    async def stopped() -> bool:
        status = await client.projections.get(TOTALS)
        return "cannot count 13" in status.error and status.position == poisoned_at - 1

    await eventually(stopped, what=f"{TOTALS} stopping on the 13")
    return poisoned_at


async def total(client: ChronicleClient, min_position: int = 0) -> int:
    found = await client.projections.document(TOTALS, "total", min_position=min_position)
    return found.document_as(bank.AccountBalance).balance


async def test_a_skipped_event_is_parked_and_the_projection_goes_on_at_once(
    served: tuple[Application, ChronicleClient],
) -> None:
    _, client = served
    at = await stopped_on_poison(client)
    assert await total(client) == 5
    with pytest.raises(InvalidArgument) as zero:
        await client.projections.skip(TOTALS, 0)
    assert zero.value.reason == "INVALID_POSITION"
    with pytest.raises(FailedPrecondition) as elsewhere:
        await client.projections.skip(TOTALS, at + 1)
    assert elsewhere.value.reason == "NOT_STOPPED_AT"
    assert elsewhere.value.metadata["stopped_at"] == str(at)
    parked = await client.projections.skip(TOTALS, at)
    assert (parked.position, parked.event_type, parked.aggregate_id) == (at, "bank.v1.MoneyDeposited", "acc-1")
    assert "cannot count 13" in parked.error and parked.attempts >= 1
    # At once: not after the projection's 30 s between tries.
    last = (await client.submit("acc-1", bank.Deposit(amount=1))).position
    assert await asyncio.wait_for(total(client, min_position=last), 10) == 5 + 7 + 1
    status = await client.projections.get(TOTALS)
    assert (status.error, status.parked_events) == ("", 1)
    assert [e.event_id for e in [p async for p in client.projections.parked(TOTALS)]] == [parked.event_id]
    # Skipped once: the same position again is no longer where it stands.
    with pytest.raises(FailedPrecondition) as again:
        await client.projections.skip(TOTALS, at)
    assert (again.value.reason, again.value.metadata["stopped_at"]) == ("NOT_STOPPED_AT", "0")


async def test_a_projection_that_parks_is_let_on_without_its_remaining_tries(
    served: tuple[Application, ChronicleClient],
) -> None:
    _, client = served
    at = await stopped_on_poison(client)

    async def trying() -> bool:
        return "cannot count 13" in (await client.projections.get(PATIENT)).error

    await eventually(trying, what=f"{PATIENT} trying the 13")
    parked = await client.projections.skip(PATIENT, at)
    assert (parked.position, parked.attempts) == (at, 1)  # its one try so far (30 s apart)
    last = (await client.submit("acc-1", bank.Deposit(amount=1))).position
    found = await client.projections.document(PATIENT, "total", min_position=last)
    assert found.document_as(bank.AccountBalance).balance == 5 + 7 + 1


async def test_a_skip_is_audited_done_and_refused(served: tuple[Application, ChronicleClient]) -> None:
    app, client = served
    at = await stopped_on_poison(client)
    with pytest.raises(FailedPrecondition):
        await client.projections.skip(TOTALS, at - 1)
    await client.projections.skip(TOTALS, at)
    async with connect(app.address) as raw:
        audit = await raw.admin.QueryAudit(admin_pb.QueryAuditRequest(aggregate_id=f"projection:{TOTALS}"))
    outcomes = sorted((e.command_type, e.outcome, e.reason) for e in audit.entries)
    assert outcomes == [
        ("chronicle.v1.ProjectionService/SkipEvent", admin_pb.AUDIT_OUTCOME_ACCEPTED, ""),
        ("chronicle.v1.ProjectionService/SkipEvent", admin_pb.AUDIT_OUTCOME_REFUSED, "NOT_STOPPED_AT"),
    ]


async def test_the_skipped_event_is_applied_again_by_a_rebuild_once_the_plugin_is_fixed(
    served: tuple[Application, ChronicleClient],
) -> None:
    _, client = served
    at = await stopped_on_poison(client)
    await client.projections.skip(TOTALS, at)
    POISON.clear()  # the fix deployed
    head = await client.projections.rebuild(TOTALS)
    assert await total(client, min_position=head) == 5 + 13 + 7
    assert (await client.projections.get(TOTALS)).parked_events == 0


async def test_a_skip_takes_an_administrator(sql_store: StoreAdapter) -> None:
    async with (
        running_server(sql_store, registry=REGISTRY, poll_seconds=0.05) as (app, _),
        ChronicleClient.connect(app.address) as client,
    ):
        at = await stopped_on_poison(client)
        with pytest.raises(PermissionDenied) as refused:
            await client.projections.skip(TOTALS, at)
        assert refused.value.reason == "ANONYMOUS_ADMIN_DENIED"
        assert (await client.projections.get(TOTALS)).position == at - 1  # nothing moved


async def test_chronicle_projection_skip_parks_the_event(
    served: tuple[Application, ChronicleClient], capsys: pytest.CaptureFixture[str]
) -> None:
    app, client = served
    at = await stopped_on_poison(client)
    code = await asyncio.to_thread(cli, ["projection", TOTALS, "--skip", str(at), "--server", app.address])
    shown = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (shown["skipped"], shown["parked"]["position"], shown["parked"]["event_type"]) == (
        at,
        str(at),
        "bank.v1.MoneyDeposited",
    )
    code = await asyncio.to_thread(cli, ["projection", TOTALS, "--skip", str(at), "--server", app.address])
    assert code != 0 and "NOT_STOPPED_AT" in capsys.readouterr().err


@pytest.mark.postgres
async def test_a_replica_that_does_not_run_the_projection_names_the_one_that_does(postgres_url: str) -> None:
    async with AsyncExitStack() as stack:
        replicas = [
            await stack.enter_async_context(replica(postgres_url, registry=REGISTRY, anonymous_admin=True))
            for _ in range(2)
        ]
        apps = [app for app, _ in replicas]
        await eventually(lambda: projections_settled(apps, REGISTRY, TOTALS), within=20, what="the leases settled")
        (runner,) = [a for a in apps if a.projections.runners[TOTALS].holds_lease]
        (other,) = [a for a in apps if a is not runner]
        at_runner = await stack.enter_async_context(ChronicleClient.connect(runner.address))
        at_other = await stack.enter_async_context(ChronicleClient.connect(other.address))
        at = await stopped_on_poison(at_runner)

        async def told_who_runs_it() -> bool:
            with pytest.raises(FailedPrecondition) as elsewhere:
                await at_other.projections.skip(TOTALS, at)
            assert elsewhere.value.reason == "PROJECTION_RUNS_ELSEWHERE"
            # "" (or a holder since replaced) until its heartbeat sees the runner.
            return bool(elsewhere.value.metadata["runner"] == runner.address)

        await eventually(told_who_runs_it, what="the other replica knowing who runs the projection")
        assert (await at_runner.projections.get(TOTALS)).position == at - 1  # still stopped there
        await at_runner.projections.skip(TOTALS, at)
        last = (await at_other.submit("acc-1", bank.Deposit(amount=1))).position
        assert await total(at_other, min_position=last) == 5 + 7 + 1
