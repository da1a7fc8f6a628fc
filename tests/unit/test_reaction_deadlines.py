"""Deadlines of a reaction's processes (docs/plugins.md, "Deadlines"), run
in process over a memory store (``ReactionRun``), time driven by its clock:
due at the scheduling event's commit time plus ``after``; one per process
and name; cancelled, replaced, fired once (a crash before the commit sends
again under the same ids); never before the events committed before it are
handled; gone with their process (cleared, dropped, forgotten)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta
from typing import Any

import pytest

from chronicle.v1 import reaction_service_pb2 as reaction_pb
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.errors import ChronicleError, ReactionFailed, StoreUnavailable
from service.plugins import (
    Cancel,
    CommandContext,
    Deadline,
    Plugin,
    ProjectedEvent,
    Refusal,
    Schedule,
    Send,
    ValidationError,
)
from service.plugins.reactions import command_id_for
from service.processing.deadlines import command_seed
from service.processing.reactions import ReactionRunner
from service.store.leasing import Fencing
from service.store.records import DataKey, DocumentWrite
from service.testing import ReactionRun
from tests.support import deadline_saga
from tests.support.deadline_saga import AFTER, REACTION

MINUTE = timedelta(minutes=1)


def _types(run: ReactionRun, order_id: str) -> list[str]:
    return [type(event).__name__ for event in run.events(order_id)]


def _due(run: ReactionRun, reaction: str = REACTION) -> tuple[int, int | None]:
    """How many deadlines the reaction's processes have pending, and the soonest."""
    found: tuple[int, int | None] = _await(run, run.store.due_summary(reaction))
    return found


def _await(run: ReactionRun, awaitable: Any) -> Any:
    return run._loop.run_until_complete(awaitable)


def test_a_deadline_is_due_at_its_events_commit_time_plus_after_and_fires_once() -> None:
    with ReactionRun(deadline_saga.plugin) as run:
        run.submit("o-1", box.CreateBox(name="book"))
        run.settle()
        (placed,) = run.recorded("o-1")
        state = run.process_state(REACTION, "o-1")
        assert state is not None
        assert [(d.name, d.due_us) for d in state.deadlines] == [("payment", placed.timestamp_us + 600_000_000)]
        assert AFTER == 10 * MINUTE
        assert _due(run) == (1, placed.timestamp_us + 600_000_000)

        run.advance(9 * MINUTE)
        run.settle()
        assert _types(run, "o-1") == ["BoxCreated"]  # not due yet

        run.advance(2 * MINUTE)
        run.settle()
        assert _types(run, "o-1") == ["BoxCreated", "BoxArchived"]
        run.advance(60 * MINUTE)
        run.settle()
        assert _types(run, "o-1") == ["BoxCreated", "BoxArchived"]  # once
        assert run.runners[REACTION].status.deadlines_fired == 1
        # The cancellation's envelope: caused by the event that scheduled it.
        cancelled = run.recorded("o-1")[1]
        assert cancelled.causation_id == placed.event_id
        assert cancelled.correlation_id == placed.correlation_id
        assert cancelled.origin == f"reaction:{REACTION}"
        assert cancelled.metadata["order"] == "o-1"
        # Its command id derives from the reaction, the process, the name and the due time.
        seed = command_seed(REACTION, "o-1", "payment", placed.timestamp_us + 600_000_000)
        assert _await(run, run.store.find_command(command_id_for(seed, 0))) is not None
        # The process ended (BoxArchived clears it): nothing left of it.
        assert run.process_state(REACTION, "o-1") is None
        assert _due(run) == (0, None)


def test_a_cancelled_deadline_never_fires() -> None:
    with ReactionRun(deadline_saga.plugin) as run:
        run.submit("o-1", box.CreateBox(name="book"))
        run.settle()
        run.submit("o-1", box.RenameBox(name="paid"))
        run.settle()
        assert _due(run) == (0, None)
        state = run.process_state(REACTION, "o-1")
        assert state is not None and list(state.deadlines) == []
        run.advance(60 * MINUTE)
        run.settle()
        assert _types(run, "o-1") == ["BoxCreated", "BoxRenamed"]
        assert run.runners[REACTION].status.deadlines_fired == 0


def test_a_deadline_does_not_fire_before_the_events_committed_before_it_are_handled() -> None:
    # The reaction is behind: the payment was committed before the deadline
    # was due, and the clock is long past it when the reaction runs again.
    with ReactionRun(deadline_saga.plugin) as run:
        run.submit("o-1", box.CreateBox(name="book"))
        run.settle()
        run.submit("o-1", box.RenameBox(name="paid"))
        run.advance(60 * MINUTE)
        run.settle()
        assert _types(run, "o-1") == ["BoxCreated", "BoxRenamed"]
        assert run.runners[REACTION].status.deadlines_fired == 0


