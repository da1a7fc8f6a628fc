"""Projection versions over a real server, on SQLite and on a real
PostgreSQL (docs/plugins.md, "Projection versions"): a projection's
documents are built by v1 (deposits summed in units); the server restarts
with v2 (the same name, deposits summed in cents). Before versions, v2 went
on from v1's checkpoint and added cents to units. Now it stops,
PROJECTION_VERSION_CHANGED (stored and declared versions said), writes
nothing, and refuses a read waiting for a later position at once, until
RebuildProjection, which records v2 with the reset; declared with
``rebuild_on_change`` it rebuilds itself; a rolled-back v1 refuses v2's
documents even with ``rebuild_on_change``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import projection_service_pb2 as pb
from domain_plugins.bank_account.domain import plugin as bank_plugin
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.cli import main as cli_main
from service.plugins import Documents, Plugin, ProjectedEvent
from service.plugins.registry import Registry
from service.store.factory import open_store
from tests.support.console import console, text_of
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.http import request
from tests.support.waiting import eventually

PROJECTION = "versioned.balances"


def versioned(version: int, *, per_unit: int, rebuild_on_change: bool = False) -> Plugin:
    """The projection at ``version``: each account's deposits, ``per_unit``
    to a unit (1: units, 100: cents)."""
    plugin = Plugin("versioned")
    balances = plugin.projection(
        PROJECTION,
        aggregate_types=["Account"],
        version=version,
        rebuild_on_change=rebuild_on_change,
        retry_seconds=0.2,
    )

    @balances.on(bank.MoneyDeposited)
    def _deposited(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
        balance = documents.get(envelope.aggregate_id, bank.AccountBalance) or bank.AccountBalance()
        balance.balance += event.amount * per_unit
        documents.put(envelope.aggregate_id, balance)

    return plugin


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/events.db"
    request.applymarker(pytest.mark.postgres)
    return str(request.getfixturevalue("postgres_url"))


@asynccontextmanager
async def served(url: str, plugin: Plugin) -> AsyncIterator[tuple[Application, Client]]:
    """A server over the database at ``url`` with the bank and ``plugin``
    loaded (a store of its own: a restart is a new one), its console on."""
    store = open_store(url, pool_size=2)
    async with running_server(
        store,
        registry=Registry([bank_plugin, plugin]),
        anonymous_admin=True,
        poll_seconds=0.05,
        console_listen="127.0.0.1:0",
    ) as (app, client):
        yield app, client


@asynccontextmanager
async def server(url: str, plugin: Plugin) -> AsyncIterator[Client]:
    async with served(url, plugin) as (_, client):
        yield client


async def console_summary(app: Application) -> str:
    """What the console's page of the projection says of it, as text."""
    answer = await request(console(app), "GET", f"/projections/{PROJECTION}")
    assert answer.status == 200
    return text_of(answer.text.partition('id="projection-summary">')[2].partition("</p>")[0])


async def status(client: Client) -> pb.GetProjectionResponse:
    found: pb.GetProjectionResponse = await client.projections.GetProjection(pb.GetProjectionRequest(name=PROJECTION))
    return found


async def caught_up(client: Client) -> pb.GetProjectionResponse:
    found = pb.GetProjectionResponse()

    async def check() -> bool:
        found.CopyFrom(await status(client))
        return found.position == found.log_head and not found.error

    await eventually(check, what="the projection catching up")
    return found


async def balance(client: Client) -> int:
    response = await client.projections.GetDocument(pb.GetDocumentRequest(projection=PROJECTION, key="acc-1"))
    document = bank.AccountBalance()
    assert response.document.Unpack(document)
    return document.balance


async def deposit(client: Client, amount: int) -> int:
    """The log position of the deposit's event."""
    return (await client.submit(command("acc-1", bank.Deposit(amount=amount)))).events[-1].position


async def built_by_v1(url: str) -> None:
    """acc-1 opened with 7 deposited, its document built by v1."""
    async with server(url, versioned(1, per_unit=1)) as client:
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await deposit(client, 7)
        first = await caught_up(client)
        assert (first.version, first.stored_version) == (1, 1)  # the first run recorded it
        assert await balance(client) == 7


async def stopped(client: Client) -> pb.GetProjectionResponse:
    found = pb.GetProjectionResponse()

    async def check() -> bool:
        found.CopyFrom(await status(client))
        return bool(found.error)

    await eventually(check, what="the projection stopping")
    return found


