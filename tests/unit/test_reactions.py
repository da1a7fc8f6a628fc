"""Reaction runners on the memory store, through the real executor: the
commands a reaction sends (ids, causation, correlation), a crash before its
checkpoint moved (the same commands again, nothing twice), refusals handed
back or parked, its state, a failing function."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from chronicle.v1 import reaction_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.errors import ConfigurationError, ReactionFailed, ResourceNotFound
from service.plugins import AggregateDeleted, Plugin, ProjectedEvent, Refusal, Send, ValidationError
from service.plugins.reactions import MAX_ROUNDS, REACTION_NAMESPACE, command_id_for
from service.plugins.registry import Registry
from service.processing import reaction_documents
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.reaction_documents import list_parked
from service.processing.reactions import ReactionRunner, RunsElsewhere
from service.processing.router import Router
from service.store.base import Store
from service.store.encrypted import encrypted
from service.store.encryption import Keyring, MasterKeys, new_master_key
from service.store.leasing import Fencing
from service.store.memory import MemoryStore
from service.store.records import NewEvent, RecordedEvent
from service.transfer.deleting import delete_aggregate
from tests.support.crashing import CrashingStore
from tests.support.fenced import FencedCommits, HandLease
from tests.support.waiting import eventually

# A small domain of its own: lists that hold three items at most (but the
# "source" list, which the reactions follow), and
# reactions on it. Its messages are borrowed: the box example's RenameBox
# adds an item (its name), BoxRenamed records it, and a bank.OwnerBalance's
# account_ids are the items (of the list, and of the counting reaction's state).
AddItem, ItemAdded, Items = box.RenameBox, box.BoxRenamed, bank.OwnerBalance
plugin = Plugin("counters")
counter = plugin.aggregate("Counter", state=Items)


@counter.command(AddItem)
def add(command: box.RenameBox, state: bank.OwnerBalance, context: Any) -> box.BoxRenamed:
    if context.aggregate_id == "source":
        return ItemAdded(name=command.name)  # the list the reactions follow takes anything
    if command.name == "refuse":
        raise ValidationError("refused on purpose", reason="REFUSED_ON_PURPOSE")
    if len(state.account_ids) >= 3:
        raise ValidationError("full", reason="FULL")
    return ItemAdded(name=command.name)


@counter.apply(ItemAdded)
def _added(state: bank.OwnerBalance, event: box.BoxRenamed) -> None:
    state.account_ids.append(event.name)


# Copies every item added to "source" into "copy", as "copied:<item>"; a
# refused copy is parked.
copier = plugin.reaction("counters.copier", aggregate_types=["Counter"])


@copier.on(ItemAdded)
def copy(event: box.BoxRenamed, envelope: ProjectedEvent, state: None) -> list[Send]:
    if envelope.aggregate_id != "source":
        return []
    return [Send("copy", AddItem(name=f"copied:{event.name}"), metadata={"copied": "yes"})]


# Counts, per correlation id, the items added, in its state; a refused
# command is retried once elsewhere ("spill").
counting = plugin.reaction("counters.counting", aggregate_types=["Counter"], state=Items)


@counting.on(ItemAdded)
def count(event: box.BoxRenamed, envelope: ProjectedEvent, state: bank.OwnerBalance) -> Send | None:
    if envelope.aggregate_id != "source":
        return None
    state.account_ids.append(event.name)
    if event.name == "done":
        state.Clear()  # the process is over
    return Send("limited", AddItem(name=event.name))


@counting.on_refused
def spill(refusal: Refusal, envelope: ProjectedEvent, state: bank.OwnerBalance) -> Send | None:
    if refusal.aggregate_id == "limited":
        return Send("spill", AddItem(name=f"spilled:{refusal.reason}"))
    return None  # a refused spill: parked


# Refused for ever: every compensation is refused again.
stubborn = plugin.reaction("counters.stubborn", aggregate_types=["Counter"])


@stubborn.on(ItemAdded)
def insist(event: box.BoxRenamed, envelope: ProjectedEvent, state: None) -> Send | None:
    return Send("limited", AddItem(name="refuse")) if envelope.aggregate_id == "source" else None


@stubborn.on_refused
def insist_again(refusal: Refusal, envelope: ProjectedEvent, state: None) -> Send:
    return Send("limited", AddItem(name="refuse"))


# Forwards each item added to a "from-<x>" list to "to-<x>" as "refuse",
# which is refused (so parked), keeping per correlation id the items it
# forwarded: its states and parked commands are derived from both lists.
forwarder = plugin.reaction("counters.forwarder", aggregate_types=["Counter"], state=Items)


@forwarder.on(ItemAdded)
def forward(event: box.BoxRenamed, envelope: ProjectedEvent, state: bank.OwnerBalance) -> Send | None:
    if not envelope.aggregate_id.startswith("from-"):
        return None
    state.account_ids.append(event.name)
    return Send("to-" + envelope.aggregate_id.removeprefix("from-"), AddItem(name="refuse"))


# Notes each deleted list (its tombstone) in the "deletions" list.
deletions = plugin.reaction("counters.deletions", aggregate_types=["Counter"])


@deletions.on(AggregateDeleted)
def note_deleted(event: AggregateDeleted, envelope: ProjectedEvent, state: None) -> Send:
    return Send("deletions", AddItem(name=f"{envelope.aggregate_id}: {event.reason}"))


REGISTRY = Registry([plugin])


class Harness:
    def __init__(self, store: MemoryStore | None = None, *, keyring: Keyring | None = None) -> None:
        self.store = store or MemoryStore()
        # With a keyring: encryption at rest, so an aggregate can be forgotten.
        self.roles = Store.of(self.store) if keyring is None else encrypted(Store.of(self.store), keyring)
        self.executor = CommandExecutor(self.roles, REGISTRY)
        self.router = Router(self.executor)

    async def add(self, aggregate_id: str, item: str, *, correlation_id: str = "") -> None:
        spec = REGISTRY.command("box.v1.RenameBox")
        assert spec is not None
        request = CommandRequest(
            command_id=str(uuid.uuid4()),
            aggregate_id=aggregate_id,
            spec=spec,
            message=AddItem(name=item),
            user_id="ann",
            correlation_id=correlation_id,
        )
        await self.router.submit(request)

    def runner(self, name: str, **options: Any) -> ReactionRunner:
        """The reaction ``name``'s runner (``options``: its intervals)."""
        reaction = REGISTRY.reaction(name)
        assert reaction is not None
        return ReactionRunner(
            reaction,
            registry=REGISTRY,
            submit=self.router.submit,
            log=self.roles.log,
            documents=self.roles.projections,
            reader=self.executor.loader.reader,
            **options,
        )

    async def events(self, aggregate_id: str) -> list[RecordedEvent]:
        return await self.store.read_aggregate(aggregate_id)

    async def items(self, aggregate_id: str) -> list[str]:
        return [ItemAdded.FromString(e.payload).name for e in await self.events(aggregate_id)]

    async def parked(self, reaction: str) -> list[reaction_service_pb2.ParkedCommand]:
        return await list_parked(self.roles.projections, reaction)