def _ordering_plugin(seen: list[str]) -> Plugin:
    plugin = Plugin("ordering")
    order = plugin.aggregate("Order", state=box.Box)

    @order.command(box.CreateBox)
    def place(command: box.CreateBox, state: box.Box, context: CommandContext) -> box.BoxCreated:
        return box.BoxCreated(name=command.name)

    @order.apply(box.BoxCreated)
    def _placed(state: box.Box, event: box.BoxCreated) -> None:
        state.name = event.name

    reaction = plugin.reaction("ordering", aggregate_types=["Order"], state=box.Box, state_key=lambda e: e.aggregate_id)

    @reaction.on(box.BoxCreated)
    def placed(event: box.BoxCreated, envelope: ProjectedEvent, progress: box.Box) -> Schedule | None:
        seen.append(f"event {envelope.aggregate_id}")
        progress.name = event.name
        return Schedule("soon", after=timedelta(milliseconds=50)) if event.name == "first" else None

    @reaction.on_deadline("soon")
    def soon(deadline: Deadline, progress: box.Box) -> None:
        seen.append(f"deadline {deadline.state_key}")

    return plugin


def test_a_reaction_behind_fires_a_deadline_due_before_its_next_events_commit() -> None:
    seen: list[str] = []
    with ReactionRun(_ordering_plugin(seen)) as run:
        run.submit("o-1", box.CreateBox(name="first"))
        run.settle()
        time.sleep(0.1)  # the next event is committed after the deadline was due
        run.submit("o-2", box.CreateBox(name="second"))
        run.settle()
    assert seen == ["event o-1", "deadline o-1", "event o-2"]


def _timers_plugin(seen: list[tuple[str, int]], returns: Any = None) -> Plugin:
    """A reaction whose BoxCreated function returns ``returns(event,
    envelope, progress)`` (what the test wants), BoxRenamed reschedules "t"
    an hour later, and whose "t" deadline is noted in ``seen`` and retried
    every 10 minutes twice."""
    plugin = Plugin("timers")
    thing = plugin.aggregate("Thing", state=box.Box)

    @thing.command(box.CreateBox)
    def create(command: box.CreateBox, state: box.Box, context: CommandContext) -> box.BoxCreated:
        return box.BoxCreated(name=command.name)

    @thing.command(box.RenameBox)
    def rename(command: box.RenameBox, state: box.Box, context: CommandContext) -> box.BoxRenamed:
        return box.BoxRenamed(name=command.name)

    @thing.apply(box.BoxCreated)
    def _created(state: box.Box, event: box.BoxCreated) -> None:
        state.name = event.name

    @thing.apply(box.BoxRenamed)
    def _renamed(state: box.Box, event: box.BoxRenamed) -> None:
        state.name = event.name

    def key(envelope: ProjectedEvent) -> str:
        return "" if envelope.aggregate_id == "nobody" else envelope.aggregate_id  # "nobody": no process

    reaction = plugin.reaction("timers", aggregate_types=["Thing"], state=box.Box, state_key=key)

    @reaction.on(box.BoxCreated)
    def created(event: box.BoxCreated, envelope: ProjectedEvent, progress: box.Box) -> Any:
        progress.name = event.name
        return returns(event, envelope, progress) if returns else Schedule("t", after=10 * MINUTE)

    @reaction.on(box.BoxRenamed)
    def renamed(event: box.BoxRenamed, envelope: ProjectedEvent, progress: box.Box) -> Schedule:
        return Schedule("t", after=60 * MINUTE)

    @reaction.on_deadline("t")
    def t(deadline: Deadline, progress: box.Box) -> Schedule | None:
        seen.append((deadline.name, deadline.due_us))
        progress.archived = not progress.archived  # a change each time
        return Schedule("t", after=10 * MINUTE) if len(seen) < 3 else None

    return plugin


def test_scheduling_again_replaces_and_a_deadline_function_may_schedule_its_retry() -> None:
    seen: list[tuple[str, int]] = []
    with ReactionRun(_timers_plugin(seen)) as run:
        run.submit("t-1", box.CreateBox(name="a"))
        run.settle()
        run.submit("t-1", box.RenameBox(name="b"))
        run.settle()
        renamed = run.recorded("t-1")[1]
        first_due = renamed.timestamp_us + 3_600_000_000
        assert _due(run, "timers") == (1, first_due)  # one per process and name: replaced
        run.advance(30 * MINUTE)
        run.settle()
        assert seen == []
        run.advance(200 * MINUTE)
        run.settle()
        # Fired, and each firing scheduled the next 10 minutes after its own due time.
        assert seen == [("t", first_due), ("t", first_due + 600_000_000), ("t", first_due + 1_200_000_000)]
        assert _due(run, "timers") == (0, None)
        state = run.process_state("timers", "t-1")
        assert state is not None and list(state.deadlines) == []
        # Its start and last change: the first event's commit time, and the last deadline's due time.
        assert state.started_us == run.recorded("t-1")[0].timestamp_us
        assert state.updated_us == first_due + 1_200_000_000


def test_cancelling_a_deadline_not_scheduled_does_nothing() -> None:
    with ReactionRun(_timers_plugin([], lambda *_: [Cancel("t"), Schedule("t", after=MINUTE), Cancel("t")])) as run:
        run.submit("t-1", box.CreateBox(name="a"))
        run.settle()
        assert _due(run, "timers") == (0, None)
        state = run.process_state("timers", "t-1")
        assert state is not None and list(state.deadlines) == []


