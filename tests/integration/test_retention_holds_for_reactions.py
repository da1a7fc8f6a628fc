"""Command retention and a reaction that is behind, on every store: the
records of the commands the reaction may send again (those decided after
the first event past its checkpoint was written) outlive their window, so
the commands it sends again are answered from them and run once; older
records are pruned as before."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.errors import ChronicleError
from service.plugins import Plugin, ProjectedEvent, Send
from service.plugins.reactions import command_id_for
from service.plugins.registry import Registry
from service.processing import retention
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.reactions import ReactionRunner
from service.processing.retention import Pruner, ReactionHorizon
from service.processing.router import Router
from service.store.base import Store, StoreAdapter
from service.store.records import DocumentWrite
from tests.support.grpc_client import command, running_server
from tests.support.waiting import eventually

AddItem, ItemAdded, Items = box.RenameBox, box.BoxRenamed, bank.OwnerBalance
BROKEN: set[str] = set()  # while it holds "bugged", that list's handler raises (a bug: not a refusal)
plugin = Plugin("held")
lists = plugin.aggregate("List", state=Items)


@lists.command(AddItem)
def add(command: box.RenameBox, state: bank.OwnerBalance, context: Any) -> box.BoxRenamed:
    if context.aggregate_id in BROKEN:
        raise RuntimeError("a bug in the List aggregate")
    return ItemAdded(name=command.name)


@lists.apply(ItemAdded)
def _added(state: bank.OwnerBalance, event: box.BoxRenamed) -> None:
    state.account_ids.append(event.name)


# Each item added to "source" goes to "copy", then to "bugged".
copier = plugin.reaction("held.copier", aggregate_types=["List"], retry_seconds=0.05)


@copier.on(ItemAdded)
def copy(event: box.BoxRenamed, envelope: ProjectedEvent, state: None) -> list[Send]:
    if envelope.aggregate_id != "source":
        return []
    return [Send("copy", AddItem(name=event.name)), Send("bugged", AddItem(name=event.name))]


REGISTRY = Registry([plugin])


@pytest.fixture(autouse=True)
def mended() -> Any:
    yield
    BROKEN.clear()


async def test_a_reaction_behind_keeps_the_records_of_what_it_may_send_again_past_their_retention(
    store: StoreAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "CLOCK_ALLOWANCE_US", 0)  # one clock here: what is held is exactly that
    roles = Store.of(store)
    executor = CommandExecutor(roles, REGISTRY)
    router = Router(executor)
    reaction = REGISTRY.reaction("held.copier")
    assert reaction is not None
    runner = ReactionRunner(
        reaction,
        registry=REGISTRY,
        submit=router.submit,
        log=roles.log,
        documents=roles.projections,
        reader=executor.loader.reader,
    )

    async def add_to_source(item: str) -> tuple[str, str]:
        """A client's command: its id, and its event's."""
        spec = REGISTRY.command("box.v1.RenameBox")
        assert spec is not None
        command_id = str(uuid.uuid4())
        request = CommandRequest(command_id=command_id, aggregate_id="source", spec=spec, message=AddItem(name=item))
        return command_id, (await router.submit(request)).events[-1].event_id

    async def settle() -> None:
        position = runner.status.position
        while (moved := await runner.step(position)) != position:
            position = moved

    async def items(aggregate_id: str) -> list[str]:
        return [ItemAdded.FromString(e.payload).name for e in await store.read_aggregate(aggregate_id)]

    old_command, old_event = await add_to_source("old")
    await settle()
    await asyncio.sleep(0.01)  # decided strictly before what follows
    BROKEN.add("bugged")
    new_command, new_event = await add_to_source("new")
    with pytest.raises(ChronicleError):
        await runner.step(runner.status.position)  # "new" went to "copy", then "bugged" failed
    assert await items("copy") == ["old", "new"]
    sent = command_id_for(f"held.copier/{new_event}", 0)  # the copy it will send again

    # An hour later, with a window of a minute: what came before the event
    # the reaction stopped at goes; from that event on, the records stay.
    pruner = Pruner(
        roles.retention,
        command_retention=60,
        refusal_retention=0,
        clock=lambda: time.time() + 3600,
        horizon=ReactionHorizon(["held.copier"], documents=roles.projections, log=roles.log, events=roles.events),
    )
    pruned = await pruner.prune()
    assert pruned.commands == 3  # "old": the client's command and the reaction's two
    assert await store.find_command(old_command) is None
    assert await store.find_command(command_id_for(f"held.copier/{old_event}", 0)) is None
    assert await store.find_command(new_command) is not None
    assert await store.find_command(sent) is not None

    # Mended: "new" is copied once, the copy answered from its record.
    BROKEN.clear()
    await settle()
    assert await items("copy") == ["old", "new"]
    assert await items("bugged") == ["old", "new"]
    assert runner.status.replayed == 1

    # Caught up: nothing held back any more.
    assert (await pruner.prune()).commands == 3  # "new": the client's command and the reaction's two


async def test_a_server_with_command_retention_holds_back_the_records_its_stuck_reaction_needs(
    store: StoreAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "CLOCK_ALLOWANCE_US", 0)
    BROKEN.add("bugged")
    async with running_server(
        store,
        registry=REGISTRY,
        command_retention=0.2,
        allow_short_retention=True,
        retention_interval=0.05,
        poll_seconds=0.05,
    ) as (app, client):
        added = await client.submit(command("source", AddItem(name="new")))
        sent = command_id_for(f"held.copier/{added.events[-1].event_id}", 0)

        async def stuck() -> bool:
            failing = app.reactions.runners["held.copier"].status.error
            return bool(failing) and await store.find_command(sent) is not None

        await eventually(stuck, what="the copy sent, then the reaction stuck on the bugged list")
        await asyncio.sleep(1.0)  # five times the window, twenty pruning rounds
        assert await store.find_command(sent) is not None
        BROKEN.clear()

        async def caught_up() -> bool:
            return await store.find_command(sent) is None  # pruned once the reaction is past it

        await eventually(caught_up, what="the reaction past the event and the record pruned")
        copies = [ItemAdded.FromString(e.payload).name for e in await store.read_aggregate("copy")]
    assert copies == ["new"]


async def test_a_pending_deadline_keeps_the_records_its_firing_may_send_again(
    store: StoreAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A deadline that was due long ago and has not fired (its function keeps
    # failing, or its firing crashed before its commit) sends its commands
    # again when it fires: the records decided since it was due are kept.
    monkeypatch.setattr(retention, "CLOCK_ALLOWANCE_US", 0)
    roles = Store.of(store)
    horizon = ReactionHorizon(["held.copier"], documents=roles.projections, log=roles.log, events=roles.events)
    assert await horizon.keep_from_us() is None  # at the log's end, nothing pending: nothing held
    due_us = 1_700_000_000_000_000
    deadline = DocumentWrite("deadline:k:t", "chronicle.v1.Deadline", b"", ("k",), due_us)
    await store.commit_projection("held.copier", expected_position=0, new_position=0, writes=[deadline])
    assert await horizon.keep_from_us() == due_us
    await store.commit_projection(
        "held.copier", expected_position=0, new_position=0, writes=[DocumentWrite("deadline:k:t")]
    )
    assert await horizon.keep_from_us() is None  # fired: nothing held
