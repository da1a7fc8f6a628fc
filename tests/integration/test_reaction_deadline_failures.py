"""A reaction's ``@on_deadline`` function that raises (a plugin's bug), on a
real server process with a real client, on PostgreSQL and SQLite (the
plugins of tests/support/failing_deadline.py: the function raises for orders
"bad-*" while a flag file exists):

- ``on_failure="park"``: the deadline is tried again until its
  ``max_attempts``-th failure, then parked (listed among the parked commands
  with its process, name and the error) while the reaction goes on with the
  other processes' deadlines and with new events; replaying it while the bug
  is there leaves it parked (replays counted, the error again); once fixed,
  replaying runs the function again (its command accepted), and dismissing
  another forgets it (it never fires);
- ``on_failure="stop"`` (the default): the reaction stops there, its status
  naming the deadline and the process, and holds its other deadlines and
  its events until the function works; then it fires and goes on;
- a deadline's *command* whose handler raises, under ``on_failure="park"``:
  tried again until its ``max_attempts``-th failure, then parked as an
  event's command is (HANDLER_FAILED, the command and the scheduling event
  named) while the deadline fires and the reaction goes on; replayed once
  fixed, it is accepted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import reaction_service_pb2 as reaction_pb
from chronicle.v1 import reaction_service_pb2_grpc as reaction_grpc
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.client import ChronicleClient, RetryPolicy
from tests.support.failing_deadline import COMMAND_FLAG_ENV, COMMANDS, FLAG_ENV, MAX_ATTEMPTS, PARKS, STOPS
from tests.support.processes import Replica, cli
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow]

PATIENT = RetryPolicy(max_attempts=200, initial_backoff=0.05, max_backoff=0.25)


def _flags(plugin: str) -> list[str]:
    return ["--no-example-plugins", "--plugin", f"tests.support.failing_deadline:{plugin}", "--anonymous-admin"]


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/events.db"
    request.applymarker(pytest.mark.postgres)
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def bug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The flag file: while it exists, the deadline function raises for "bad-*" orders."""
    flag = tmp_path / "bug"
    flag.touch()
    monkeypatch.setenv(FLAG_ENV, str(flag))  # the server process inherits it
    return flag


async def _types(client: ChronicleClient, order_id: str) -> list[str]:
    return [event.envelope.event_type.removeprefix("box.v1.") async for event in client.read(order_id)]


async def test_a_failing_deadline_is_parked_and_the_reaction_goes_on(
    database_url: str, tmp_path: Path, bug: Path
) -> None:
    server = Replica(database_url, log_path=tmp_path / "server.log", extra=_flags("parks"))
    try:
        server.start()
        async with ChronicleClient.connect(server.address, retry=PATIENT) as client:
            await client.submit("bad-1", box.CreateBox(name="after-100"))
            await client.submit("bad-2", box.CreateBox(name="after-100"))
            await client.submit("good-1", box.CreateBox(name="after-400"))  # due after the bad ones

            async def parked() -> bool:
                return (await client.reactions.get(PARKS)).parked == 2

            await eventually(parked, what="both bad deadlines parked")
            listed = [entry async for entry in client.reactions.parked(PARKS)]
            assert sorted(entry.deadline.state_key for entry in listed) == ["bad-1", "bad-2"]
            for entry in listed:
                assert entry.deadline.deadline.name == "payment"
                assert entry.reason == "REACTION_FAILED"
                assert f"RuntimeError: the bug of order {entry.deadline.state_key}" in entry.message
                assert entry.metadata["deadline"] == "payment"
                assert entry.deadline.subjects == [entry.deadline.state_key]
                assert not entry.HasField("command") and entry.aggregate_id == ""
            by_key = {entry.deadline.state_key: entry for entry in listed}
            printed = await asyncio.to_thread(cli, "reaction", PARKS, "--parked", server=server.address)
            shown = [json.loads(line) for line in printed.stdout.splitlines()]
            assert sorted(line["deadline"]["state_key"] for line in shown) == ["bad-1", "bad-2"]
            assert all("command" not in line and line["reason"] == "REACTION_FAILED" for line in shown)
            logged = (tmp_path / "server.log").read_text()
            assert f"parked deadline 'payment' of process 'bad-1' (as {by_key['bad-1'].command_id})" in logged
            assert f"after {MAX_ATTEMPTS} failures of its function" in logged

            # The reaction went on: good-1's deadline fired, and new events are handled.
            async def good_cancelled() -> bool:
                return await _types(client, "good-1") == ["BoxCreated", "BoxArchived"]

            await eventually(good_cancelled, what="good-1's deadline fired past the parked ones")
            await client.submit("good-2", box.CreateBox(name="after-100"))

            async def good_2_cancelled() -> bool:
                return await _types(client, "good-2") == ["BoxCreated", "BoxArchived"]

            await eventually(good_2_cancelled, what="a later process's deadline fired")

            async def caught_up() -> bool:  # the deadline's own event (BoxArchived) read too
                now = await client.reactions.get(PARKS)
                return now.position == now.log_head

            await eventually(caught_up, what="the reaction at the log's end")
            status = await client.reactions.get(PARKS)
            assert (status.error, status.position, status.deadlines) == ("", status.log_head, 0)
            assert status.last_error.startswith("REACTION_FAILED: reaction faulty.parks failed on deadline 'payment'")
            state = await client.reactions.state(PARKS, "bad-1")
            assert list(state.deadlines) == []  # parked: no longer pending
            assert '"awaiting-payment"' in state.state_json  # the failed call changed nothing
            assert await _types(client, "bad-1") == ["BoxCreated"]

            # Replayed with the bug still there: it stays parked, with the error again.
            again = await client.reactions.replay(PARKS, by_key["bad-1"].command_id)
            assert (again.accepted, again.reason) == (False, "REACTION_FAILED")
            assert "RuntimeError: the bug of order bad-1" in again.message
            still = {entry.deadline.state_key: entry async for entry in client.reactions.parked(PARKS)}
            assert (still["bad-1"].replays, still["bad-2"].replays) == (1, 0)

            await asyncio.to_thread(bug.unlink)  # the fix deployed
            fixed = await client.reactions.replay(PARKS, by_key["bad-1"].command_id)
            assert fixed.accepted
            assert await _types(client, "bad-1") == ["BoxCreated", "BoxArchived"]  # the function ran again
            await client.reactions.dismiss(PARKS, by_key["bad-2"].command_id)
            assert [entry async for entry in client.reactions.parked(PARKS)] == []
            status = await client.reactions.get(PARKS)
            assert (status.parked, status.deadlines) == (0, 0)
            assert await _types(client, "bad-2") == ["BoxCreated"]  # dismissed: never fired
    finally:
        if server.running:
            server.stop()


