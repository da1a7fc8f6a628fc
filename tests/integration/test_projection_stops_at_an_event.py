"""A projection whose handler fails on an event stops at that event, on
every store: the documents and checkpoint of the events before it are
committed (in the batch's one commit, after the batches before it, which
were committing meanwhile while catching up), the failing event and those
after it are not applied; tried again, it changes nothing more; fixed, it
goes on from that event. A projection that parks commits them too at its
first failure, then parks the event and goes on."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from google.protobuf.message import Message

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.errors import ChronicleError, ProjectionFailed
from service.plugins import OldEvent, Plugin
from service.plugins.projections import Documents, ProjectedEvent
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.projections import ProjectionRunner
from service.processing.router import Router
from service.store.base import Store, StoreAdapter
from service.store.records import NewEvent

AddItem, ItemAdded, Items = box.RenameBox, box.BoxRenamed, bank.OwnerBalance
Count = bank.AccountBalance
POISONED: set[str] = set()  # items whose event the projections' handler fails on
plugin = Plugin("stopping")
lists = plugin.aggregate("List", state=Items)


@lists.command(AddItem)
def add(command: box.RenameBox, state: bank.OwnerBalance, context: Any) -> box.BoxRenamed:
    return ItemAdded(name=command.name)


@lists.apply(ItemAdded)
def _added(state: bank.OwnerBalance, event: box.BoxRenamed) -> None:
    state.account_ids.append(event.name)


# An old event type that recorded two items at once: read as two events.
@lists.upcast("legacy.v1.PairAdded", from_version=1)
def _pair(old: OldEvent) -> list[Message]:
    first, second = old.parse(box.BoxRenamed).name.split("+")
    return [ItemAdded(name=first), ItemAdded(name=second)]


# Small batches, so that a catch-up runs several, each applied while the one
# before commits.
stopping = plugin.projection("stopping.items", aggregate_types=["List"], batch_size=8, catch_up_batch_size=8)
parking = plugin.projection(
    "stopping.parked", aggregate_types=["List"], batch_size=8, on_failure="park", max_attempts=2
)


def _item(event: box.BoxRenamed, envelope: ProjectedEvent, documents: Documents) -> None:
    if event.name in POISONED:
        raise ValueError(f"cannot take {event.name}")
    documents.put(f"item:{event.name}", Count(owner=event.name, balance=envelope.position))
    count = documents.get("count", Count) or Count()
    count.balance += 1
    documents.put("count", count)


stopping.on(ItemAdded)(_item)
parking.on(ItemAdded)(_item)
REGISTRY = Registry([plugin])
ITEMS = [f"i{n}" for n in range(30)]


class Harness:
    def __init__(self, adapter: StoreAdapter) -> None:
        self.store = adapter
        self.roles = Store.of(adapter)
        self.executor = CommandExecutor(self.roles, REGISTRY)
        self.router = Router(self.executor)

    async def add(self, item: str) -> int:
        spec = REGISTRY.command("box.v1.RenameBox")
        assert spec is not None
        request = CommandRequest(
            command_id=str(uuid.uuid4()), aggregate_id=f"list-{item}", spec=spec, message=AddItem(name=item)
        )
        return (await self.router.submit(request)).events[-1].position

    def runner(self, name: str) -> ProjectionRunner:
        projection = REGISTRY.projection(name)
        assert projection is not None
        return ProjectionRunner(
            projection, log=self.roles.log, documents=self.roles.projections, reader=self.executor.loader.reader
        )

    async def applied(self, name: str) -> tuple[int, list[str]]:
        """The projection's count and the items it holds documents of."""
        documents = self.roles.projections
        count = await documents.load_document(name, "count")
        found = await documents.load_documents(name, [f"item:{item}" for item in ITEMS])
        held = sorted((d.key.removeprefix("item:") for d in found), key=ITEMS.index)
        return (Count.FromString(count.data).balance if count else 0), held


@pytest.fixture(autouse=True)
def no_poison() -> Any:
    yield
    POISONED.clear()