@pytest.mark.parametrize(
    ("returns", "reason", "says"),
    [
        (lambda *_: Schedule("nope", after=MINUTE), "UNKNOWN_DEADLINE", "no @on_deadline('nope')"),
        (lambda *_: Cancel("nope"), "UNKNOWN_DEADLINE", "no @on_deadline('nope')"),
        (
            lambda _e, _v, p: [p.Clear(), Schedule("t", after=MINUTE)][1],
            "DEADLINE_WITHOUT_PROCESS",
            "left the process's state empty",
        ),
    ],
)
def test_a_deadline_the_reaction_cannot_keep_stops_it_naming_it(returns: Any, reason: str, says: str) -> None:
    with ReactionRun(_timers_plugin([], returns)) as run:
        run.submit("t-1", box.CreateBox(name="a"))
        with pytest.raises(ReactionFailed) as caught:
            run.settle()
    assert caught.value.reason == reason
    assert says in caught.value.message and "timers" in caught.value.message and "created" in caught.value.message


def test_a_due_deadline_whose_function_a_new_plugin_version_dropped_stops_the_reaction_naming_the_process() -> None:
    """A deadline scheduled under a version that declared @on_deadline("t"),
    due under one that no longer does: the reaction stops at it,
    UNKNOWN_DEADLINE naming the reaction, the deadline and the process (and
    how to get past it), and fires nothing; the deadline stays pending."""
    seen: list[tuple[str, int]] = []
    with ReactionRun(_timers_plugin(seen)) as run:
        run.submit("t-1", box.CreateBox(name="a"))
        run.settle()
        assert _due(run, "timers")[0] == 1
        del run.runners["timers"].reaction.deadline_handlers["t"]  # the new version's reaction: no "t"
        run.advance(11 * MINUTE)
        with pytest.raises(ReactionFailed) as caught:
            run.settle()
        assert _due(run, "timers")[0] == 1 and seen == []
    assert caught.value.reason == "UNKNOWN_DEADLINE"
    assert caught.value.metadata == {"reaction": "timers", "deadline": "t", "state_key": "t-1"}
    assert "--drop-state t-1" in caught.value.message


def test_a_deadline_of_an_event_of_no_process_stops_the_reaction() -> None:
    with ReactionRun(_timers_plugin([])) as run:
        run.submit("nobody", box.CreateBox(name="a"))  # its state key is empty
        with pytest.raises(ReactionFailed) as caught:
            run.settle()
    assert caught.value.reason == "DEADLINE_WITHOUT_PROCESS"
    assert "state key is empty" in caught.value.message


def test_a_deadline_needs_a_reaction_with_state_and_a_name_without_colons() -> None:
    plugin = Plugin("p")
    stateless = plugin.reaction("stateless", aggregate_types=["X"])
    with pytest.raises(ValueError, match="declares no state"):
        stateless.on_deadline("t")
    stateful = plugin.reaction("stateful", aggregate_types=["X"], state=box.Box)
    for name in ("a:b", "", "x" * 101, "a b"):  # docs/plugins.md: 1 to 100 letters, digits, '_', '.' and '-'
        with pytest.raises(ValueError, match="deadline's name must be 1 to 100"):
            stateful.on_deadline(name)
        with pytest.raises(ValueError, match="deadline's name"):
            Schedule(name, after=MINUTE)
    stateful.on_deadline("x" * 100)(lambda deadline, state: None)
    stateful.on_deadline("Pay_1.2-b")(lambda deadline, state: None)
    stateful.on_deadline("t")(lambda deadline, state: None)
    with pytest.raises(ValueError, match="two on_deadline"):
        stateful.on_deadline("t")(lambda deadline, state: None)
    with pytest.raises(ValueError, match="after must be"):
        Schedule("t", after=-MINUTE)


def test_a_crash_between_the_commands_and_the_commit_sends_them_again_under_the_same_ids() -> None:
    # On the wall clock (due 50 ms after): the cancellation the lost firing
    # sent is committed after the deadline was due, as it would be.
    with ReactionRun(deadline_saga.plugin) as run:
        run.submit("o-1", box.CreateBox(name="after-50"))
        run.settle()
        time.sleep(0.1)
        store = run.store
        commit = store.commit_projection
        failed: list[int] = []

        async def fails_once(name: str, **kwargs: Any) -> None:
            if name == REACTION and not failed and kwargs["expected_position"] == kwargs["new_position"]:
                failed.append(1)  # the firing's commit: lost, as in a crash after the commands went out
                raise StoreUnavailable("the database went away")
            await commit(name, **kwargs)

        store.commit_projection = fails_once  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailable):
            run.settle()
        assert _types(run, "o-1") == ["BoxCreated", "BoxArchived"]  # sent before the commit failed
        run.settle()
        status = run.runners[REACTION].status
        assert _types(run, "o-1") == ["BoxCreated", "BoxArchived"]  # once
        assert (status.accepted, status.replayed, status.deadlines_fired) == (1, 1, 1)
        assert _due(run) == (0, None)


def test_dropping_a_process_state_drops_its_deadlines() -> None:
    with ReactionRun(deadline_saga.plugin) as run:
        run.submit("o-1", box.CreateBox(name="book"))
        run.submit("o-2", box.CreateBox(name="book"))
        run.settle()
        assert _due(run)[0] == 2
        _await(run, run.runners[REACTION].drop_states(["o-1"]))
        assert _due(run)[0] == 1
        run.advance(20 * MINUTE)
        run.settle()
        assert _types(run, "o-1") == ["BoxCreated"]
        assert _types(run, "o-2") == ["BoxCreated", "BoxArchived"]