async def test_a_failing_deadline_stops_a_reaction_that_does_not_park(
    database_url: str, tmp_path: Path, bug: Path
) -> None:
    server = Replica(database_url, log_path=tmp_path / "server.log", extra=_flags("stops"))
    try:
        server.start()
        async with ChronicleClient.connect(server.address, retry=PATIENT) as client:
            await client.submit("bad-1", box.CreateBox(name="after-100"))
            await client.submit("good-1", box.CreateBox(name="after-300"))

            async def stopped() -> bool:
                return (await client.reactions.get(STOPS)).error != ""

            await eventually(stopped, what="the reaction stopped at bad-1's deadline")
            status = await client.reactions.get(STOPS)
            assert status.error.startswith(
                "REACTION_FAILED: reaction faulty.stops failed on deadline 'payment' of process 'bad-1':"
                " RuntimeError: the bug of order bad-1"
            )
            await client.submit("good-2", box.CreateBox(name="after-100"))
            await asyncio.sleep(1.0)  # tried again every 0.2 s meanwhile, failing again
            status = await client.reactions.get(STOPS)
            assert status.error != "" and status.position < status.log_head  # its events wait
            assert (status.parked, status.deadlines) == (0, 2)  # good-2's not scheduled yet
            assert await _types(client, "good-1") == ["BoxCreated"]  # held behind bad-1's

            await asyncio.to_thread(bug.unlink)  # the fix deployed: it fires, and the reaction goes on

            async def went_on() -> bool:
                return [await _types(client, order) for order in ("bad-1", "good-1", "good-2")] == [
                    ["BoxCreated", "BoxArchived"]
                ] * 3

            await eventually(went_on, what="every deadline fired once the function works")
            status = await client.reactions.get(STOPS)
            assert (status.error, status.parked, status.deadlines) == ("", 0, 0)
    finally:
        if server.running:
            server.stop()


