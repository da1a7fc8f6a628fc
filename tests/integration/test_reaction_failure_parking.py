"""A command a reaction sends that fails for a bug in the plugin that runs
it (HANDLER_FAILED), over a real socket: with ``on_failure="stop"`` (the
default) the reaction stops there until the plugin is fixed; with
``on_failure="park"`` the command is parked with its reason after
``max_attempts`` failures and the reaction goes on, and once the plugin is
fixed an operator replays it. A failure that waiting cures (a full queue)
is never parked."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import reaction_service_pb2 as pb
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.errors import Overloaded
from service.plugins import CommandCall, CommandContext, Middleware, Plugin, ProjectedEvent, Send
from service.plugins.projections import OnFailure
from service.plugins.registry import Registry
from service.store.sqlite import SqliteStore
from tests.support.grpc_client import Client, command, running_server
from tests.support.waiting import eventually

# What is broken now: the sink's handler raises on a box named "bug" while
# "bug" is set; a middleware says the queue is full for "busy" while "busy"
# is set. Counted: how many times each was met.
FAULTS: dict[str, bool] = {}
MET: dict[str, int] = {}


def fragile_plugin(on_failure: OnFailure) -> Plugin:
    """Boxes created in a "Feed" are relayed as a RenameBox to the "Sink"
    aggregate sink-<name>, by the reaction "fragile.relay"."""
    plugin = Plugin(f"fragile_{on_failure}")
    feed = plugin.aggregate("Feed", state=box.Box)
    sink = plugin.aggregate("Sink", state=box.Box)

    @feed.command(box.CreateBox)
    def create(command: box.CreateBox, state: box.Box, context: CommandContext) -> box.BoxCreated:
        return box.BoxCreated(name=command.name)

    @feed.apply(box.BoxCreated)
    def _created(state: box.Box, event: box.BoxCreated) -> None:
        state.name = event.name

    @sink.command(box.RenameBox)
    def rename(command: box.RenameBox, state: box.Box, context: CommandContext) -> box.BoxRenamed:
        MET[command.name] = MET.get(command.name, 0) + 1
        if FAULTS.get(command.name):
            raise RuntimeError(f"a bug in the sink on {command.name!r}")
        return box.BoxRenamed(name=command.name)

    @sink.apply(box.BoxRenamed)
    def _renamed(state: box.Box, event: box.BoxRenamed) -> None:
        state.name = event.name

    relay = plugin.reaction(
        "fragile.relay", aggregate_types=["Feed"], on_failure=on_failure, max_attempts=2, retry_seconds=0.2
    )

    @relay.on(box.BoxCreated)
    def pass_on(event: box.BoxCreated, envelope: ProjectedEvent, state: None) -> Send:
        return Send(f"sink-{event.name}", box.RenameBox(name=event.name))

    class Busy(Middleware):
        name = "busy"

        def before(self, call: CommandCall) -> None:
            if isinstance(call.message, box.RenameBox) and call.message.name == "busy" and FAULTS.get("busy"):
                MET["busy"] = MET.get("busy", 0) + 1
                raise Overloaded("the queue is full", reason="QUEUE_FULL")

    plugin.add_middleware(Busy())
    return plugin


async def serve(tmp_path: Path, on_failure: OnFailure) -> AsyncIterator[Client]:
    FAULTS.clear()
    MET.clear()
    store = SqliteStore(tmp_path / "events.db")
    await store.open()
    registry = Registry([fragile_plugin(on_failure)])
    try:
        async with running_server(store, registry=registry, anonymous_admin=True, poll_seconds=0.05) as (_, client):
            yield client
    finally:
        await store.close()


@pytest.fixture
async def parking(tmp_path: Path) -> AsyncIterator[Client]:
    async for client in serve(tmp_path, "park"):
        yield client


@pytest.fixture
async def stopping(tmp_path: Path) -> AsyncIterator[Client]:
    async for client in serve(tmp_path, "stop"):
        yield client


async def create(client: Client, *names: str) -> None:
    for name in names:
        await client.submit(command(f"feed-{name}", box.CreateBox(name=name)))


async def status(client: Client) -> pb.ReactionStatus:
    found: pb.ReactionStatus = await client.reactions.GetReaction(pb.GetReactionRequest(name="fragile.relay"))
    return found


async def renamed(client: Client, name: str) -> bool:
    events = client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id=f"sink-{name}"))
    return any([e.event_type == "box.v1.BoxRenamed" async for e in events])


async def caught_up(client: Client) -> pb.ReactionStatus:
    async def there() -> bool:
        now = await status(client)
        return bool(now.position == now.log_head and not now.error)

    await eventually(there, what="the reaction caught up")
    return await status(client)


async def parked(client: Client) -> list[pb.ParkedCommand]:
    listed = await client.reactions.ListParkedCommands(pb.ListParkedCommandsRequest(reaction="fragile.relay"))
    return list(listed.commands)


async def test_park_parks_a_command_its_handler_fails_on_after_max_attempts_and_goes_on(
    parking: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.processing.reactions")
    FAULTS["bug"] = True
    await create(parking, "a", "bug", "c")
    now = await caught_up(parking)
    assert MET["bug"] == 2  # max_attempts, each failure a batch tried again
    assert "HANDLER_FAILED" in now.last_error
    (bug,) = await parked(parking)
    assert (bug.aggregate_id, bug.reason) == ("sink-bug", "HANDLER_FAILED")
    assert bug.message  # the failure's message, as a client would have had it
    # Logged by reason and ids: the message (which may quote a value) stays in the parked command.
    (line,) = [r.getMessage() for r in caplog.records if "parked command" in r.getMessage()]
    assert bug.command_id in line and "HANDLER_FAILED" in line and bug.message not in line
    assert await renamed(parking, "a") and await renamed(parking, "c")  # the events after it were handled
    assert (now.parked, now.refused) == (1, 1)
    assert (now.on_failure, now.max_attempts) == ("park", 2)  # as declared, shown to operators

    # The fix deployed: an operator replays what that bug parked.
    FAULTS["bug"] = False
    request = pb.ReplayAllParkedCommandsRequest(reaction="fragile.relay", reason="HANDLER_FAILED")
    replayed = await parking.reactions.ReplayAllParkedCommands(request)
    assert (replayed.accepted, replayed.refused) == (1, 0)
    assert await renamed(parking, "bug") and await parked(parking) == []


async def test_stop_holds_the_reaction_at_the_failing_command_until_the_plugin_is_fixed(stopping: Client) -> None:
    FAULTS["bug"] = True
    await create(stopping, "a", "bug", "c")

    async def retried() -> bool:
        return MET.get("bug", 0) >= 4 and "HANDLER_FAILED" in (await status(stopping)).error

    await eventually(retried, what="the failing command tried again, past max_attempts")
    now = await status(stopping)
    assert now.position < now.log_head and now.parked == 0
    assert (now.on_failure, now.max_attempts) == ("stop", 0)
    assert await parked(stopping) == []
    assert not await renamed(stopping, "c")  # the events after it wait

    FAULTS["bug"] = False
    await caught_up(stopping)
    assert await renamed(stopping, "bug") and await renamed(stopping, "c")
    assert await parked(stopping) == []


async def test_park_never_parks_a_failure_that_waiting_cures(parking: Client) -> None:
    FAULTS["busy"] = True
    await create(parking, "busy", "d")

    async def retried() -> bool:
        return MET.get("busy", 0) >= 4

    await eventually(retried, what="the overloaded command tried again, past max_attempts")
    assert await parked(parking) == []
    assert "QUEUE_FULL" in (await status(parking)).error
    assert not await renamed(parking, "d")

    FAULTS["busy"] = False
    await caught_up(parking)
    assert await renamed(parking, "busy") and await renamed(parking, "d")
    assert await parked(parking) == []


def test_on_failure_takes_stop_or_park() -> None:
    with pytest.raises(ValueError, match="on_failure must be 'stop' or 'park'"):
        Plugin("odd").reaction("odd.relay", on_failure="skip")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="max_attempts must be at least 1"):
        Plugin("odd").reaction("odd.relay", on_failure="park", max_attempts=0)
