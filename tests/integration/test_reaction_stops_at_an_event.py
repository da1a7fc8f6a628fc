"""A reaction that fails on one event of a batch stops at that event, on
every store, through the real executor: the events before it are committed
(checkpoint, process states, commands settled), their commands are not sent
again when it tries again, and once the cause is fixed it goes on from the
event it stopped at, each command having run once."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from chronicle.v1 import reaction_service_pb2 as reaction_pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.errors import ChronicleError, ReactionFailed
from service.plugins import Plugin, ProjectedEvent, Send
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.reaction_documents import STATE_PREFIX
from service.processing.reactions import ReactionRunner
from service.processing.router import Router
from service.store.base import Store, StoreAdapter
from service.store.records import NewEvent

# Lists of items (borrowed messages): RenameBox adds an item, BoxRenamed
# records it. The list "copy"'s handler raises on an item named "bug" while
# ``FAULTS`` holds "handler" (a bug in the aggregate a saga step calls).
AddItem, ItemAdded, Items = box.RenameBox, box.BoxRenamed, bank.OwnerBalance
FAULTS: set[str] = set()
plugin = Plugin("stops")
lists = plugin.aggregate("List", state=Items)


@lists.command(AddItem)
def add(command: box.RenameBox, state: bank.OwnerBalance, context: Any) -> box.BoxRenamed:
    if context.aggregate_id == "copy" and command.name == "bug" and "handler" in FAULTS:
        raise RuntimeError("a bug in the List aggregate")
    return ItemAdded(name=command.name)


@lists.apply(ItemAdded)
def _added(state: bank.OwnerBalance, event: box.BoxRenamed) -> None:
    state.account_ids.append(event.name)


# Copies each item added to "source" to "copy", and keeps, per item, a
# process state (the items it copied, under the item's own key). It raises
# on an item named "poison" while ``FAULTS`` holds "function".
copier = plugin.reaction(
    "stops.copier", aggregate_types=["List"], state=Items, state_key=lambda envelope: envelope.correlation_id
)


@copier.on(ItemAdded)
def copy(event: box.BoxRenamed, envelope: ProjectedEvent, state: bank.OwnerBalance) -> Send | None:
    if envelope.aggregate_id != "source":
        return None
    if event.name == "poison" and "function" in FAULTS:
        raise ValueError("the reaction's own bug")
    state.account_ids.append(event.name)
    return Send("copy", AddItem(name=event.name))


REGISTRY = Registry([plugin])


class Harness:
    def __init__(self, adapter: StoreAdapter) -> None:
        self.store = adapter
        self.roles = Store.of(adapter)
        self.executor = CommandExecutor(self.roles, REGISTRY)
        self.router = Router(self.executor)
        self.outcomes: list[str] = []

    async def add(self, aggregate_id: str, item: str) -> int:
        spec = REGISTRY.command("box.v1.RenameBox")
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

    def runner(self) -> ReactionRunner:
        reaction = REGISTRY.reaction("stops.copier")
        assert reaction is not None
        return ReactionRunner(
            reaction,
            registry=REGISTRY,
            submit=self.router.submit,
            log=self.roles.log,
            documents=self.roles.projections,
            reader=self.executor.loader.reader,
            outcomes=lambda reaction, outcome: self.outcomes.append(outcome),
        )

    async def copied(self) -> list[str]:
        return [ItemAdded.FromString(e.payload).name for e in await self.store.read_aggregate("copy")]

    async def states(self) -> dict[str, list[str]]:
        """The processes' states as committed, by item."""
        keys = [f"{STATE_PREFIX}journey-{item}" for item in ITEMS]
        states = {}
        for document in await self.roles.projections.load_documents("stops.copier", keys):
            wrapped, state = reaction_pb.ProcessState.FromString(document.data), Items()
            assert wrapped.state.Unpack(state)
            states[document.key.removeprefix(f"{STATE_PREFIX}journey-")] = list(state.account_ids)
        return states


ITEMS = ["a", "b", "c", "poison", "bug", "d"]


@pytest.fixture(autouse=True)
def no_faults() -> Any:
    yield
    FAULTS.clear()


@pytest.mark.parametrize(("fault", "failing"), [("function", "poison"), ("handler", "bug")])
async def test_a_reaction_failing_on_an_event_commits_the_events_before_it_and_sends_their_commands_once(
    store: StoreAdapter, fault: str, failing: str
) -> None:
    FAULTS.add(fault)
    run = Harness(store)
    at = {item: await run.add("source", item) for item in ITEMS}
    before = ITEMS[: ITEMS.index(failing)]
    stop = at[before[-1]]
    runner = run.runner()
    with pytest.raises(ChronicleError) as failed:
        await runner.step(0)
    assert isinstance(failed.value, ReactionFailed) == (fault == "function")
    # Stopped at the failing event, the ones before it committed: their
    # processes' states are saved and their commands ran.
    assert await run.roles.projections.projection_position("stops.copier") == stop
    assert runner.status.position == stop
    assert await run.states() == {item: [item] for item in before}
    assert await run.copied() == before
    sent = len(run.outcomes)

    # Each retry starts at the failing event: no command of an earlier event
    # is sent again (none answered from its record).
    for _ in range(3):
        with pytest.raises(ChronicleError):
            await runner.step(runner.status.position)
        assert await run.roles.projections.projection_position("stops.copier") == stop
    retried = run.outcomes[sent:]
    assert "replayed" not in retried
    assert await run.copied() == before

    # Fixed: on from the event it stopped at, every item copied once.
    FAULTS.clear()
    position = runner.status.position
    while (moved := await runner.step(position)) != position:  # its own commands' events come after
        position = moved
    assert position == await run.roles.log.log_head()
    assert await run.copied() == ITEMS
    assert await run.states() == {item: [item] for item in ITEMS}


async def test_an_event_no_plugin_can_read_stops_the_reaction_at_it_with_the_events_before_it_committed(
    store: StoreAdapter,
) -> None:
    run = Harness(store)
    at = {item: await run.add("source", item) for item in ("a", "b")}
    too_new = NewEvent(
        event_id=str(uuid.uuid4()),
        aggregate_type="List",
        event_type="box.v1.BoxRenamed",
        schema_version=99,  # written by a newer plugin than this one
        payload=box.BoxRenamed(name="c").SerializeToString(),
        timestamp_us=1,
    )
    await store.append("elsewhere", [too_new], 0)
    runner = run.runner()
    with pytest.raises(ChronicleError) as failed:
        await runner.step(0)
    assert failed.value.reason == "SCHEMA_VERSION_TOO_NEW"
    assert await run.roles.projections.projection_position("stops.copier") == at["b"]
    assert await run.copied() == ["a", "b"]
