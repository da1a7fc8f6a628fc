"""What a reaction's function must return (``Send`` values, a list of them,
or None), and what it is told when it returns anything else: what came
back, what is expected, the reaction and the event type."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.errors import ReactionFailed
from service.plugins import Plugin, ProjectedEvent, Send
from service.plugins.reactions import sends
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.reactions import ReactionRunner
from service.processing.router import Router
from service.store.base import Store
from service.store.memory import MemoryStore

plugin = Plugin("sending")
lists = plugin.aggregate("List", state=bank.OwnerBalance)


@lists.command(box.RenameBox)
def add(command: box.RenameBox, state: bank.OwnerBalance, context: Any) -> box.BoxRenamed:
    return box.BoxRenamed(name=command.name)


@lists.apply(box.BoxRenamed)
def _added(state: bank.OwnerBalance, event: box.BoxRenamed) -> None:
    state.account_ids.append(event.name)


bare = plugin.reaction("sending.bare", aggregate_types=["List"])


@bare.on(box.BoxRenamed)
def bump_back(event: box.BoxRenamed, envelope: ProjectedEvent, state: None) -> Any:
    return box.RenameBox(name="again")  # forgot Send(aggregate_id, ...)


listed = plugin.reaction("sending.listed", aggregate_types=["List"])


@listed.on(box.BoxRenamed)
def some_bare(event: box.BoxRenamed, envelope: ProjectedEvent, state: None) -> Any:
    return [Send("other", box.RenameBox(name="fine")), box.RenameBox(name="not wrapped")]


REGISTRY = Registry([plugin])


def test_sends_takes_a_send_a_list_of_them_or_none() -> None:
    one = Send("a", box.RenameBox(name="x"))
    assert sends(None) == []
    assert sends(one) == [one]
    assert sends([one, one]) == [one, one]
    assert sends(iter([one])) == [one]


def test_a_bare_command_is_named_with_what_is_expected() -> None:
    with pytest.raises(TypeError) as refused:
        sends(box.RenameBox(name="x"))  # type: ignore[arg-type]
    said = str(refused.value)
    assert "box.v1.RenameBox" in said
    assert "Send(aggregate_id, command)" in said
    assert "not iterable" not in said


@pytest.mark.parametrize(
    ("returned", "named"),
    [
        ("text", "a str"),
        (3, "a int"),
        ({"a": Send("a", box.RenameBox())}, "a dict"),
        ([Send("a", box.RenameBox()), "x"], "item 1 is a str"),
    ],
)
def test_anything_else_is_named_too(returned: Any, named: str) -> None:
    with pytest.raises(TypeError) as refused:
        sends(returned)
    assert named in str(refused.value)
    assert "Send(aggregate_id, command)" in str(refused.value)


async def reacting(name: str) -> ReactionFailed:
    """The error that stops reaction ``name`` on the first event."""
    store = MemoryStore()
    roles = Store.of(store)
    executor = CommandExecutor(roles, REGISTRY)
    router = Router(executor)
    spec = REGISTRY.command("box.v1.RenameBox")
    assert spec is not None
    await router.submit(
        CommandRequest(command_id=str(uuid.uuid4()), aggregate_id="l-1", spec=spec, message=box.RenameBox(name="a"))
    )
    reaction = REGISTRY.reaction(name)
    assert reaction is not None
    runner = ReactionRunner(
        reaction,
        registry=REGISTRY,
        submit=router.submit,
        log=roles.log,
        documents=roles.projections,
        reader=executor.loader.reader,
    )
    with pytest.raises(ReactionFailed) as failed:
        await runner.step(0)
    assert await store.projection_position(name) == 0
    return failed.value


async def test_a_reaction_that_returns_a_bare_command_is_told_so() -> None:
    error = await reacting("sending.bare")
    assert error.reason == "REACTION_FAILED"
    said = error.message
    assert "not iterable" not in said
    for part in ("sending.bare", "bump_back", "box.v1.BoxRenamed", "box.v1.RenameBox", "Send(aggregate_id, command)"):
        assert part in said, part
    assert error.metadata["event_type"] == "box.v1.BoxRenamed"


async def test_a_bare_command_in_a_list_is_named_by_its_place() -> None:
    error = await reacting("sending.listed")
    assert "sending.listed" in error.message and "box.v1.BoxRenamed" in error.message
    assert "item 1 is a box.v1.RenameBox message" in error.message