def test_forgetting_an_aggregate_a_deadlines_process_names_deletes_the_deadline() -> None:
    with ReactionRun(deadline_saga.plugin) as run:
        for order_id in ("o-1", "o-2"):
            _await(run, run.store.create_data_key(DataKey(order_id, "m", b"w" * 40)))
            run.submit(order_id, box.CreateBox(name="book"))
        run.settle()
        forgetting = _await(run, run.store.forget_aggregate_data("o-1"))
        assert forgetting.erased
        assert run.process_state(REACTION, "o-1") is None
        assert _due(run)[0] == 1
        run.advance(20 * MINUTE)
        run.settle()
        assert run.runners[REACTION].status.deadlines_fired == 1  # o-2's alone


def test_a_running_reaction_reads_no_deadline_per_batch_and_wakes_for_its_soonest_not_at_its_next_poll() -> None:
    """docs/plugins.md, "Punctual within about a second": its poll interval
    is a minute. While events flow and no deadline is due (each schedules
    one ten minutes out), its batches read nothing of the deadlines (no
    due_summary, no due_documents); then a deadline due 300 ms after its
    event, with no event meanwhile, fires within about a second of its due
    time all the same: it woke for the deadline, not for the poll."""
    with ReactionRun(deadline_saga.plugin) as run:
        runner = run.runners[REACTION]
        runner._poll_interval = 60.0
        documents: Any = runner._documents
        reads = {"due_summary": 0, "due_documents": 0}

        def counted(name: str) -> Any:
            original = getattr(documents, name)

            async def read(*args: Any, **kwargs: Any) -> Any:
                reads[name] += 1
                return await original(*args, **kwargs)

            return read

        async def handled(count: int) -> None:
            began = time.monotonic()
            while runner.status.handled < count:
                assert time.monotonic() - began < 20, f"{count} events never handled"
                await asyncio.sleep(0.01)

        async def started() -> None:
            runner.start()
            await handled(1)

        run.submit("o-0", box.CreateBox(name="book"))  # a deadline ten minutes out
        try:
            _await(run, started())  # taking the lease reads the soonest once
            for name in reads:
                setattr(documents, name, counted(name))
            for number in range(1, 6):
                run.submit(f"o-{number}", box.CreateBox(name="book"))  # each its own batch, each a deadline
                _await(run, handled(number + 1))
            assert reads == {"due_summary": 0, "due_documents": 0}
            assert _due(run)[0] == 6 and runner.status.deadlines_fired == 0

            placed = time.monotonic()
            run.submit("o-9", box.CreateBox(name="after-300"))

            async def until_fired() -> float:
                while runner.status.deadlines_fired == 0:
                    assert time.monotonic() - placed < 20, "the deadline never fired"
                    await asyncio.sleep(0.01)
                return time.monotonic() - placed

            took = _await(run, until_fired())
        finally:
            _await(run, runner.stop())
        assert 0.3 <= took < 1.5  # due at 0.3 s; fired within about a second of it, not at the minute's poll
        assert _types(run, "o-9") == ["BoxCreated", "BoxArchived"]


def test_a_deadline_document_the_state_disagrees_with_is_set_right_not_fired() -> None:
    with ReactionRun(deadline_saga.plugin) as run:
        run.submit("o-1", box.CreateBox(name="book"))
        run.settle()
        state = run.process_state(REACTION, "o-1")
        assert state is not None
        (scheduled,) = state.deadlines
        # Its document says it is due now; its state says in 10 minutes.
        early = _deadline_document(scheduled.due_us - 600_000_000)
        _await(run, run.store.commit_projection(REACTION, expected_position=1, new_position=1, writes=[early]))
        run.runners[REACTION]._soonest.forget()  # read again, as by a runner that takes the lease
        run.advance(timedelta(seconds=1))
        run.settle()
        assert _types(run, "o-1") == ["BoxCreated"]
        assert _due(run) == (1, scheduled.due_us)  # as the state says


def _deadline_document(due_us: int) -> DocumentWrite:
    document = reaction_pb.Deadline(state_key="o-1", name="payment", due_us=due_us)
    return DocumentWrite(
        "deadline:o-1:payment", "chronicle.v1.Deadline", document.SerializeToString(), ("o-1",), due_us
    )


