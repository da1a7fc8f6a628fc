"""``on_refused`` returning ``IGNORE`` (docs/plugins.md, "Refusals"): a
refusal the process expects is neither compensated nor parked, but counted
``ignored`` (status and metric); returning None still parks. On the memory
store through the real executor (the harness of test_reactions.py)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from chronicle.v1 import reaction_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.errors import ReactionFailed
from service.plugins import IGNORE, Ignore, Plugin, ProjectedEvent, Refusal, Send
from service.processing.reactions import ReactionRunner
from tests.support.crashing import CrashingStore
from tests.unit.test_reactions import REGISTRY, AddItem, Harness, ItemAdded

ignoring = Plugin("ignoring")

# Sends each item added to "source" on to "limited" (three items at most;
# "refuse" refused on purpose). A full list is expected (another process
# filled it first): ignored, and noted in the state. Any other refusal parks.
CLOSER = ignoring.reaction("ignoring.closer", aggregate_types=["Counter"], state=bank.OwnerBalance)


@CLOSER.on(ItemAdded)
def send_on(event: box.BoxRenamed, envelope: ProjectedEvent, noted: bank.OwnerBalance) -> Send | None:
    if envelope.aggregate_id != "source":
        return None
    return Send("limited", AddItem(name=event.name))


@CLOSER.on_refused
def full_is_fine(refusal: Refusal, envelope: ProjectedEvent, noted: bank.OwnerBalance) -> Ignore | None:
    if refusal.reason == "FULL":
        noted.account_ids.append(f"full:{refusal.command_id}")
        return IGNORE
    return None


# Compensates a refused item with a "refuse" elsewhere, whose refusal it ignores.
SECOND = ignoring.reaction("ignoring.second_round", aggregate_types=["Counter"])


@SECOND.on(ItemAdded)
def always_refused(event: box.BoxRenamed, envelope: ProjectedEvent, state: None) -> Send | None:
    return Send("limited", AddItem(name="refuse")) if envelope.aggregate_id == "source" else None


@SECOND.on_refused
def try_elsewhere(refusal: Refusal, envelope: ProjectedEvent, state: None) -> Send | Ignore:
    if refusal.aggregate_id == "limited":
        return Send("elsewhere", AddItem(name="refuse"))
    return IGNORE


# A function of an event returning IGNORE: a plugin's bug.
MISPLACED = ignoring.reaction("ignoring.misplaced", aggregate_types=["Counter"])


@MISPLACED.on(ItemAdded)
def ignore_an_event(event: box.BoxRenamed, envelope: ProjectedEvent, state: None) -> Any:
    return IGNORE


def runner_of(run: Harness, reaction: Any, outcomes: list[str] | None = None) -> ReactionRunner:
    return ReactionRunner(
        reaction,
        registry=REGISTRY,
        submit=run.router.submit,
        log=run.roles.log,
        documents=run.roles.projections,
        reader=run.executor.loader.reader,
        outcomes=None if outcomes is None else (lambda name, outcome: outcomes.append(outcome)),
    )


async def test_an_ignored_refusal_is_not_parked_but_counted_and_its_state_change_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = Harness()
    for item in ("a", "b", "c", "d", "refuse"):  # "d": full, ignored; "refuse": parked
        await run.add("source", item, correlation_id="one")
    outcomes: list[str] = []
    runner = runner_of(run, CLOSER, outcomes)
    with caplog.at_level(logging.DEBUG, logger="service.processing.reactions"):
        await runner.step(0)
    assert await run.items("limited") == ["a", "b", "c"]
    (parked,) = await run.parked(CLOSER.name)  # only the refusal it did not expect
    assert (parked.reason, AddItem.FromString(parked.command.value).name) == ("REFUSED_ON_PURPOSE", "refuse")
    status = runner.status
    assert (status.accepted, status.refused, status.ignored, status.parked) == (3, 2, 1, 1)
    assert sorted(outcomes) == ["accepted"] * 3 + ["ignored", "parked", "refused", "refused"]
    # What on_refused wrote to the state before it said IGNORE is committed.
    stored = await run.store.load_document(CLOSER.name, "state:one")
    assert stored is not None
    noted = bank.OwnerBalance()
    assert reaction_service_pb2.ProcessState.FromString(stored.data).state.Unpack(noted)
    assert [note.split(":")[0] for note in noted.account_ids] == ["full"]
    said = [r for r in caplog.records if r.levelno == logging.DEBUG and "ignored the refusal" in r.getMessage()]
    assert len(said) == 1 and "FULL" in said[0].getMessage()


async def test_a_refused_compensation_may_be_ignored_too() -> None:
    run = Harness()
    await run.add("source", "a")
    runner = runner_of(run, SECOND)
    await runner.step(0)
    assert await run.parked(SECOND.name) == []
    assert (runner.status.refused, runner.status.ignored) == (2, 1)


async def test_run_again_after_a_crash_an_ignored_refusal_is_ignored_again_and_nothing_parked() -> None:
    run = Harness(CrashingStore(crashes=1))
    for item in ("a", "b", "c", "d"):
        await run.add("source", item)
    with pytest.raises(RuntimeError):
        await runner_of(run, CLOSER).step(0)  # sent, refused, ignored; the commit lost
    again = runner_of(run, CLOSER)
    await again.step(0)
    assert await run.items("limited") == ["a", "b", "c"]
    assert await run.parked(CLOSER.name) == []
    assert (again.status.replayed, again.status.refused, again.status.ignored) == (3, 1, 1)


async def test_ignore_returned_for_an_event_stops_the_reaction_saying_it_is_for_on_refused_only() -> None:
    run = Harness()
    await run.add("source", "a")
    with pytest.raises(ReactionFailed) as failed:
        await runner_of(run, MISPLACED).step(0)
    assert "returned IGNORE (only on_refused may return it" in failed.value.message
    assert await run.store.projection_position(MISPLACED.name) == 0