async def test_commands_carry_the_event_as_cause_and_ids_derived_from_it() -> None:
    run = Harness()
    await run.add("source", "a", correlation_id="journey-1")
    await run.add("elsewhere", "b")
    runner = run.runner("counters.copier")
    head = await run.store.log_head()
    assert await runner.step(0) == head  # the events there were; its own come after
    (cause,) = await run.events("source")
    (copied,) = await run.events("copy")
    assert ItemAdded.FromString(copied.payload).name == "copied:a"
    assert copied.causation_id == cause.event_id
    assert (copied.correlation_id, copied.user_id, copied.origin) == ("journey-1", "ann", "reaction:counters.copier")
    # The event's metadata, the Send's, and the chain's reaction hops (one).
    assert copied.metadata == {"copied": "yes", "chronicle.reaction_hops": "1"}
    # Documented: uuid5 of "<reaction>/<event id>/<index>".
    expected = uuid.uuid5(REACTION_NAMESPACE, f"counters.copier/{cause.event_id}/0")
    assert copied.command_id == str(expected) == command_id_for(f"counters.copier/{cause.event_id}", 0)
    assert (runner.status.handled, runner.status.accepted) == (2, 1)


async def test_a_crash_before_the_checkpoint_sends_the_same_commands_and_changes_nothing_twice() -> None:
    run = Harness(CrashingStore(crashes=1))
    for item in ("a", "b", "c"):
        await run.add("source", item)
    runner = run.runner("counters.copier")
    with pytest.raises(RuntimeError):
        await runner.step(0)  # the commands went out, the checkpoint did not move
    assert await run.items("copy") == ["copied:a", "copied:b", "copied:c"]
    assert await run.store.projection_position("counters.copier") == 0
    again = run.runner("counters.copier")  # the replica that takes over
    await again.step(0)
    assert await run.items("copy") == ["copied:a", "copied:b", "copied:c"]
    assert (again.status.accepted, again.status.replayed) == (
        0,
        3,
    )  # sent again: answered from their records, none accepted anew