def test_a_deadline_function_that_raises_stops_the_reaction_naming_it_and_fires_once_mended() -> None:
    broken = {"yes"}
    plugin = Plugin("failing")
    thing = plugin.aggregate("Thing", state=box.Box)

    @thing.command(box.CreateBox)
    def create(command: box.CreateBox, state: box.Box, context: CommandContext) -> box.BoxCreated:
        return box.BoxCreated(name=command.name)

    @thing.command(box.ArchiveBox)
    def archive(command: box.ArchiveBox, state: box.Box, context: CommandContext) -> box.BoxArchived:
        return box.BoxArchived()

    @thing.apply(box.BoxCreated)
    def _created(state: box.Box, event: box.BoxCreated) -> None:
        state.name = event.name

    @thing.apply(box.BoxArchived)
    def _archived(state: box.Box, event: box.BoxArchived) -> None:
        state.archived = True

    reaction = plugin.reaction(
        "failing", aggregate_types=["Thing"], state=box.Box, state_key=lambda envelope: envelope.aggregate_id
    )

    @reaction.on(box.BoxCreated)
    def created(event: box.BoxCreated, envelope: ProjectedEvent, progress: box.Box) -> Schedule:
        progress.name = event.name
        return Schedule("late", after=MINUTE)

    @reaction.on_deadline("late")
    def late(deadline: Deadline, progress: box.Box) -> Send:
        if broken:
            raise RuntimeError("a bug in the deadline's function")
        return Send(deadline.state_key, box.ArchiveBox())

    with ReactionRun(plugin) as run:
        run.submit("t-1", box.CreateBox(name="a"))
        run.settle()
        run.advance(2 * MINUTE)
        with pytest.raises(ReactionFailed) as caught:
            run.settle()
        assert "deadline 'late' of process 't-1'" in caught.value.message
        assert caught.value.metadata["deadline"] == "late" and caught.value.metadata["state_key"] == "t-1"
        assert _due(run, "failing")[0] == 1  # still pending
        broken.clear()
        run.settle()
        assert _types(run, "t-1") == ["BoxCreated", "BoxArchived"]
        assert _due(run, "failing") == (0, None)


def test_a_deadlines_refused_command_goes_to_on_refused_then_is_parked_as_an_events() -> None:
    refused: list[tuple[str, str]] = []
    plugin = Plugin("refusing")
    thing = plugin.aggregate("Thing", state=box.Box)

    @thing.command(box.CreateBox)
    def create(command: box.CreateBox, state: box.Box, context: CommandContext) -> box.BoxCreated:
        return box.BoxCreated(name=command.name)

    @thing.command(box.ArchiveBox)
    def archive(command: box.ArchiveBox, state: box.Box, context: CommandContext) -> box.BoxArchived:
        raise ValidationError("this thing is never archived", reason="NEVER_ARCHIVED")

    @thing.apply(box.BoxCreated)
    def _created(state: box.Box, event: box.BoxCreated) -> None:
        state.name = event.name

    reaction = plugin.reaction(
        "refusing", aggregate_types=["Thing"], state=box.Box, state_key=lambda envelope: envelope.aggregate_id
    )

    @reaction.on(box.BoxCreated)
    def created(event: box.BoxCreated, envelope: ProjectedEvent, progress: box.Box) -> Schedule:
        progress.name = event.name
        return Schedule("late", after=MINUTE)

    @reaction.on_deadline("late")
    def late(deadline: Deadline, progress: box.Box) -> Send:
        progress.name = "archiving"
        return Send(deadline.state_key, box.ArchiveBox())

    @reaction.on_refused
    def compensate(refusal: Refusal, envelope: ProjectedEvent, progress: box.Box) -> None:
        refused.append((refusal.reason, progress.name))  # the state as the deadline's function left it

    with ReactionRun(plugin) as run:
        run.submit("t-1", box.CreateBox(name="a"))
        run.settle()
        (created_event,) = run.recorded("t-1")
        run.advance(2 * MINUTE)
        run.settle()
        (parked,) = run.parked("refusing")
    assert refused == [("NEVER_ARCHIVED", "archiving")]
    assert (parked.reason, parked.event_id, parked.aggregate_id) == ("NEVER_ARCHIVED", created_event.event_id, "t-1")


def test_a_crash_before_the_scheduling_batch_commits_loses_nothing_and_schedules_once() -> None:
    with ReactionRun(deadline_saga.plugin) as run:
        store = run.store
        commit = store.commit_projection
        failed: list[int] = []

        async def fails_once(name: str, **kwargs: Any) -> None:
            if name == REACTION and not failed:
                failed.append(1)  # the batch that schedules: lost, as in a crash before its commit
                raise StoreUnavailable("the database went away")
            await commit(name, **kwargs)

        store.commit_projection = fails_once  # type: ignore[method-assign]
        run.submit("o-1", box.CreateBox(name="book"))
        with pytest.raises(StoreUnavailable):
            run.settle()
        assert _due(run) == (0, None)  # nothing written
        run.settle()  # the batch again
        (placed,) = run.recorded("o-1")
        assert _due(run) == (1, placed.timestamp_us + 600_000_000)  # once, due as the first time
        state = run.process_state(REACTION, "o-1")
        assert state is not None and len(state.deadlines) == 1


class _Lease:
    """A reaction's lease as a test hands it from replica to replica."""

    def __init__(self) -> None:
        self.token: Fencing | None = None

    def fencing(self) -> Fencing | None:
        return self.token

    def holder(self) -> str:
        return ""

    def step_aside(self) -> None:
        self.token = None