async def test_a_deadlines_command_that_fails_for_a_plugin_bug_is_parked_and_the_reaction_goes_on(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = tmp_path / "handler-bug"
    flag.touch()
    monkeypatch.setenv(COMMAND_FLAG_ENV, str(flag))  # while it exists, ArchiveBox raises for "bad-*"
    server = Replica(database_url, log_path=tmp_path / "server.log", extra=_flags("commands"))
    try:
        server.start()
        async with ChronicleClient.connect(server.address, retry=PATIENT) as client:
            created = await client.submit("bad-1", box.CreateBox(name="after-100"))
            await client.submit("good-1", box.CreateBox(name="after-400"))  # due after the bad one

            async def parked() -> bool:
                return (await client.reactions.get(COMMANDS)).parked == 1

            await eventually(parked, what="bad-1's deadline's command parked")
            (entry,) = [entry async for entry in client.reactions.parked(COMMANDS)]
            assert (entry.reason, entry.aggregate_id) == ("HANDLER_FAILED", "bad-1")
            assert entry.message == "the handler for box.v1.ArchiveBox failed: RuntimeError"
            assert entry.command.type_url.endswith("box.v1.ArchiveBox")
            assert not entry.HasField("deadline")  # the command is parked, not the deadline
            assert (entry.event_id, entry.event_aggregate_id) == (created.events[0].event_id, "bad-1")
            logged = (tmp_path / "server.log").read_text()
            assert f"parked command {entry.command_id} (box.v1.ArchiveBox for bad-1) after {MAX_ATTEMPTS}" in logged

            # The deadline fired (its state saved, no longer pending), and the reaction went on.
            async def good_cancelled() -> bool:
                return await _types(client, "good-1") == ["BoxCreated", "BoxArchived"]

            await eventually(good_cancelled, what="good-1's deadline fired past bad-1's")
            await client.submit("good-2", box.CreateBox(name="after-100"))

            async def good_2_cancelled() -> bool:
                return await _types(client, "good-2") == ["BoxCreated", "BoxArchived"]

            await eventually(good_2_cancelled, what="a later process's deadline fired")

            async def caught_up() -> bool:  # the deadline's own event (BoxArchived) read too
                now = await client.reactions.get(COMMANDS)
                return now.position == now.log_head

            await eventually(caught_up, what="the reaction at the log's end")
            status = await client.reactions.get(COMMANDS)
            assert (status.error, status.position, status.deadlines) == ("", status.log_head, 0)
            assert (status.parked, status.refused, status.accepted) == (1, 1, 2)
            assert status.last_error.startswith("HANDLER_FAILED")
            state = await client.reactions.state(COMMANDS, "bad-1")
            assert list(state.deadlines) == [] and '"cancelling"' in state.state_json  # fired
            assert await _types(client, "bad-1") == ["BoxCreated"]

            # Replayed, as an event's parked command is, once the fix is deployed.
            await asyncio.to_thread(flag.unlink)  # the fix deployed
            fixed = await client.reactions.replay(COMMANDS, entry.command_id)
            assert fixed.accepted
            assert await _types(client, "bad-1") == ["BoxCreated", "BoxArchived"]
            assert [entry async for entry in client.reactions.parked(COMMANDS)] == []
    finally:
        if server.running:
            server.stop()


async def test_a_deadline_parked_while_an_operator_pages_comes_in_a_later_page(
    database_url: str, tmp_path: Path, bug: Path
) -> None:
    """A parked deadline is listed by when it was parked, not at its
    scheduling event's position: one scheduled by an early event and parked
    after an operator read a page past that position comes in the next."""
    server = Replica(database_url, log_path=tmp_path / "server.log", extra=_flags("parks"))
    try:
        server.start()
        async with (
            ChronicleClient.connect(server.address, retry=PATIENT) as client,
            grpc.aio.insecure_channel(server.address) as channel,
        ):
            listing = reaction_grpc.ReactionServiceStub(channel)  # a page at a time, as an operator's tool reads
            # The earliest event, parked last: due long after the others are
            # parked and the first page is read, however slow the host.
            await client.submit("bad-late", box.CreateBox(name="after-15000"))
            await client.submit("bad-1", box.CreateBox(name="after-100"))
            await client.submit("bad-2", box.CreateBox(name="after-100"))

            async def two_parked() -> bool:
                return (await client.reactions.get(PARKS)).parked == 2

            await eventually(two_parked, what="bad-1's and bad-2's deadlines parked")
            first = await listing.ListParkedCommands(reaction_pb.ListParkedCommandsRequest(reaction=PARKS, page_size=1))
            assert [entry.deadline.state_key for entry in first.commands] == ["bad-1"]
            assert first.next_page_token
            assert (await client.reactions.get(PARKS)).parked == 2  # bad-late's not parked yet

            async def three_parked() -> bool:
                return (await client.reactions.get(PARKS)).parked == 3

            await eventually(three_parked, within=60, what="bad-late's deadline parked")
            rest = await listing.ListParkedCommands(
                reaction_pb.ListParkedCommandsRequest(reaction=PARKS, page_token=first.next_page_token)
            )
            assert [entry.deadline.state_key for entry in rest.commands] == ["bad-2", "bad-late"]
            assert [entry.sequence for entry in [*first.commands, *rest.commands]] == [1, 2, 3]
            listed = [entry.deadline.state_key async for entry in client.reactions.parked(PARKS)]
            assert listed == ["bad-1", "bad-2", "bad-late"]  # oldest first: in the order parked
    finally:
        if server.running:
            server.stop()