async def test_a_refused_command_without_compensation_is_parked_and_the_reaction_goes_on() -> None:
    run = Harness()
    for item in ("a", "b", "c", "d"):  # the copy holds three: the fourth is refused
        await run.add("source", item)
    runner = run.runner("counters.copier")
    head = await run.store.log_head()
    assert await runner.step(0) == head
    (parked,) = await run.parked("counters.copier")
    source = await run.events("source")
    assert (parked.aggregate_id, parked.reason, parked.event_id) == ("copy", "FULL", source[3].event_id)
    assert AddItem.FromString(parked.command.value).name == "copied:d"
    assert parked.command_id == command_id_for(f"counters.copier/{source[3].event_id}", 0)
    assert (runner.status.refused, runner.status.parked) == (1, 1)


async def test_a_refusal_is_handed_back_and_a_refused_compensation_parked() -> None:
    run = Harness()
    for item in ("a", "b", "c", "refuse", "d"):
        await run.add("source", item, correlation_id="one")
    runner = run.runner("counters.counting")
    await runner.step(0)
    assert await run.items("limited") == ["a", "b", "c"]
    # "refuse" refused by its handler, "d" by the full counter: each spilled.
    assert await run.items("spill") == ["spilled:REFUSED_ON_PURPOSE", "spilled:FULL"]
    assert await run.parked("counters.counting") == []
    await run.add("spill", "x")  # the spill is full now
    await run.add("source", "e", correlation_id="one")
    await runner.step(await run.store.projection_position("counters.counting"))
    (parked,) = await run.parked("counters.counting")
    assert (parked.aggregate_id, parked.reason) == ("spill", "FULL")


async def test_the_state_is_kept_per_correlation_and_deleted_when_empty() -> None:
    run = Harness()
    await run.add("source", "a", correlation_id="one")
    await run.add("source", "b", correlation_id="two")
    await run.add("source", "c", correlation_id="one")
    runner = run.runner("counters.counting")
    position = await runner.step(0)
    one = await run.store.load_document("counters.counting", "state:one")
    assert one is not None
    kept = reaction_service_pb2.ProcessState.FromString(one.data)
    state = Items()
    assert kept.state.Unpack(state)
    assert state.account_ids == ["a", "c"]
    assert list(kept.subjects) == ["limited", "source"]  # the events' aggregate and the commands'
    await run.add("source", "done", correlation_id="one")
    await runner.step(position)
    assert await run.store.load_document("counters.counting", "state:one") is None
    assert await run.store.load_document("counters.counting", "state:two") is not None


async def test_a_function_that_raises_stops_the_reaction_at_its_checkpoint() -> None:
    failing = Plugin("failing")
    broken = failing.reaction("failing.broken", aggregate_types=["Counter"])

    @broken.on(ItemAdded)
    def explode(event: box.BoxRenamed, envelope: ProjectedEvent, state: None) -> None:
        raise KeyError("oops")

    run = Harness()
    await run.add("source", "a")
    runner = ReactionRunner(
        broken,
        registry=REGISTRY,
        submit=run.router.submit,
        log=run.store,
        documents=run.store,
        reader=run.executor.loader.reader,
    )
    with pytest.raises(ReactionFailed) as failed:
        await runner.step(0)
    assert failed.value.reason == "REACTION_FAILED"
    assert "KeyError" in failed.value.message
    assert await run.store.projection_position("failing.broken") == 0


