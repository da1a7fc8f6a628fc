"""What a reaction's counters count (ReactionStatus in
reaction_service.proto; docs/plugins.md, "Status") while a batch keeps
failing, on the memory store through the real executor (the harness of
test_reactions.py)."""

from __future__ import annotations

import pytest

from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.errors import ReactionFailed
from service.plugins import Plugin, ProjectedEvent, Send
from service.processing.reactions import ReactionRunner
from tests.unit.test_reactions import REGISTRY, AddItem, Harness, ItemAdded

failing = Plugin("failing")
STUCK = failing.reaction("failing.stuck", aggregate_types=["Counter"], start_from="beginning")


@STUCK.on(ItemAdded)
def forward_until_poison(event: box.BoxRenamed, envelope: ProjectedEvent, state: None) -> Send | None:
    if envelope.aggregate_id != "source":
        return None
    if event.name == "poison":
        raise RuntimeError("a bug")
    return Send("forwarded", AddItem(name=event.name))


async def test_while_a_batch_keeps_failing_handled_and_accepted_do_not_count_up_and_replayed_does() -> None:
    run = Harness()
    for item in ("a", "b", "poison"):
        await run.add("source", item)
    runner = ReactionRunner(
        STUCK,
        registry=REGISTRY,
        submit=run.router.submit,
        log=run.roles.log,
        documents=run.roles.projections,
        reader=run.executor.loader.reader,
    )
    with pytest.raises(ReactionFailed):
        await runner.step(await run.store.projection_position(STUCK.name))
    first = (runner.status.handled, runner.status.accepted, runner.status.replayed)
    assert first[1] == 2  # "a" and "b" forwarded once each
    for _ in range(3):
        with pytest.raises(ReactionFailed):
            await runner.step(await run.store.projection_position(STUCK.name))
    # tried again: nothing new happened, nothing new handled
    assert (runner.status.handled, runner.status.accepted) == first[:2]
    assert await run.items("forwarded") == ["a", "b"]
    # what was sent again and answered from its record is counted there
    # (the earlier events a failed attempt did not commit were sent again at
    # each retry, answered from their records)
    assert runner.status.replayed == first[2] + 3 * (2 - first[0])
