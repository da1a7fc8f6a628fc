"""The Python client's ``reactions`` (ReactionService) over a real socket:
statuses, parked commands followed to the last page, replayed and dismissed
one by one and all at once, a process's state dropped, and each refusal as
the client's error with the server's reason. The plugins are
``tests.support.plugins.gates`` (its relay parks what the shut "gated" gate
refuses) and ``tests.support.reaction_notes`` (a state per gate)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest

from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.client import (
    ChronicleClient,
    InvalidArgument,
    NotFound,
    ParkedCommand,
    PermissionDenied,
    RemoteError,
)
from service.plugins.registry import Registry
from service.store.memory import MemoryStore
from tests.support import plugins, reaction_notes
from tests.support.grpc_client import running_server
from tests.support.waiting import eventually

RELAY = "gates.relay"
NOTES = "notes.names"
REGISTRY = Registry([plugins.gates, reaction_notes.plugin])


@asynccontextmanager
async def serving(*, admin: bool = True) -> AsyncIterator[ChronicleClient]:
    async with (
        running_server(MemoryStore(), registry=REGISTRY, anonymous_admin=admin, poll_seconds=0.05) as (app, _),
        ChronicleClient.connect(app.address) as client,
    ):
        yield client


@pytest.fixture
async def client() -> AsyncIterator[ChronicleClient]:
    async with serving() as connected:
        yield connected


async def park(client: ChronicleClient, names: list[str]) -> None:
    """Lets ``names`` through the open "source" gate; the relay parks each."""
    want = (await client.reactions.get(RELAY)).parked + len(names)
    await client.submit("source", box.ArchiveBox())
    for name in names:
        await client.submit("source", box.RenameBox(name=name))

    async def there() -> bool:
        return (await client.reactions.get(RELAY)).parked == want

    await eventually(there, what=f"{want} commands parked")


async def every(client: ChronicleClient, page_size: int = 0) -> list[ParkedCommand]:
    return [parked async for parked in client.reactions.parked(RELAY, page_size=page_size)]


def name_of(parked: ParkedCommand) -> str:
    command = box.RenameBox()
    parked.command.Unpack(command)
    return command.name


def refusal(error: pytest.ExceptionInfo[RemoteError]) -> tuple[type[RemoteError], str]:
    return type(error.value), error.value.reason


async def test_reactions_are_listed_by_name_and_read_one_by_one(client: ChronicleClient) -> None:
    assert [status.name for status in await client.reactions.list()] == [RELAY, NOTES]
    notes = await client.reactions.get(NOTES)
    assert (notes.on_failure, notes.max_attempts, notes.start_from) == ("park", 2, "beginning")
    assert notes.retry_interval.ToTimedelta() == timedelta(seconds=0.25)
    with pytest.raises(NotFound) as missing:
        await client.reactions.get("no.such")
    assert refusal(missing) == (NotFound, "REACTION_NOT_FOUND")


async def test_parked_commands_are_followed_to_the_last_page_oldest_first(client: ChronicleClient) -> None:
    await park(client, ["a", "b", "c", "d", "e"])
    assert [name_of(parked) for parked in await every(client, page_size=2)] == ["a", "b", "c", "d", "e"]
    # The client's older name for the same listing.
    assert [p.command_id async for p in client.parked_commands(RELAY)] == [p.command_id for p in await every(client)]
    with pytest.raises(InvalidArgument) as too_many:
        await every(client, page_size=1001)
    assert refusal(too_many) == (InvalidArgument, "PAGE_SIZE_TOO_LARGE")


async def test_parked_commands_are_replayed_and_dismissed_one_by_one_and_all_at_once(client: ChronicleClient) -> None:
    await park(client, ["a", "b", "c", "d"])
    outcome = await client.reactions.replay_all(RELAY)
    assert (outcome.accepted, outcome.refused) == (0, 4)  # the gate still shut: all parked again
    a, b, *_ = await every(client)
    await client.reactions.dismiss(RELAY, a.command_id)
    with pytest.raises(NotFound) as gone:
        await client.reactions.dismiss(RELAY, a.command_id)
    assert refusal(gone) == (NotFound, "PARKED_COMMAND_NOT_FOUND")
    again = await client.reactions.replay(RELAY, b.command_id)
    assert (again.accepted, again.reason) == (False, "GATE_SHUT")
    assert await client.reactions.dismiss_all(RELAY, reason="SOMETHING_ELSE") == 0

    await client.submit("gated", box.ArchiveBox())  # the gate opens
    assert (await client.reactions.replay(RELAY, b.command_id)).accepted
    outcome = await client.reactions.replay_all(RELAY, reason="GATE_SHUT")
    assert (outcome.accepted, outcome.refused) == (2, 0)
    assert await every(client) == []


async def test_a_process_state_is_dropped_once_and_a_bad_key_is_refused(client: ChronicleClient) -> None:
    await client.submit("source", box.ArchiveBox())
    await client.submit("source", box.RenameBox(name="ann"))

    async def caught_up() -> bool:
        status = await client.reactions.get(NOTES)
        return status.position == status.log_head and not status.error

    await eventually(caught_up, what="notes.names caught up")
    await client.reactions.drop_state(NOTES, "source")
    with pytest.raises(NotFound) as dropped:
        await client.reactions.drop_state(NOTES, "source")
    assert refusal(dropped) == (NotFound, "PROCESS_STATE_NOT_FOUND")
    assert dropped.value.metadata["state_key"] == "source"
    with pytest.raises(InvalidArgument) as empty:
        await client.reactions.drop_state(NOTES, "")
    assert refusal(empty) == (InvalidArgument, "INVALID_STATE_KEY")


async def test_process_states_are_read_listed_and_dropped_several_at_once(client: ChronicleClient) -> None:
    for gate, name in (("source", "ann"), ("gated", "bob")):
        await client.submit(gate, box.ArchiveBox())  # opened
        await client.submit(gate, box.RenameBox(name=name))

    async def caught_up() -> bool:
        status = await client.reactions.get(NOTES)
        return status.position == status.log_head and not status.error

    await eventually(caught_up, what="notes.names caught up")
    state = await client.reactions.state(NOTES, "source")
    assert (state.state_key, state.state_type, state.state_json) == ("source", "box.v1.Box", '{"name":"ann"}')
    assert [s.state_key async for s in client.reactions.states(NOTES, page_size=1)] == ["gated", "source"]
    assert [s.state_key async for s in client.reactions.states(NOTES, prefix="so")] == ["source"]
    with pytest.raises(NotFound) as missing:
        await client.reactions.state(NOTES, "nowhere")
    assert refusal(missing) == (NotFound, "PROCESS_STATE_NOT_FOUND")
    with pytest.raises(NotFound) as partly:
        await client.reactions.drop_states(NOTES, ["source", "nowhere"])
    assert (partly.value.metadata["state_key"], partly.value.metadata["missing"]) == ("nowhere", "1")
    assert await client.reactions.drop_states(NOTES, ["source", "gated"]) == 2
    assert [s async for s in client.reactions.states(NOTES)] == []


async def test_changing_parked_commands_or_states_takes_an_administrator() -> None:
    async with serving(admin=False) as client:
        assert (await client.reactions.get(RELAY)).name == RELAY  # reading does not
        for change in (
            client.reactions.replay_all(RELAY),
            client.reactions.dismiss_all(RELAY),
            client.reactions.drop_state(NOTES, "source"),
            client.reactions.drop_states(NOTES, ["source", "gated"]),
            client.reactions.state(NOTES, "source"),  # a state may hold personal data: reading it too
        ):
            with pytest.raises(PermissionDenied):
                await change


async def test_parked_commands_of_one_reason_are_dismissed_at_once(client: ChronicleClient) -> None:
    await park(client, ["a", "b", "c"])
    assert await client.reactions.dismiss_all(RELAY, reason="GATE_SHUT") == 3
    assert await every(client) == []
    assert (await client.reactions.get(RELAY)).parked == 0
