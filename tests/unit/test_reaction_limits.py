"""A reaction's two limits, on the memory store through the real executor.

- Too many parked commands: the reaction stops (TOO_MANY_PARKED) just
  before the event that would park one too many, having committed the
  events before it; each parked command an operator deals with lets it go
  on by one event that parks. The commands of that event sent before the
  one that could not be parked are sent again later under the same ids:
  nothing happens twice.
- Loops: every command a reaction sends carries its cause chain's number
  of reaction hops; one that would go past the reaction's ``max_hops``
  (100 by default) is parked as REACTION_LOOP instead of sent, logged, and
  counted ``parked``. A client cannot set the count.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from chronicle.v1 import command_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.errors import InvalidInput, ReactionFailed
from service.plugins import Plugin, ProjectedEvent, Send, ValidationError
from service.plugins.registry import Registry
from service.processing import reaction_documents
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.reaction_documents import list_parked
from service.processing.reactions import ReactionRunner
from service.processing.router import Router
from service.store.base import Store
from service.store.memory import MemoryStore
from service.store.records import RecordedEvent
from tests.support.waiting import eventually

# Spelled out, not imported: the key is part of the contract (events carry it).
HOPS = "chronicle.reaction_hops"

# Lists of items (borrowed messages: RenameBox adds an item, BoxRenamed
# records it); the "closed" list refuses everything.
AddItem, ItemAdded, Items = box.RenameBox, box.BoxRenamed, bank.OwnerBalance
plugin = Plugin("limits")
lists = plugin.aggregate("List", state=Items)


@lists.command(AddItem)
def add(command: box.RenameBox, state: bank.OwnerBalance, context: Any) -> box.BoxRenamed:
    if context.aggregate_id == "closed":
        raise ValidationError("closed", reason="CLOSED")
    return ItemAdded(name=command.name)


@lists.apply(ItemAdded)
def _added(state: bank.OwnerBalance, event: box.BoxRenamed) -> None:
    state.account_ids.append(event.name)


# For each item added to "source": the item to "open" (accepted), then to
# "closed" (refused, parked: no on_refused).
parker = plugin.reaction("limits.parker", aggregate_types=["List"])


@parker.on(ItemAdded)
def park_each(event: box.BoxRenamed, envelope: ProjectedEvent, state: None) -> list[Send]:
    if envelope.aggregate_id != "source":
        return []
    return [Send("open", AddItem(name=event.name)), Send("closed", AddItem(name=event.name))]


# Adds an item to "loop" for each item added to "loop": for ever, but for
# the hop limit. It even tries to reset the count, which it cannot.
looper = plugin.reaction("limits.looper", aggregate_types=["List"])


@looper.on(ItemAdded)
def again(event: box.BoxRenamed, envelope: ProjectedEvent, state: None) -> Send | None:
    if envelope.aggregate_id != "loop":
        return None
    return Send("loop", AddItem(name=str(int(event.name) + 1)), metadata={HOPS: "0"})


REGISTRY = Registry([plugin])


class Harness:
    def __init__(self, registry: Registry = REGISTRY) -> None:
        self.registry = registry
        self.store = MemoryStore()
        self.roles = Store.of(self.store)
        self.executor = CommandExecutor(self.roles, registry)
        self.router = Router(self.executor)
        self.outcomes: list[tuple[str, str]] = []

    async def add(self, aggregate_id: str, item: str) -> int:
        """A client's command: the position of its event."""
        spec = self.registry.command("box.v1.RenameBox")
        assert spec is not None
        request = CommandRequest(
            command_id=str(uuid.uuid4()),
            aggregate_id=aggregate_id,
            spec=spec,
            message=AddItem(name=item),
            user_id="ann",
            correlation_id=f"journey-{item}",
        )
        result = await self.router.submit(request)
        return result.events[-1].position

    def runner(self, name: str, **options: Any) -> ReactionRunner:
        reaction = self.registry.reaction(name)
        assert reaction is not None
        return ReactionRunner(
            reaction,
            registry=self.registry,
            submit=self.router.submit,
            log=self.roles.log,
            documents=self.roles.projections,
            reader=self.executor.loader.reader,
            outcomes=lambda reaction, outcome: self.outcomes.append((reaction, outcome)),
            **options,
        )

    async def events(self, aggregate_id: str) -> list[RecordedEvent]:
        return await self.store.read_aggregate(aggregate_id)

    async def items(self, aggregate_id: str) -> list[str]:
        return [ItemAdded.FromString(e.payload).name for e in await self.events(aggregate_id)]

    async def parked_items(self, reaction: str) -> list[str]:
        return [AddItem.FromString(p.command.value).name for p in await list_parked(self.roles.projections, reaction)]


