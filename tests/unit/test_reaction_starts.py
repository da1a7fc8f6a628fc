"""Where a reaction starts (processing/reaction_starts.py; docs/plugins.md,
"Where a reaction starts"), on the memory store through the real executor (the reactions and
the harness of test_reactions.py)."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest

from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.errors import StoreUnavailable
from service.plugins import Plugin, ProjectedEvent, Send
from service.plugins.reactions import Reaction
from service.processing.reaction_starts import MARKER, fix_start_of, fix_starts, fix_starts_safely
from service.processing.reactions import ReactionRunner
from service.store.memory import MemoryStore
from tests.unit.test_reactions import REGISTRY, AddItem, Harness, ItemAdded

late = Plugin("late")


def copies_to(target: str, **options: Any) -> Reaction[None]:
    """A reaction that copies each item added to "source" into ``target``."""
    reaction = late.reaction(f"late.{target.replace('-', '_')}", aggregate_types=["Counter"], **options)

    @reaction.on(ItemAdded)
    def copy(event: box.BoxRenamed, envelope: ProjectedEvent, state: None) -> Send | None:
        if envelope.aggregate_id != "source":
            return None
        return Send(target, AddItem(name=event.name))

    return reaction


AT_END = copies_to("at-end", start_from="end")
AT_BEGINNING = copies_to("at-beginning", start_from="beginning")
UNSAID = copies_to("unsaid")
UNSAID_LATER = copies_to("unsaid-later")


def runner_of(run: Harness, reaction: Reaction[Any], **options: Any) -> ReactionRunner:
    return ReactionRunner(
        reaction,
        registry=REGISTRY,
        submit=run.router.submit,
        log=run.roles.log,
        documents=run.roles.projections,
        reader=run.executor.loader.reader,
        **options,
    )


async def settle(runner: ReactionRunner) -> None:
    await runner.step(await runner._documents.projection_position(runner.reaction.name))


def test_start_from_takes_end_or_beginning() -> None:
    with pytest.raises(ValueError, match="start_from must be 'end' or 'beginning'"):
        late.reaction("late.typo", start_from="now")  # type: ignore[call-overload]


async def test_at_the_end_a_new_reaction_sends_nothing_for_the_events_there_are_and_reacts_to_the_next() -> None:
    run = Harness()
    await fix_starts(run.roles.projections, run.roles.log, [])  # a store this version served: the marker is there
    for item in ("a", "b"):
        await run.add("source", item)
    head = await run.store.log_head()

    found = await fix_starts(run.roles.projections, run.roles.log, [AT_END, AT_BEGINNING])

    assert found == {AT_END.name: head, AT_BEGINNING.name: 0}
    at_end, at_beginning = runner_of(run, AT_END), runner_of(run, AT_BEGINNING)
    await settle(at_end)
    await settle(at_beginning)
    assert (await run.items("at-end"), await run.items("at-beginning")) == ([], ["a", "b"])
    await run.add("source", "c")
    await settle(at_end)
    await settle(at_beginning)
    assert (await run.items("at-end"), await run.items("at-beginning")) == (["c"], ["a", "b", "c"])


async def test_a_start_is_fixed_once_and_a_checkpoint_is_never_moved() -> None:
    run = Harness()
    await run.add("source", "a")
    assert await fix_starts(run.roles.projections, run.roles.log, [AT_END]) == {AT_END.name: 1}
    await run.add("source", "b")
    # a later start (another replica, a restart) finds it where the first fixed it
    assert await fix_starts(run.roles.projections, run.roles.log, [AT_END]) == {AT_END.name: 1}
    await settle(runner_of(run, AT_END))
    assert await run.items("at-end") == ["b"]
    # and a reaction with a checkpoint goes on from it, whatever start_from
    # says; where it started stays known
    position = await run.store.projection_position(AT_END.name)
    assert position > 1
    assert await fix_starts(run.roles.projections, run.roles.log, [AT_END]) == {AT_END.name: 1}
    assert await run.store.projection_position(AT_END.name) == position


async def test_a_reaction_older_than_start_positions_started_where_its_checkpoint_was() -> None:
    run = Harness()
    await run.add("source", "a")
    await run.store.commit_projection(UNSAID.name, expected_position=0, new_position=1, writes=[])  # an older version's
    await run.add("source", "b")
    assert await fix_starts(run.roles.projections, run.roles.log, [UNSAID]) == {UNSAID.name: 1}
    await settle(runner_of(run, UNSAID))
    assert await run.items("unsaid") == ["b"]
    assert await fix_starts(run.roles.projections, run.roles.log, [UNSAID]) == {UNSAID.name: 1}


async def test_unsaid_on_a_store_older_versions_served_starts_at_the_beginning_as_it_did_then_end_afterwards() -> None:
    # Events, no marker: the first start of this version on an older store.
    # A reaction without a checkpoint may have run there (its first batch
    # failing, or never committed): it goes on from the beginning.
    run = Harness()
    for item in ("a", "b"):
        await run.add("source", item)
    found = await fix_starts(run.roles.projections, run.roles.log, [UNSAID, AT_END])
    assert found == {UNSAID.name: 0, AT_END.name: 2}  # start_from said: as said
    assert await run.store.projection_position(MARKER) == 2
    # From then on a reaction new to the store, start_from unsaid, starts at the end.
    await run.add("source", "c")
    found = await fix_starts(run.roles.projections, run.roles.log, [UNSAID, UNSAID_LATER])
    assert found == {UNSAID.name: 0, UNSAID_LATER.name: 3}
    unsaid, unsaid_later = runner_of(run, UNSAID), runner_of(run, UNSAID_LATER)
    await settle(unsaid)
    await settle(unsaid_later)
    assert (await run.items("unsaid"), await run.items("unsaid-later")) == (["a", "b", "c"], [])


async def test_unsaid_on_a_new_store_starts_at_the_end() -> None:
    run = Harness()
    assert await fix_starts(run.roles.projections, run.roles.log, [UNSAID]) == {UNSAID.name: 0}  # empty log
    assert await run.store.projection_position(MARKER) == 1  # never 0: "there"
    await run.add("source", "a")
    assert await fix_starts(run.roles.projections, run.roles.log, [UNSAID_LATER]) == {UNSAID_LATER.name: 1}


class AwayOnce(MemoryStore):
    """A store that cannot be reached for the first start of a reaction."""

    def __init__(self) -> None:
        super().__init__()
        self.away = True

    async def start_projection(self, name: str, position: int) -> int | None:
        if self.away:
            raise StoreUnavailable("the store is away")
        return await super().start_projection(name, position)


async def test_a_start_the_server_could_not_fix_is_fixed_by_the_runner_before_its_first_batch() -> None:
    store = AwayOnce()
    run = Harness(store)
    store.away = False
    await fix_starts(run.roles.projections, run.roles.log, [])  # a store this version served
    store.away = True
    await run.add("source", "a")
    fix = partial(fix_start_of, run.roles.projections, run.roles.log, [AT_END], AT_END.name)
    runner = runner_of(run, AT_END, fix_start=fix)
    await fix_starts_safely(run.roles.projections, run.roles.log, [runner])  # logged, not raised
    store.away = False
    await run.add("source", "b")
    await runner.step(0)
    # fixed when the runner first reached the store, at the head then
    assert (runner.status.start_position, await run.items("at-end")) == (2, [])
    await run.add("source", "c")
    await settle(runner)
    assert await run.items("at-end") == ["c"]


async def never() -> int:
    raise AssertionError("the runner fixed a start the server's start had fixed")


async def test_the_server_s_start_tells_each_runner_where_its_reaction_starts() -> None:
    run = Harness()
    await fix_starts(run.roles.projections, run.roles.log, [])
    await run.add("source", "a")
    runners = [runner_of(run, AT_END, fix_start=never), runner_of(run, AT_BEGINNING, fix_start=never)]
    await fix_starts_safely(run.roles.projections, run.roles.log, runners)
    assert [r.status.start_position for r in runners] == [1, 0]
    for runner in runners:
        await settle(runner)
    assert (await run.items("at-end"), await run.items("at-beginning")) == ([], ["a"])
