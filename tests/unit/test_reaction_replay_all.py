"""Replaying all of a reaction's parked commands sends those parked when it
began, each once, a step at a time with the reaction free to go on between
steps: a command the reaction parks meanwhile waits for another call. On
the memory store through the real executor (the interleaving is made
exact here, which a server over a socket could not promise)."""

from __future__ import annotations

import asyncio

import pytest

from service.processing import reactions
from service.processing.commands import CommandRequest, CommandResult
from service.processing.reaction_documents import list_parked
from tests.unit.test_reaction_limits import Harness


async def test_replay_all_sends_those_parked_when_it_began_each_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reactions, "_REPLAY_STEP", 1)
    run = Harness()
    runner = run.runner("limits.parker")
    for item in ("a", "b"):
        await run.add("source", item)  # each parks a command for "closed", which refuses everything
    await runner.step(0)
    await run.add("source", "c")  # not handled yet

    # The first replay waits until the reaction asked to go on meanwhile.
    release = asyncio.Event()
    submit = runner._submit

    async def held(request: CommandRequest) -> CommandResult:
        await release.wait()
        return await submit(request)

    runner._submit = held
    replaying = asyncio.create_task(runner.replay_all())
    await asyncio.sleep(0.05)
    going_on = asyncio.create_task(runner.step(runner.status.position))  # waits for the replay's first step
    await asyncio.sleep(0.05)
    release.set()
    replayed = await replaying
    await going_on

    # a and b sent again (and refused again); c, parked between the two
    # steps, was not.
    assert [r.accepted for r in replayed] == [False, False]
    parked = {p.command_id: p.replays for p in await list_parked(run.roles.projections, "limits.parker")}
    assert sorted(parked.values()) == [0, 1, 1]
    assert await run.parked_items("limits.parker") == ["a", "b", "c"]