def test_only_the_replica_holding_the_lease_fires_and_one_that_takes_it_learns_what_the_other_scheduled() -> None:
    with ReactionRun(deadline_saga.plugin) as run:
        first = run.runners[REACTION]
        second = ReactionRunner(
            first.reaction,
            registry=run.registry,
            submit=first._submit,
            log=first._log,
            documents=first._documents,
            reader=first._reader,
            clock=run.now_us,
        )
        one, two = _Lease(), _Lease()
        first._lease, second._lease = one, two

        def step(runner: ReactionRunner) -> None:
            _await(run, runner.step(runner.status.position))

        two.token = Fencing("g", REACTION, "two", 1)
        step(second)  # holds it, with nothing to do: it knows of no deadline
        two.token, one.token = None, Fencing("g", REACTION, "one", 2)
        run.submit("o-1", box.CreateBox(name="book"))
        step(first)  # the lease moved: the first schedules
        assert _due(run)[0] == 1
        run.advance(20 * MINUTE)
        one.token = None
        step(first)  # due, but it no longer holds the lease: nothing
        step(second)
        assert _types(run, "o-1") == ["BoxCreated"]
        two.token = Fencing("g", REACTION, "two", 3)
        step(second)  # it takes the lease back: reads what is pending, and fires it
        assert _types(run, "o-1") == ["BoxCreated", "BoxArchived"]
        assert (first.status.deadlines_fired, second.status.deadlines_fired) == (0, 1)


def test_a_deadline_function_that_schedules_with_no_delay_stops_the_reaction() -> None:
    plugin = Plugin("looping")
    thing = plugin.aggregate("Thing", state=box.Box)

    @thing.command(box.CreateBox)
    def create(command: box.CreateBox, state: box.Box, context: CommandContext) -> box.BoxCreated:
        return box.BoxCreated(name=command.name)

    @thing.apply(box.BoxCreated)
    def _created(state: box.Box, event: box.BoxCreated) -> None:
        state.name = event.name

    reaction = plugin.reaction(
        "looping", aggregate_types=["Thing"], state=box.Box, state_key=lambda envelope: envelope.aggregate_id
    )

    @reaction.on(box.BoxCreated)
    def created(event: box.BoxCreated, envelope: ProjectedEvent, progress: box.Box) -> Schedule:
        progress.name = event.name
        return Schedule("again", after=MINUTE)

    @reaction.on_deadline("again")
    def again(deadline: Deadline, progress: box.Box) -> Schedule:
        return Schedule("again", after=timedelta(0))  # would fire for ever

    with ReactionRun(plugin) as run:
        run.submit("t-1", box.CreateBox(name="a"))
        run.settle()
        run.advance(2 * MINUTE)
        with pytest.raises(ReactionFailed) as caught:
            run.settle()
        assert caught.value.reason == "DEADLINE_NOT_LATER"
        assert _due(run, "looping")[0] == 1  # still pending, as it was


def test_a_deadline_keeps_the_envelope_of_the_event_that_scheduled_it() -> None:
    with ReactionRun(_timers_plugin([], lambda *_: Schedule("t", after=MINUTE))) as run:
        run.submit("t-1", box.CreateBox(name="a"))
        run.settle()
        state = run.process_state("timers", "t-1")
        assert state is not None
        (first,) = state.deadlines
        assert first.event_id == run.recorded("t-1")[0].event_id


def _parking_plugin(late: Any, archive_fails: Any = lambda: False) -> Plugin:
    """Things whose "late" deadline (a minute after creation) ``late``
    handles, in reaction "parking" (on_failure="park", max_attempts=3);
    ArchiveBox ends a thing's process (its handler raises, a plugin's bug,
    while ``archive_fails()``); RenameBox no aggregate takes."""
    plugin = Plugin("parking")
    thing = plugin.aggregate("Thing", state=box.Box)

    @thing.command(box.CreateBox)
    def create(command: box.CreateBox, state: box.Box, context: CommandContext) -> box.BoxCreated:
        return box.BoxCreated(name=command.name)

    @thing.command(box.ArchiveBox)
    def archive(command: box.ArchiveBox, state: box.Box, context: CommandContext) -> box.BoxArchived:
        if archive_fails():
            raise RuntimeError("a bug in the ArchiveBox handler")
        return box.BoxArchived()

    @thing.apply(box.BoxCreated)
    def _created(state: box.Box, event: box.BoxCreated) -> None:
        state.name = event.name

    @thing.apply(box.BoxArchived)
    def _archived(state: box.Box, event: box.BoxArchived) -> None:
        state.archived = True

    reaction = plugin.reaction(
        "parking",
        aggregate_types=["Thing"],
        state=box.Box,
        state_key=lambda envelope: envelope.aggregate_id,
        on_failure="park",
        max_attempts=3,
    )

    @reaction.on(box.BoxCreated)
    def created(event: box.BoxCreated, envelope: ProjectedEvent, progress: box.Box) -> Schedule:
        progress.name = event.name
        return Schedule("late", after=MINUTE)

    reaction.on_deadline("late")(late)

    @reaction.on(box.BoxArchived)
    def archived(event: box.BoxArchived, envelope: ProjectedEvent, progress: box.Box) -> None:
        progress.Clear()

    return plugin


def _restarted(run: ReactionRun, name: str, outcomes: list[str] | None = None) -> None:
    """The reaction's runner replaced by a new one, as a server's restart
    (or another replica taking the lease) makes: nothing kept in memory;
    with ``outcomes``, what it tells its metric is noted there."""
    old = run.runners[name]
    run.runners[name] = ReactionRunner(
        old.reaction,
        registry=run.registry,
        submit=old._submit,
        log=old._log,
        documents=old._documents,
        reader=old._reader,
        clock=run.now_us,
        outcomes=None if outcomes is None else (lambda reaction, outcome: outcomes.append(outcome)),
    )