# -- too many parked commands -------------------------------------------------------


async def test_each_parked_command_dealt_with_lets_the_reaction_move_past_one_more_parking_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reaction_documents, "MAX_PARKED", 3)
    run = Harness()
    items = [f"i{n}" for n in range(6)]
    at = {item: await run.add("source", item) for item in items}  # each parks one command
    runner = run.runner("limits.parker")
    with pytest.raises(ReactionFailed) as full:
        await runner.step(0)
    assert full.value.reason == "TOO_MANY_PARKED"
    # i0, i1, i2 parked and committed; it stopped just before i3.
    assert await run.store.projection_position("limits.parker") == at["i2"]
    assert runner.status.position == at["i2"]
    assert (runner.status.parked, await run.parked_items("limits.parker")) == (3, ["i0", "i1", "i2"])

    for dismissed, moved_past in (("i0", "i3"), ("i1", "i4")):
        (first, *_) = await list_parked(run.roles.projections, "limits.parker")
        assert AddItem.FromString(first.command.value).name == dismissed
        await runner.dismiss(first.command_id)  # one slot free
        with pytest.raises(ReactionFailed) as full:
            await runner.step(runner.status.position)
        assert full.value.reason == "TOO_MANY_PARKED"
        assert await run.store.projection_position("limits.parker") == at[moved_past]  # exactly one further
        assert runner.status.parked == 3

    # The commands to "open" of the events it stopped at went out each time,
    # and again, under the same ids: one item each.
    assert await run.items("open") == items[:6]
    assert runner.status.replayed >= 2
    # Each parked command counted once, though i3 and i4 met the limit first.
    assert run.outcomes.count(("limits.parker", "parked")) == 5

    for entry in await list_parked(run.roles.projections, "limits.parker"):
        await runner.dismiss(entry.command_id)
    assert await runner.step(runner.status.position) == await run.store.log_head()
    assert await run.parked_items("limits.parker") == ["i5"]


async def test_a_running_reaction_reports_too_many_parked_and_goes_on_once_one_is_dismissed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reaction_documents, "MAX_PARKED", 2)
    run = Harness()
    at = [await run.add("source", f"i{n}") for n in range(4)]
    runner = run.runner("limits.parker", retry_interval=0.01, poll_interval=0.01)
    runner.start()
    try:
        await eventually(lambda: runner.status.error.startswith("TOO_MANY_PARKED"), what="the limit reported")
        assert runner.status.position == at[1]
        (first, _) = await list_parked(run.roles.projections, "limits.parker")
        await runner.dismiss(first.command_id)
        await eventually(lambda: runner.status.position == at[2], what="one event further")
        await eventually(lambda: runner.status.error.startswith("TOO_MANY_PARKED"), what="the limit again")
    finally:
        await runner.stop()
    assert await run.parked_items("limits.parker") == ["i1", "i2"]


# -- loops --------------------------------------------------------------------------


async def settle(runner: ReactionRunner, *, steps: int = 500) -> int:
    """Step ``runner`` from its checkpoint until it stands still; how many steps moved it."""
    position = runner.status.position
    for moved in range(steps):
        after = await runner.step(position)
        if after == position:
            return moved
        position = after
    raise AssertionError(f"the reaction still ran after {steps} steps: a loop nothing stops")