async def test_a_reaction_cannot_take_a_projection_s_name() -> None:
    other = Plugin("other")
    other.projection("counters.copier")
    with pytest.raises(ConfigurationError) as refused:
        Registry([plugin, other])
    assert refused.value.reason == "DUPLICATE_REGISTRATION"
    # Each named for what it is.
    assert refused.value.message.startswith("projection 'counters.copier' of plugin 'other' has the name of reaction")


def test_a_projection_cannot_take_a_reaction_s_name_and_is_told_it_is_a_reaction_s() -> None:
    other = Plugin("other")
    other.projection("counters.copier")
    with pytest.raises(ConfigurationError) as refused:
        Registry([other, plugin])
    assert refused.value.message.startswith(
        "reaction 'counters.copier' of plugin 'counters' has the name of projection 'counters.copier' of plugin 'other'"
    )


async def test_compensations_refused_in_a_row_end_parked() -> None:
    run = Harness()
    await run.add("source", "a")
    runner = run.runner("counters.stubborn")
    await runner.step(0)
    assert runner.status.refused == MAX_ROUNDS + 1  # the command, then each compensation
    (parked,) = await run.parked("counters.stubborn")
    assert parked.reason == "REFUSED_ON_PURPOSE"


async def test_a_reaction_with_too_many_parked_commands_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reaction_documents, "MAX_PARKED", 2)
    run = Harness()
    for item in ("a", "b", "c", "d", "e", "f"):  # the copy takes three; three are parked
        await run.add("source", item)
    with pytest.raises(ReactionFailed) as stopped:
        await run.runner("counters.copier").step(0)
    assert stopped.value.reason == "TOO_MANY_PARKED"
    # The events before the one that would park a third are committed (see
    # tests/unit/test_reaction_limits.py); "f" (position 6) waits.
    assert await run.store.projection_position("counters.copier") == 5
    assert [AddItem.FromString(p.command.value).name for p in await run.parked("counters.copier")] == [
        "copied:d",
        "copied:e",
    ]


class ElsewhereLease:
    """Another replica holds the reaction's lease."""

    def fencing(self) -> Fencing | None:
        return None

    def holder(self) -> str:
        return "10.0.0.9:50051"

    def step_aside(self) -> None:
        pass


async def test_only_the_replica_that_runs_a_reaction_replays_its_parked_commands() -> None:
    run = Harness()
    reaction = REGISTRY.reaction("counters.copier")
    assert reaction is not None
    runner = ReactionRunner(
        reaction,
        registry=REGISTRY,
        submit=run.router.submit,
        log=run.store,
        documents=run.store,
        reader=run.executor.loader.reader,
        lease=ElsewhereLease(),
    )
    assert await runner.step(0) == 0  # it runs nothing here
    with pytest.raises(RunsElsewhere) as elsewhere:
        await runner.replay(str(uuid.uuid4()))
    assert elsewhere.value.metadata["runner"] == "10.0.0.9:50051"


async def test_without_its_lease_a_reaction_sends_nothing_and_with_it_commits_under_the_token() -> None:
    store = FencedCommits()
    run = Harness(store)
    await run.add("source", "a")
    reaction = REGISTRY.reaction("counters.copier")
    assert reaction is not None
    lease = HandLease()
    runner = ReactionRunner(
        reaction,
        registry=REGISTRY,
        submit=run.router.submit,
        log=run.store,
        documents=run.store,
        reader=run.executor.loader.reader,
        lease=lease,
    )
    assert await runner.step(0) == 0
    assert await run.items("copy") == [] and store.tokens == []  # another replica's work
    lease.token = Fencing("projections", "counters.copier", "me", 3)
    assert await runner.step(0) == 1  # the source's event (its copy came after the batch was read)
    assert await run.items("copy") == ["copied:a"]
    assert store.tokens == [lease.token]