def test_a_failing_deadline_function_is_counted_in_the_store_and_parked_at_max_attempts_across_restarts() -> None:
    def late(deadline: Deadline, progress: box.Box) -> Send:
        raise RuntimeError("a bug in the deadline's function")

    with ReactionRun(_parking_plugin(late)) as run:
        run.submit("t-1", box.CreateBox(name="a"))
        run.settle()
        run.advance(2 * MINUTE)
        for failures in (1, 2):
            with pytest.raises(ReactionFailed) as caught:
                run.settle()
            assert "deadline 'late' of process 't-1'" in caught.value.message
            stored = _await(run, run.store.load_document("parking", "deadline:t-1:late"))
            assert reaction_pb.Deadline.FromString(stored.data).failures == failures
            assert run.parked("parking") == []
            _restarted(run, "parking")  # the count is the store's, not the runner's
        run.settle()  # the 3rd failure: parked, and the reaction goes on
        (parked,) = run.parked("parking")
        assert (parked.deadline.state_key, parked.deadline.deadline.name) == ("t-1", "late")
        assert parked.reason == "REACTION_FAILED" and "RuntimeError: a bug" in parked.message
        assert _due(run, "parking") == (0, None)
        state = run.process_state("parking", "t-1")
        assert state is not None and list(state.deadlines) == []
        assert run.runners["parking"].status.parked == 1
        run.submit("t-2", box.CreateBox(name="b"))
        with pytest.raises(ReactionFailed) as caught:
            run.settle()  # t-2 handled; its deadline (due by the test's clock already) fails in turn
        assert "deadline 'late' of process 't-2'" in caught.value.message
        assert _due(run, "parking")[0] == 1
        assert run.process_state("parking", "t-2") is not None


def test_a_deadline_function_returning_what_it_must_not_is_parked_and_its_replay_after_the_process_ended_says_so() -> (
    None
):
    def late(deadline: Deadline, progress: box.Box) -> Schedule:
        # A name made at run time (a literal one is refused as the plugins
        # load): UNKNOWN_DEADLINE when it runs.
        return Schedule("-".join(["un", "declared"]), after=MINUTE)

    with ReactionRun(_parking_plugin(late)) as run:
        run.submit("t-1", box.CreateBox(name="a"))
        run.settle()
        run.advance(2 * MINUTE)
        for _ in range(2):
            with pytest.raises(ReactionFailed):
                run.settle()
        run.settle()
        (parked,) = run.parked("parking")
        assert parked.reason == "UNKNOWN_DEADLINE"
        run.submit("t-1", box.ArchiveBox())  # the process ends meanwhile
        run.settle()
        assert run.process_state("parking", "t-1") is None
        runner = run.runners["parking"]
        again = _await(run, runner.replay(parked.command_id))
        assert (again.accepted, again.reason) == (False, "DEADLINE_WITHOUT_PROCESS")
        (still,) = run.parked("parking")
        assert (still.replays, still.reason) == (1, "DEADLINE_WITHOUT_PROCESS")
        _await(run, runner.dismiss(parked.command_id))
        assert run.parked("parking") == []


def test_a_replayed_parked_deadline_whose_function_schedules_again_fires_that_one_when_due() -> None:
    broken = {"yes"}

    def late(deadline: Deadline, progress: box.Box) -> Schedule | Send:
        if broken:
            raise RuntimeError("a bug in the deadline's function")
        if progress.name != "retried":
            progress.name = "retried"
            return Schedule("late", after=MINUTE)  # once more, a minute after this one was due
        return Send(deadline.state_key, box.ArchiveBox())

    with ReactionRun(_parking_plugin(late)) as run:
        run.submit("t-1", box.CreateBox(name="a"))
        run.settle()
        run.advance(2 * MINUTE)
        for _ in range(2):
            with pytest.raises(ReactionFailed):
                run.settle()
        run.settle()
        (parked,) = run.parked("parking")
        run.settle()  # the runner now knows of no deadline (its soonest: none)
        broken.clear()
        runner = run.runners["parking"]
        assert _await(run, runner.replay(parked.command_id)).accepted
        assert run.parked("parking") == [] and _due(run, "parking")[0] == 1
        run.advance(2 * MINUTE)
        run.settle()  # it learnt of the deadline the replay scheduled: fired
        assert _types(run, "t-1") == ["BoxCreated", "BoxArchived"]