async def test_a_projection_stops_at_the_event_its_handler_fails_on_with_everything_before_it_committed(
    store: StoreAdapter,
) -> None:
    run = Harness(store)
    at = {item: await run.add(item) for item in ITEMS}
    POISONED.add("i21")  # in the third batch of eight
    runner = run.runner("stopping.items")
    with pytest.raises(ProjectionFailed):
        await runner.step(0)
    stop = at["i21"] - 1
    assert await run.roles.projections.projection_position("stopping.items") == stop
    assert runner.status.position == stop
    assert await run.applied("stopping.items") == (21, ITEMS[:21])

    # Tried again: the same event, nothing more written.
    for _ in range(2):
        with pytest.raises(ProjectionFailed):
            await runner.step(runner.status.position)
        assert await run.roles.projections.projection_position("stopping.items") == stop
        assert await run.applied("stopping.items") == (21, ITEMS[:21])

    POISONED.clear()
    assert await runner.step(runner.status.position) == await run.roles.log.log_head()
    assert await run.applied("stopping.items") == (30, ITEMS)

    # A rebuild goes through the same events and stops at the same one.
    POISONED.add("i21")
    await run.roles.projections.reset_projection("stopping.items")
    with pytest.raises(ProjectionFailed):
        await run.runner("stopping.items").step(0)
    assert await run.roles.projections.projection_position("stopping.items") == stop
    assert await run.applied("stopping.items") == (21, ITEMS[:21])


async def test_a_projection_that_parks_commits_the_events_before_a_failing_one_at_its_first_failure(
    store: StoreAdapter,
) -> None:
    run = Harness(store)
    at = {item: await run.add(item) for item in ITEMS[:12]}
    POISONED.add("i10")  # in the second batch
    runner = run.runner("stopping.parked")
    with pytest.raises(ProjectionFailed):
        await runner.step(0)
    assert await run.roles.projections.projection_position("stopping.parked") == at["i10"] - 1
    assert await run.applied("stopping.parked") == (10, ITEMS[:10])
    assert await runner.step(runner.status.position) == at["i11"]  # the second failure parks it
    assert await run.applied("stopping.parked") == (11, [*ITEMS[:10], "i11"])
    (parked,) = await run.roles.projections.parked_events("stopping.parked", after=None, limit=10)
    assert (parked.position, parked.attempts) == (at["i10"], 2)


async def test_the_events_an_upcaster_made_of_one_stored_event_stop_together(store: StoreAdapter) -> None:
    """The checkpoint is a stored event's: when the second of the two events
    one stored event is read as fails, the first is not committed either."""
    run = Harness(store)
    at = {item: await run.add(item) for item in ITEMS[:3]}
    (pair,) = await run.store.append(
        "list-pair",
        [
            NewEvent(
                event_id=str(uuid.uuid4()),
                aggregate_type="List",
                event_type="legacy.v1.PairAdded",
                schema_version=1,
                payload=box.BoxRenamed(name="i3+i4").SerializeToString(),
                timestamp_us=1,
            )
        ],
        0,
    )
    POISONED.add("i4")
    runner = run.runner("stopping.items")
    with pytest.raises(ProjectionFailed):
        await runner.step(0)
    assert await run.roles.projections.projection_position("stopping.items") == pair.position - 1
    assert await run.applied("stopping.items") == (3, ITEMS[:3])
    assert pair.position - 1 >= at["i2"]
    POISONED.clear()
    await runner.step(runner.status.position)
    assert await run.applied("stopping.items") == (5, ITEMS[:5])


async def test_an_event_no_plugin_can_read_stops_the_projection_at_it_with_the_events_before_it_committed(
    store: StoreAdapter,
) -> None:
    run = Harness(store)
    at = {item: await run.add(item) for item in ITEMS[:3]}
    (too_new,) = await run.store.append(
        "list-new",
        [
            NewEvent(
                event_id=str(uuid.uuid4()),
                aggregate_type="List",
                event_type="box.v1.BoxRenamed",
                schema_version=99,  # written by a newer plugin than this one
                payload=box.BoxRenamed(name="i3").SerializeToString(),
                timestamp_us=1,
            )
        ],
        0,
    )
    runner = run.runner("stopping.items")
    with pytest.raises(ChronicleError) as failed:
        await runner.step(0)
    assert failed.value.reason == "SCHEMA_VERSION_TOO_NEW"
    assert too_new.position - 1 >= at["i2"]
    assert await run.roles.projections.projection_position("stopping.items") == too_new.position - 1
    assert await run.applied("stopping.items") == (3, ITEMS[:3])
