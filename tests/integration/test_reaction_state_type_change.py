"""A reaction whose state message type changes while a process is in
flight, over a real socket and one SQLite file served by one plugin version
and then the next: without an upcaster the reaction stops at the process's
next event (DOCUMENT_TYPE_MISMATCH, naming the state key) until an operator
drops that state; with ``@reaction.upcast_state`` the old state is carried
over and the process ends as it would have."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin_pb
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import reaction_service_pb2 as pb
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.app import Application
from service.plugins import CommandContext, Plugin, ProjectedEvent, Send
from service.plugins.reactions import Reaction
from service.plugins.registry import Registry
from service.store.sqlite import SqliteStore
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.processes import cli
from tests.support.waiting import eventually

STEPS = "shifting.steps"


def shifting(version: int, *, upcaster: bool = False) -> Plugin:
    """A Feed box is created (the process notes its name), then renamed
    (the process archives the Sink box sink-<noted name> and ends). Version
    1 keeps the name in a ``box.Box``, version 2 in a ``box.CreateBox``."""
    plugin = Plugin("shifting")
    feed = plugin.aggregate("Feed", state=box.Box)
    sink = plugin.aggregate("Sink", state=box.Box)

    @feed.command(box.CreateBox)
    def create(command: box.CreateBox, state: box.Box, context: CommandContext) -> box.BoxCreated:
        return box.BoxCreated(name=command.name)

    @feed.command(box.RenameBox)
    def rename(command: box.RenameBox, state: box.Box, context: CommandContext) -> box.BoxRenamed:
        return box.BoxRenamed(name=command.name)

    @feed.apply(box.BoxCreated)
    def _created(state: box.Box, event: box.BoxCreated) -> None:
        state.name = event.name

    @feed.apply(box.BoxRenamed)
    def _renamed(state: box.Box, event: box.BoxRenamed) -> None:
        state.name = event.name

    @sink.command(box.ArchiveBox)
    def archive(command: box.ArchiveBox, state: box.Box, context: CommandContext) -> box.BoxArchived:
        return box.BoxArchived()

    @sink.apply(box.BoxArchived)
    def _archived(state: box.Box, event: box.BoxArchived) -> None:
        state.archived = True

    def by_box(envelope: ProjectedEvent) -> str:
        return envelope.aggregate_id

    if version == 1:
        one: Reaction[box.Box] = plugin.reaction(
            STEPS, aggregate_types=["Feed"], state=box.Box, state_key=by_box, retry_seconds=0.2
        )

        @one.on(box.BoxCreated)
        def noted(event: box.BoxCreated, envelope: ProjectedEvent, state: box.Box) -> None:
            state.name = event.name

        return plugin
    two: Reaction[box.CreateBox] = plugin.reaction(
        STEPS, aggregate_types=["Feed"], state=box.CreateBox, state_key=by_box, retry_seconds=0.2
    )

    @two.on(box.BoxRenamed)
    def archived(event: box.BoxRenamed, envelope: ProjectedEvent, state: box.CreateBox) -> Send:
        target = f"sink-{state.name or 'unknown'}"
        state.Clear()  # the process is over
        return Send(target, box.ArchiveBox())

    if upcaster:

        @two.upcast_state(box.Box)
        def from_box(old: box.Box) -> box.CreateBox:
            return box.CreateBox(name=old.name)

    return plugin


@asynccontextmanager
async def serving(path: Path, plugin: Plugin) -> AsyncIterator[tuple[Application, Client]]:
    store = SqliteStore(path)
    await store.open()
    try:
        async with running_server(
            store, registry=Registry([plugin]), anonymous_admin=True, poll_seconds=0.05
        ) as running:
            yield running
    finally:
        await store.close()


async def status(client: Client) -> pb.ReactionStatus:
    found: pb.ReactionStatus = await client.reactions.GetReaction(pb.GetReactionRequest(name=STEPS))
    return found


async def caught_up(client: Client) -> None:
    async def there() -> bool:
        now = await status(client)
        return bool(now.position == now.log_head and not now.error)

    await eventually(there, what="the reaction caught up")


async def archived(client: Client, aggregate_id: str) -> bool:
    events = client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id=aggregate_id))
    return any([e.event_type == "box.v1.BoxArchived" async for e in events])


async def a_process_in_flight(path: Path) -> None:
    """Version 1 noted "ann" for feed-1; the process waits for its rename."""
    async with serving(path, shifting(1)) as (_, client):
        await client.submit(command("feed-1", box.CreateBox(name="ann")))
        await caught_up(client)


async def test_a_state_of_the_old_type_stops_the_reaction_until_an_operator_drops_it(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    await a_process_in_flight(path)
    async with serving(path, shifting(2)) as (app, client):
        await client.submit(command("feed-1", box.RenameBox(name="bob")))

        async def stuck() -> bool:
            return "DOCUMENT_TYPE_MISMATCH" in (await status(client)).error

        await eventually(stuck, what="the reaction stopped on the old state")
        error = (await status(client)).error
        assert "'feed-1'" in error and "box.v1.Box" in error  # the key to drop, and the type found
        # Both types by full name (no type URL), as its metadata and plugin_check say them, and the
        # command that drops it spelled out.
        assert "is a box.v1.Box, not a box.v1.CreateBox" in error and "type.googleapis.com" not in error
        assert f"chronicle reaction {STEPS} --drop-state feed-1" in error

        unknown = pb.DropProcessStateRequest(reaction=STEPS, state_key="feed-9")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await client.reactions.DropProcessState(unknown)
        assert (details_of(missing.value).code, details_of(missing.value).reason) == (
            grpc.StatusCode.NOT_FOUND,
            "PROCESS_STATE_NOT_FOUND",
        )

        dropped = await asyncio.to_thread(
            cli, "reaction", STEPS, "--drop-state", "feed-1", server=app.address, check=False
        )
        assert (dropped.returncode, json.loads(dropped.stdout)) == (0, {"reaction": STEPS, "dropped_state": "feed-1"})
        await caught_up(client)  # it went on, from an empty state
        assert await archived(client, "sink-unknown") and not await archived(client, "sink-ann")
        entries = (await client.admin.QueryAudit(admin_pb.QueryAuditRequest(aggregate_id=f"reaction:{STEPS}"))).entries
        audited = [e.message for e in entries if e.command_type.endswith("/DropProcessState")]
        # The refused attempt is audited with its refusal, the one done with what it did.
        assert sorted(audited) == ["process state 'feed-1' dropped", f"reaction {STEPS} keeps no state under 'feed-9'"]


async def test_an_upcaster_carries_the_old_state_over(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    await a_process_in_flight(path)
    async with serving(path, shifting(2, upcaster=True)) as (_, client):
        await client.submit(command("feed-1", box.RenameBox(name="bob")))
        await caught_up(client)
        assert await archived(client, "sink-ann")


async def test_dropping_a_state_takes_an_administrator(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "events.db")
    await store.open()
    try:
        async with running_server(store, registry=Registry([shifting(2)])) as (_, client):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.reactions.DropProcessState(pb.DropProcessStateRequest(reaction=STEPS, state_key="k"))
        assert details_of(refused.value).code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await store.close()


def test_an_upcaster_needs_a_state_and_an_old_type() -> None:
    plugin = Plugin("odd")
    stateless = plugin.reaction("odd.none")
    with pytest.raises(ValueError, match="declares no state"):
        stateless.upcast_state(box.Box)
    stateful = plugin.reaction("odd.some", state=box.Box)
    with pytest.raises(ValueError, match="is its state type now"):
        stateful.upcast_state(box.Box)