async def test_a_reaction_that_reacts_to_its_own_commands_events_without_end_stops_at_its_hop_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = Harness()
    await run.add("loop", "0")  # a client's command: hop 0
    runner = run.runner("limits.looper")
    with caplog.at_level(logging.WARNING, logger="service.processing.reactions"):
        await settle(runner)
    # The client's item, then one per hop: 100 by default.
    events = await run.events("loop")
    assert [ItemAdded.FromString(e.payload).name for e in events] == [str(n) for n in range(101)]
    assert HOPS not in events[0].metadata
    assert [e.metadata[HOPS] for e in events[1:]] == [str(n) for n in range(1, 101)]  # the reaction's "0" ignored
    (parked,) = await list_parked(run.roles.projections, "limits.looper")
    assert (parked.reason, parked.aggregate_id, parked.event_id) == ("REACTION_LOOP", "loop", events[-1].event_id)
    assert AddItem.FromString(parked.command.value).name == "101"
    assert parked.command_metadata[HOPS] == "101"
    assert parked.correlation_id == "journey-0"
    assert (runner.status.parked, runner.status.accepted, runner.status.error) == (1, 100, "")
    assert run.outcomes.count(("limits.looper", "parked")) == 1
    (warning,) = [r for r in caplog.records if "REACTION_LOOP" in r.getMessage()]
    said = warning.getMessage()
    assert warning.levelno == logging.WARNING
    assert "limits.looper" in said and "journey-0" in said and events[-1].event_id in said
    assert "box.v1.BoxRenamed" in said

    # An operator who replays it lets the chain take one more hop.
    replayed = await runner.replay(parked.command_id)
    assert replayed.accepted
    await settle(runner)
    assert (await run.items("loop"))[-1] == "101"
    (again,) = await list_parked(run.roles.projections, "limits.looper")
    assert (again.reason, again.command_metadata[HOPS]) == ("REACTION_LOOP", "102")


async def test_max_hops_is_set_per_reaction_and_counts_the_hops_of_every_reaction_in_the_chain() -> None:
    chained = Plugin("chained")
    ping = chained.reaction("chained.ping", aggregate_types=["List"], max_hops=7)
    pong = chained.reaction("chained.pong", aggregate_types=["List"], max_hops=3)

    @ping.on(ItemAdded)
    def to_pong(event: box.BoxRenamed, envelope: ProjectedEvent, state: None) -> Send | None:
        return Send("pong", AddItem(name=event.name + "+")) if envelope.aggregate_id == "ping" else None

    @pong.on(ItemAdded)
    def to_ping(event: box.BoxRenamed, envelope: ProjectedEvent, state: None) -> Send | None:
        return Send("ping", AddItem(name=event.name + "+")) if envelope.aggregate_id == "pong" else None

    run = Harness(Registry([plugin, chained]))
    await run.add("ping", "x")
    runners = [run.runner("chained.ping"), run.runner("chained.pong")]
    positions = [0, 0]
    for _ in range(50):
        moved = False
        for index, runner in enumerate(runners):
            after = await runner.step(positions[index])
            moved = moved or after != positions[index]
            positions[index] = after
        if not moved:
            break
    # ping sends hops 1, 3 (pong: 2, and its hop 4 is parked, past its 3).
    assert await run.items("pong") == ["x+", "x+++"]
    assert await run.items("ping") == ["x", "x++"]
    assert await run.parked_items("chained.pong") == ["x++++"]
    assert await run.parked_items("chained.ping") == []
    with pytest.raises(ValueError, match="max_hops"):
        chained.reaction("chained.never", max_hops=0)


async def test_a_client_cannot_set_the_hop_count() -> None:
    from google.protobuf import any_pb2

    from service.api.codec import decode_command

    command = command_pb2.Command(
        command_id=str(uuid.uuid4()), aggregate_id="loop", metadata={HOPS: "-1000000", "other": "kept"}
    )
    command.payload.CopyFrom(any_pb2.Any(type_url="type.googleapis.com/box.v1.RenameBox"))
    with pytest.raises(InvalidInput) as refused:
        decode_command(command, REGISTRY)
    assert refused.value.reason == "INVALID_METADATA"
    assert HOPS in str(refused.value.violations[0].field)
    del command.metadata[HOPS]
    assert decode_command(command, REGISTRY).metadata == {"other": "kept"}