def test_a_deadlines_command_failing_for_a_plugin_bug_is_counted_in_the_deadline_and_parked_across_restarts() -> None:
    broken = {"yes"}

    def late(deadline: Deadline, progress: box.Box) -> Send:
        progress.name = "archiving"
        return Send(deadline.state_key, box.ArchiveBox())

    outcomes: list[str] = []
    with ReactionRun(_parking_plugin(late, archive_fails=lambda: bool(broken))) as run:
        run.submit("t-1", box.CreateBox(name="a"))
        run.settle()
        (created,) = run.recorded("t-1")
        run.advance(2 * MINUTE)
        for failures in (1, 2):
            with pytest.raises(ChronicleError) as caught:
                run.settle()
            assert caught.value.reason == "HANDLER_FAILED"
            stored = _await(run, run.store.load_document("parking", "deadline:t-1:late"))
            counted = reaction_pb.Deadline.FromString(stored.data)
            assert (counted.failures, list(counted.command_failures.values())) == (0, [failures])
            assert run.parked("parking") == []
            _restarted(run, "parking", outcomes)  # the count is the store's, not the runner's
        run.settle()  # the 3rd failure: the command parked, the deadline fired, the reaction goes on
        (parked,) = run.parked("parking")
        assert (parked.reason, parked.aggregate_id, parked.event_id) == ("HANDLER_FAILED", "t-1", created.event_id)
        assert dict(counted.command_failures) == {parked.command_id: 2}
        assert not parked.HasField("deadline")  # the command is parked, not its deadline
        assert _due(run, "parking") == (0, None)
        state = run.process_state("parking", "t-1")
        assert state is not None and list(state.deadlines) == []  # fired: no longer pending
        status = run.runners["parking"].status
        assert (status.deadlines_fired, status.parked, status.refused) == (1, 1, 1)
        assert sorted(outcomes) == ["deadline_fired", "parked", "refused"]
        broken.clear()  # the fix deployed: replayed as an event's parked command is
        assert _await(run, run.runners["parking"].replay(parked.command_id)).accepted
        assert _types(run, "t-1") == ["BoxCreated", "BoxArchived"]
        assert run.parked("parking") == []


def test_a_replayed_parked_deadline_counts_as_fired_and_what_its_firing_parks_as_parked() -> None:
    broken = {"yes"}

    def late(deadline: Deadline, progress: box.Box) -> list[Send]:
        if broken:
            raise RuntimeError("a bug in the deadline's function")
        progress.name = "late"
        # The second no aggregate takes (UNKNOWN_COMMAND_TYPE): parked by the firing.
        return [Send(deadline.state_key, box.ArchiveBox()), Send(deadline.state_key, box.RenameBox())]

    outcomes: list[str] = []
    with ReactionRun(_parking_plugin(late)) as run:
        run.submit("t-1", box.CreateBox(name="a"))
        run.submit("t-2", box.CreateBox(name="b"))
        run.settle()
        run.advance(2 * MINUTE)
        _restarted(run, "parking", outcomes)
        for _ in range(10):  # each deadline fails 3 times, and is parked at the 3rd
            with contextlib.suppress(ReactionFailed):
                run.settle()
            if len(run.parked("parking")) == 2:
                break
        assert sorted(parked.deadline.state_key for parked in run.parked("parking")) == ["t-1", "t-2"]
        runner = run.runners["parking"]
        assert (outcomes, runner.status.deadlines_fired) == (["parked", "parked"], 0)
        outcomes.clear()
        broken.clear()
        by_key = {parked.deadline.state_key: parked for parked in run.parked("parking")}
        assert _await(run, runner.replay(by_key["t-1"].command_id)).accepted  # one by one
        assert runner.status.deadlines_fired == 1
        assert sorted(outcomes) == ["accepted", "deadline_fired", "parked", "refused"]
        outcomes.clear()
        (replayed,) = _await(run, runner.replay_all(reason="REACTION_FAILED"))  # and all at once
        assert replayed.accepted
        assert runner.status.deadlines_fired == 2
        assert sorted(outcomes) == ["accepted", "deadline_fired", "parked", "refused"]
        left = [(parked.aggregate_id, parked.reason) for parked in run.parked("parking")]
        assert left == [("t-1", "UNKNOWN_COMMAND_TYPE"), ("t-2", "UNKNOWN_COMMAND_TYPE")]
        assert runner.status.parked == 2


def test_replaying_all_commits_nothing_of_a_parked_deadline_whose_replay_failed_midway() -> None:
    broken = {"function", "archive"}

    def late(deadline: Deadline, progress: box.Box) -> list[Send]:
        if "function" in broken:
            raise RuntimeError("a bug in the deadline's function")
        progress.name = "late"
        sends = [Send(deadline.state_key, box.RenameBox())]  # no aggregate takes it: parked
        if deadline.state_key == "t-2":
            sends.append(Send(deadline.state_key, box.ArchiveBox()))  # its handler raises while "archive"
        return sends

    with ReactionRun(_parking_plugin(late, archive_fails=lambda: "archive" in broken)) as run:
        run.submit("t-1", box.CreateBox(name="a"))
        run.submit("t-2", box.CreateBox(name="b"))
        run.settle()
        run.advance(2 * MINUTE)
        for _ in range(10):  # each deadline fails 3 times, and is parked at the 3rd
            with contextlib.suppress(ReactionFailed):
                run.settle()
            if len(run.parked("parking")) == 2:
                break
        broken.discard("function")
        runner = run.runners["parking"]
        with pytest.raises(ChronicleError) as caught:
            _await(run, runner.replay_all())  # t-1's fires; t-2's parks its RenameBox, then fails
        assert caught.value.reason == "HANDLER_FAILED"
        listed = [(parked.deadline.state_key, parked.aggregate_id, parked.reason) for parked in run.parked("parking")]
        assert listed == [("t-2", "", "REACTION_FAILED"), ("", "t-1", "UNKNOWN_COMMAND_TYPE")]  # t-1's firing only
        broken.clear()
        (replayed,) = _await(run, runner.replay_all(reason="REACTION_FAILED"))
        assert replayed.accepted
        ids = [parked.command_id for parked in run.parked("parking")]
        assert [parked.aggregate_id for parked in run.parked("parking")] == ["t-1", "t-2"]
        assert len(set(ids)) == 2 and runner.status.parked == 2