async def test_a_new_version_stops_until_rebuilt_and_the_rebuild_records_it(database_url: str) -> None:
    await built_by_v1(database_url)
    async with served(database_url, versioned(2, per_unit=100)) as (app, client):
        position = (await status(client)).position
        later = await deposit(client, 5)
        halted = await stopped(client)
        assert halted.error.startswith(
            "PROJECTION_VERSION_CHANGED: projection versioned.balances is declared at version 2 and its documents"
            " were built by version 1"
        )
        assert "RebuildProjection" in halted.error
        assert (halted.version, halted.stored_version) == (2, 1)
        # Nothing applied on v1's documents: not 7 units plus 500 cents.
        assert (await status(client)).position == position
        assert await balance(client) == 7
        # A read waiting for the deposit would wait for ever: refused at once.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.projections.GetDocument(
                pb.GetDocumentRequest(projection=PROJECTION, key="acc-1", min_position=later)
            )
        details = details_of(refused.value)
        assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PROJECTION_FAILED")
        assert "PROJECTION_VERSION_CHANGED" in details.metadata["error"]
        assert (await console_summary(app)).startswith(
            "Version 2, its stored documents built by version 1: rebuild it. At position"
        )

        await client.projections.RebuildProjection(pb.RebuildProjectionRequest(name=PROJECTION))
        rebuilt = await caught_up(client)
        assert (rebuilt.version, rebuilt.stored_version, rebuilt.error) == (2, 2, "")
        assert await balance(client) == 1200  # all of it in cents
        assert (await console_summary(app)).startswith("Version 2. At position")
    # and the next start goes on from v2's checkpoint
    async with server(database_url, versioned(2, per_unit=100)) as client:
        await deposit(client, 1)
        again = await caught_up(client)
        assert (again.stored_version, again.error) == (2, "")
        assert await balance(client) == 1300


async def test_chronicle_projection_rebuild_follows_a_stopped_projection_through_its_rebuild(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The version's error must not read as the rebuild failing: the CLI
    # stops at a stop-on-failure projection's first error.
    await built_by_v1(database_url)
    plugin = versioned(2, per_unit=100)
    plugin.projections[0].retry_seconds = 30.0  # the rebuild, not the next retry, gets it going
    async with served(database_url, plugin) as (app, client):
        await deposit(client, 5)
        await stopped(client)
        capsys.readouterr()
        args = ["projection", "rebuild", PROJECTION, "--server", app.address]
        assert await asyncio.to_thread(cli_main, args) == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["position"] == (await status(client)).log_head
        assert ((await status(client)).stored_version, await balance(client)) == (2, 1200)


async def test_rebuild_on_change_rebuilds_a_new_version_itself(database_url: str) -> None:
    await built_by_v1(database_url)
    async with server(database_url, versioned(2, per_unit=100, rebuild_on_change=True)) as client:
        await deposit(client, 5)
        await eventually(lambda: rebuilt(client, 1200), what="the projection rebuilding itself")
        assert (await status(client)).error == ""


async def test_an_older_version_refuses_a_newer_ones_documents_even_with_rebuild_on_change(database_url: str) -> None:
    await built_by_v1(database_url)
    async with server(database_url, versioned(2, per_unit=100, rebuild_on_change=True)) as client:
        await eventually(lambda: rebuilt(client, 700), what="v2 rebuilding")
    # Rolled back: v1 would undo v2's rebuild, and a newer replica's next.
    async with server(database_url, versioned(1, per_unit=1, rebuild_on_change=True)) as client:
        halted = await stopped(client)
        assert halted.error.startswith(
            "PROJECTION_VERSION_CHANGED: projection versioned.balances is declared at version 1 and its documents"
            " were built by version 2"
        )
        assert (halted.version, halted.stored_version) == (1, 2)
        assert await balance(client) == 700


async def rebuilt(client: Client, cents: int) -> bool:
    """Whether v2 has rebuilt the projection up to the account's ``cents``
    (its status is read a field at a time: a stored version and a checkpoint
    of one moment are not enough)."""
    if (await status(client)).stored_version != 2:
        return False
    try:
        return await balance(client) == cents
    except grpc.aio.AioRpcError:
        return False  # not rebuilt that far yet: DOCUMENT_NOT_FOUND