async def test_a_running_reaction_survives_an_unexpected_failure_and_goes_on() -> None:
    run = Harness(CrashingStore(crashes=1))  # a bug's exception, not a ChronicleError
    for item in ("a", "b"):
        await run.add("source", item)
    runner = run.runner("counters.copier", retry_interval=0.01, poll_interval=0.01)
    runner.start()
    try:
        await eventually(lambda: runner.status.position >= 4 and not runner.status.error, what="caught up")
    finally:
        await runner.stop()
    assert await run.items("copy") == ["copied:a", "copied:b"]
    assert runner.status.replayed == 2  # sent before the failed commit, sent again: answered from their records


class FailingWait(MemoryStore):
    """Waiting for commits raises a bug's exception the first time."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    async def wait_for_commit(self, after_position: int, max_wait: float) -> None:
        self.waits += 1
        if self.waits == 1:
            raise RuntimeError("a bug below")
        await super().wait_for_commit(after_position, max_wait)


async def test_a_running_reaction_outlives_a_failure_while_waiting_for_commits() -> None:
    store = FailingWait()
    run = Harness(store)
    runner = run.runner("counters.copier", retry_interval=0.01, poll_interval=0.01)
    runner.start()
    try:
        await eventually(lambda: store.waits >= 2, what="waiting again")
        await run.add("source", "a")  # after the failure: still handled
        await eventually(lambda: runner.status.position >= 2, what="the new event handled")
    finally:
        await runner.stop()
    assert await run.items("copy") == ["copied:a"]


# -- forgetting: what a reaction derived from an aggregate goes with it ------------


def forgetting() -> tuple[Harness, Keyring]:
    raw = MemoryStore()
    keyring = Keyring(raw, MasterKeys.parse(f"k1:{new_master_key()}", source="test"))
    return Harness(raw, keyring=keyring), keyring


async def test_forgetting_an_aggregate_deletes_the_states_and_parked_commands_derived_from_it() -> None:
    run, keyring = forgetting()
    await run.add("from-a", "x", correlation_id="journey-a")
    await run.add("from-b", "y", correlation_id="journey-b")
    runner = run.runner("counters.forwarder")
    position = await runner.step(0)
    parked = {p.aggregate_id: p for p in await run.parked("counters.forwarder")}
    assert sorted(parked) == ["to-a", "to-b"]
    assert parked["to-a"].event_aggregate_id == "from-a"
    documents = run.roles.projections
    assert await documents.load_document("counters.forwarder", "state:journey-a") is not None

    await keyring.forget("from-a")
    # The command's payload and refusal, and the process's state, went with it; b's stayed.
    assert [p.aggregate_id for p in await run.parked("counters.forwarder")] == ["to-b"]
    assert await documents.load_document("counters.forwarder", "parked:" + parked["to-a"].command_id) is None
    assert await documents.load_document("counters.forwarder", "state:journey-a") is None
    assert await documents.load_document("counters.forwarder", "state:journey-b") is not None
    with pytest.raises(ResourceNotFound):
        await runner.replay(parked["to-a"].command_id)
    await runner.dismiss(parked["to-b"].command_id)
    assert await run.parked("counters.forwarder") == []
    assert runner.status.parked == 0  # the forgotten command's entry left the index too

    await run.add("from-b", "z", correlation_id="journey-b")
    assert await runner.step(position) == await run.store.log_head()
    assert [p.aggregate_id for p in await run.parked("counters.forwarder")] == ["to-b"]


async def test_a_reaction_skips_a_forgotten_aggregates_events() -> None:
    run, keyring = forgetting()
    await run.add("from-a", "x", correlation_id="journey-a")
    await run.add("from-b", "y", correlation_id="journey-b")
    await keyring.forget("from-a")
    runner = run.runner("counters.forwarder")
    # Not stuck on the redacted event, and nothing sent for it.
    assert await runner.step(0) == await run.store.log_head()
    assert runner.status.error == ""
    assert [p.aggregate_id for p in await run.parked("counters.forwarder")] == ["to-b"]
    assert runner.status.handled == 1


async def test_a_state_cached_before_a_forget_is_not_written_back_naming_the_forgotten_aggregate() -> None:
    run, keyring = forgetting()
    # One process (one correlation id) over two lists.
    await run.add("from-a", "x", correlation_id="journey")
    await run.add("from-c", "y", correlation_id="journey")
    runner = run.runner("counters.forwarder")
    position = await runner.step(0)  # the process's state (x, y) is in the runner's cache
    await keyring.forget("from-a")
    documents = run.roles.projections
    assert await documents.load_document("counters.forwarder", "state:journey") is None

    await run.add("from-c", "z", correlation_id="journey")
    # The commit of the cached state, which names from-a, is refused; the
    # batch runs again from the checkpoint without it.
    assert await runner.step(position) == await run.store.log_head()
    stored = await documents.load_document("counters.forwarder", "state:journey")
    assert stored is not None
    kept = reaction_service_pb2.ProcessState.FromString(stored.data)
    state = Items()
    assert kept.state.Unpack(state)
    assert (list(state.account_ids), list(kept.subjects)) == (["z"], ["from-c", "to-c"])
    assert runner.status.error == ""


async def test_a_reaction_that_handles_deletions_gets_a_deleted_aggregate_s_tombstone() -> None:
    run = Harness()
    await run.add("source", "a")
    await run.add("copy", "b")
    await delete_aggregate(Store.of(run.store), "copy", reason="closed")
    runner = run.runner("counters.deletions")
    await runner.step(0)  # the tombstone is read as its AggregateDeleted, not decoded as the list's event
    assert await run.items("deletions") == ["copy: closed"]
    assert runner.status.error == ""
    # The other reactions do not read tombstones (their filters name other types).
    copier = run.runner("counters.copier")
    await copier.step(0)
    # A command to the deleted list is refused for good, not tried for ever:
    # parked (the copier has no on_refused), to replay once it is restored.
    assert copier.status.error == ""
    (parked,) = await run.parked("counters.copier")
    assert (parked.aggregate_id, parked.reason) == ("copy", "AGGREGATE_DELETED")


async def test_a_command_to_a_forgotten_aggregate_is_refused_for_good_not_tried_for_ever() -> None:
    run, keyring = forgetting()
    await run.add("copy", "kept")
    await keyring.forget("copy")
    await run.add("source", "a")
    copier = run.runner("counters.copier")
    # A forgotten aggregate takes no command ever again: refused, and the
    # reaction goes on (it was tried for ever). Nothing is kept that names
    # the forgotten aggregate, so no parked entry either: none could be replayed.
    assert await copier.step(0) == await run.store.log_head()
    assert copier.status.error == ""
    assert await run.parked("counters.copier") == []


class StepAsideLease(HandLease):
    """A held lease that records the runner stepping aside from it."""

    def __init__(self) -> None:
        super().__init__()
        self.token = Fencing("projections", "counters.copier", "me", 1)
        self.stepped_aside = 0

    def step_aside(self) -> None:
        self.stepped_aside += 1
        super().step_aside()


async def test_a_reaction_that_meets_an_event_of_a_newer_plugin_version_gives_its_lease_up() -> None:
    # docs/deployment.md, "Rolling a new plugin version": a replica that
    # reads it takes the reaction over (tests/integration/test_rolling_plugin_leases.py).
    run = Harness(MemoryStore())
    await run.add("source", "a")
    too_new = NewEvent(
        event_id=str(uuid.uuid4()),
        aggregate_type="Counter",
        event_type="box.v1.BoxRenamed",
        schema_version=2,  # this plugin's is 1
        payload=ItemAdded(name="b").SerializeToString(),
        timestamp_us=1,
    )
    await run.store.append("source", [too_new], 1)
    lease = StepAsideLease()
    runner = run.runner("counters.copier", lease=lease, retry_interval=0.01, poll_interval=0.01)
    runner.start()
    try:
        await eventually(lambda: lease.stepped_aside == 1, what="the lease given up")
    finally:
        await runner.stop()
    assert not runner.holds_lease
    assert runner.status.last_error.startswith("SCHEMA_VERSION_TOO_NEW")
    assert runner.error_now == ""  # another replica's to report now
    assert await run.items("copy") == ["copied:a"]  # the events before it went through
