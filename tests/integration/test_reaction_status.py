"""Where a reaction runs and what it met there, as GetReaction (over a real
socket), ``chronicle reaction NAME`` and the console's Reactions page say
it: ``runner`` names the replica that runs it; ``error`` is the failure
holding it here now and ``last_error`` (with ``last_error_time``) the last
one it met here, kept once it is over, as GetProjection says of a
projection; and a failed batch is tried again every ``retry_seconds`` its
plugin declared (``retry_interval`` in the status), as a projection's is."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import pytest

from chronicle.v1 import reaction_service_pb2 as pb
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service import cli as cli_module
from service.app import Application
from service.plugins import Plugin, ProjectedEvent
from service.plugins.registry import Registry
from service.store.memory import MemoryStore
from tests.support import plugins
from tests.support.console import row_of as console_row
from tests.support.console import text_of
from tests.support.grpc_client import Client, command, running_server
from tests.support.waiting import eventually

NAME = "flaky.watch"
# A reaction whose function fails while FAILING holds something, tried
# again every 0.2 s (the default is 5 s); ATTEMPTS counts its calls.
flaky = Plugin("flaky")
watching = flaky.reaction(NAME, aggregate_types=["Gate"], retry_seconds=0.2)
FAILING: set[str] = set()
ATTEMPTS: list[str] = []


@watching.on(box.BoxRenamed)
def _renamed(event: box.BoxRenamed, envelope: ProjectedEvent, state: None) -> None:
    ATTEMPTS.append(envelope.event_id)
    if FAILING:
        raise RuntimeError("the flaky reaction refuses today")


REGISTRY = Registry([plugins.gates, flaky])


@pytest.fixture
async def server() -> AsyncIterator[tuple[Application, Client]]:
    FAILING.clear()
    ATTEMPTS.clear()
    async with running_server(
        MemoryStore(), registry=REGISTRY, poll_seconds=0.05, console_listen="127.0.0.1:0"
    ) as served:
        yield served
    FAILING.clear()


async def status_of(client: Client) -> pb.ReactionStatus:
    status: pb.ReactionStatus = await client.reactions.GetReaction(pb.GetReactionRequest(name=NAME))
    return status


async def row_of(app: Application) -> list[str]:
    """The reaction's row on ``app``'s Reactions page, each cell as markup."""
    return await console_row(app, "/reactions", NAME)


def shown_by_cli(app: Application, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    capsys.readouterr()
    assert cli_module.main(["reaction", NAME, "--server", app.address]) == 0
    shown: dict[str, object] = json.loads(capsys.readouterr().out)
    return shown


async def test_a_reaction_says_where_it_runs_its_error_now_and_the_last_one_it_met(
    server: tuple[Application, Client], capsys: pytest.CaptureFixture[str]
) -> None:
    app, client = server
    here = app.leases.member.address

    async def running() -> bool:
        return (await status_of(client)).runner == here

    await eventually(running, what="the reaction's runner known")
    status = await status_of(client)
    assert (status.running, status.error, status.last_error) == (True, "", "")
    assert not status.HasField("last_error_time")
    assert text_of((await row_of(app))[5]) == "running here"

    FAILING.add("on")
    await client.submit(command("source", box.ArchiveBox()))
    await client.submit(command("source", box.RenameBox(name="ann")))

    async def failing() -> bool:
        return "the flaky reaction refuses today" in (await status_of(client)).error

    await eventually(failing, what="the reaction failing")
    status = await status_of(client)
    assert status.error.startswith("REACTION_FAILED: ") and status.last_error == status.error
    assert status.HasField("last_error_time") and status.runner == here
    cells = await row_of(app)
    assert (text_of(cells[5]), text_of(cells[6])) == ("failed", "this replica")
    assert 'class="error"' in cells[8] and "the flaky reaction refuses today" in text_of(cells[8])
    shown = await asyncio.to_thread(shown_by_cli, app, capsys)
    assert (shown["runner"], shown["error"], shown["last_error"]) == (here, status.error, status.error)
    # It may have failed again between the two reads (it retries): the CLI's
    # time is that one's or a later one's.
    assert str(shown["last_error_time"]) >= status.last_error_time.ToJsonString()

    FAILING.clear()

    async def going_again() -> bool:
        status = await status_of(client)
        return not status.error and status.position == status.log_head

    await eventually(going_again, what="the reaction going again")
    status = await status_of(client)
    # Over: nothing holds it now; what it met is still said, with when.
    assert "the flaky reaction refuses today" in status.last_error and status.HasField("last_error_time")
    listed = await client.reactions.ListReactions(pb.ListReactionsRequest())
    assert [r for r in listed.reactions if r.name == NAME] == [status]
    cells = await row_of(app)
    assert text_of(cells[5]) == "running here" and 'class="error"' not in cells[8]
    past = text_of(cells[8])
    assert re.search(r"Over\. Met here last at \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ:", past), past
    assert "the flaky reaction refuses today" in past and 'class="past-error"' in cells[8]
    shown = await asyncio.to_thread(shown_by_cli, app, capsys)
    assert (shown["error"], shown["last_error"]) == ("", status.last_error)


async def test_a_failed_batch_is_tried_again_every_retry_seconds_its_plugin_declared(
    server: tuple[Application, Client], capsys: pytest.CaptureFixture[str]
) -> None:
    app, client = server
    status = await status_of(client)
    assert status.retry_interval.ToMilliseconds() == 200
    assert (await asyncio.to_thread(shown_by_cli, app, capsys))["retry_interval"] == "0.200s"
    FAILING.add("on")
    await client.submit(command("source", box.ArchiveBox()))
    await client.submit(command("source", box.RenameBox(name="ann")))
    # Five tries of the one event: about a second at 0.2 s apart (a single
    # one in these four seconds at the 5 s default).
    await eventually(lambda: len(ATTEMPTS) >= 5, within=4, what="five tries")
    assert len(set(ATTEMPTS)) == 1
    FAILING.clear()

    async def going_again() -> bool:
        status = await status_of(client)
        return not status.error and status.position == status.log_head

    await eventually(going_again, within=4, what="the reaction going again")
