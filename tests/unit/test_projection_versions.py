"""A projection runner's version check, on the memory store: the version
of the declaration its documents were built by is recorded at the first
run, and a runner of another version applies nothing on them
(PROJECTION_VERSION_CHANGED) unless it may rebuild them (a higher version
declared with ``rebuild_on_change``); it looks again after a rebuild
from elsewhere. Over a real server on SQLite and PostgreSQL:
tests/integration/test_projection_versions.py."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import ProjectionFailed
from service.plugins import Documents, Plugin, ProjectedEvent
from service.plugins.projections import Projection
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.projections import ProjectionRunner
from service.processing.upcasting import EventReader
from service.store.base import Store
from service.store.leasing import Fencing
from service.store.memory import MemoryStore
from tests.support.fenced import HandLease
from tests.support.waiting import eventually

NAME = "versioned.deposits"
REGISTRY = Registry([bank_account.plugin])
READER = EventReader(REGISTRY)


def declared(version: int, *, rebuild_on_change: bool = False) -> Projection:
    """A count of deposits, declared at ``version``."""
    plugin = Plugin("versioned")
    projection = plugin.projection(
        NAME, aggregate_types=["Account"], version=version, rebuild_on_change=rebuild_on_change
    )

    @projection.on(bank.MoneyDeposited)
    def _deposited(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
        count = documents.get("count", bank.AccountBalance) or bank.AccountBalance()
        count.balance += 1
        documents.put("count", count)

    return projection


def runner(store: MemoryStore, projection: Projection) -> ProjectionRunner:
    return ProjectionRunner(projection, log=store, documents=store, reader=READER, retry_interval=0.01)


async def deposit(store: MemoryStore, amount: int) -> None:
    spec = REGISTRY.command("bank.v1.Deposit")
    assert spec is not None
    request = CommandRequest(
        command_id=str(uuid.uuid4()), aggregate_id="acc-1", spec=spec, message=bank.Deposit(amount=amount)
    )
    await CommandExecutor(Store.of(store), REGISTRY).execute(request, None)


async def count(store: MemoryStore) -> int:
    stored = await store.load_document(NAME, "count")
    return 0 if stored is None else bank.AccountBalance.FromString(stored.data).balance


@pytest.fixture
async def store() -> Any:
    opened = MemoryStore()
    open_account = REGISTRY.command("bank.v1.OpenAccount")
    assert open_account is not None
    await CommandExecutor(Store.of(opened), REGISTRY).execute(
        CommandRequest(
            command_id=str(uuid.uuid4()), aggregate_id="acc-1", spec=open_account, message=bank.OpenAccount(owner="a")
        ),
        None,
    )
    await deposit(opened, 1)
    return opened


async def test_a_first_run_records_the_declared_version(store: MemoryStore) -> None:
    assert await store.projection_version(NAME) is None
    head = await runner(store, declared(3)).step(0)
    assert (await store.projection_version(NAME), await store.projection_position(NAME)) == (3, head)
    assert await count(store) == 1


async def test_another_version_applies_nothing_and_says_both(store: MemoryStore) -> None:
    at = await runner(store, declared(1)).step(0)
    await deposit(store, 2)
    for version in (2, 5):
        with pytest.raises(ProjectionFailed) as raised:
            await runner(store, declared(version)).step(at)
        assert raised.value.reason == "PROJECTION_VERSION_CHANGED"
        assert raised.value.metadata == {"projection": NAME, "version": str(version), "stored_version": "1"}
        assert (await store.projection_position(NAME), await count(store)) == (at, 1)


async def test_an_older_version_refuses_even_with_rebuild_on_change(store: MemoryStore) -> None:
    at = await runner(store, declared(2)).step(0)
    with pytest.raises(ProjectionFailed) as raised:
        await runner(store, declared(1, rebuild_on_change=True)).step(at)
    assert raised.value.metadata["stored_version"] == "2"
    assert (await store.projection_version(NAME), await count(store)) == (2, 1)


async def test_rebuild_on_change_rebuilds_from_the_start_and_records_the_version(store: MemoryStore) -> None:
    at = await runner(store, declared(1)).step(0)
    await deposit(store, 2)
    head = await runner(store, declared(2, rebuild_on_change=True)).step(at)
    # Every deposit counted once: the documents were emptied first.
    assert (await store.projection_version(NAME), await store.projection_position(NAME)) == (2, head)
    assert await count(store) == 2


async def test_a_rebuild_by_another_version_elsewhere_stops_a_runner_that_checked_before(store: MemoryStore) -> None:
    running = runner(store, declared(1))
    at = await running.step(0)
    # A replica with version 2 rebuilds it (RebuildProjection records its version).
    await store.reset_projection(NAME, version=2)
    # Nothing new in the log: the runner finds its checkpoint moved back, and looks at the version again.
    assert await running.step(at) == 0
    with pytest.raises(ProjectionFailed) as raised:
        await running.step(0)
    assert raised.value.reason == "PROJECTION_VERSION_CHANGED"
    assert await count(store) == 0


@pytest.mark.parametrize("version", [0, -1, True, 1.5])
def test_a_version_is_a_whole_number_from_1(version: Any) -> None:
    with pytest.raises(ValueError, match="version must be a whole number from 1"):
        Plugin("p").projection("p.q", version=version)


@pytest.mark.parametrize(("built_by", "declares"), [(1, 2), (2, 1)])
async def test_a_stopped_runner_keeps_its_lease_so_its_status_says_why(
    store: MemoryStore, built_by: int, declares: int
) -> None:
    # Not handed to another replica (as an event of a newer plugin is): the
    # replica that holds the lease reports the stop (GetProjection.error),
    # and refuses reads waiting past the checkpoint at once.
    await runner(store, declared(built_by)).step(0)
    lease = HandLease()
    lease.token = Fencing("projections", NAME, "me", 1)
    stopped = ProjectionRunner(
        declared(declares), log=store, documents=store, reader=READER, retry_interval=0.01, lease=lease
    )
    stopped.start()
    try:
        await eventually(lambda: stopped.status.last_error != "", what="the runner stopping")
        await asyncio.sleep(0.05)  # several tries
        assert lease.token is not None
        assert stopped.error_now.startswith("PROJECTION_VERSION_CHANGED")
        at = await store.projection_position(NAME)
        assert stopped.stopped() == (at + 1, stopped.error_now)
    finally:
        await stopped.stop()
