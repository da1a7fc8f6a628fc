"""A reaction's parked commands in pages, and replayed or dismissed all at
once, over a real socket. A parked command carries its command's metadata
(the event's, which a client may make up to 64 entries of 4 KB): twenty of those made
the unpaged list larger than a client takes (RESOURCE_EXHAUSTED), for the
RPC and for ``chronicle reaction NAME --parked`` alike."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin_pb
from chronicle.v1 import event_pb2
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import reaction_service_pb2 as pb
from domain_plugins import bank_account
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.app import Application
from service.client import ChronicleClient
from service.plugins.registry import Registry
from service.store.base import StoreAdapter
from service.store.sqlite import SqliteStore
from tests.support import plugins
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.processes import cli
from tests.support.waiting import eventually

REGISTRY = Registry([bank_account.plugin, plugins.gates])
RELAY = "gates.relay"
# As much metadata as a client may give a command: 60 entries of 4,000 bytes.
LARGE = {f"note{k}": "x" * 4000 for k in range(60)}


async def park(client: Client, names: list[str], metadata: dict[str, str] | None = None) -> list[pb.ParkedCommand]:
    """The relay parks a RenameBox for the shut gate "gated" per name (the
    event's metadata copied into each); all its parked commands, listed
    page by page."""
    want = len(await every_page(client)) + len(names)
    await client.submit(command("source", box.ArchiveBox()))  # "source" lets names through
    for name in names:
        await client.submit(command("source", box.RenameBox(name=name), metadata=metadata))

    async def there() -> bool:
        status = await client.reactions.GetReaction(pb.GetReactionRequest(name=RELAY))
        return bool(status.parked == want)

    await eventually(there, what=f"{want} commands parked")
    return await every_page(client)


async def every_page(client: Client, page_size: int = 0) -> list[pb.ParkedCommand]:
    found: list[pb.ParkedCommand] = []
    token = ""
    while True:
        request = pb.ListParkedCommandsRequest(reaction=RELAY, page_size=page_size, page_token=token)
        page = await client.reactions.ListParkedCommands(request)
        found.extend(page.commands)
        token = page.next_page_token
        if not token:
            return found


async def refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    details = details_of(error.value)
    return details.code, details.reason


@pytest.fixture
async def sqlite_server(tmp_path: Path) -> AsyncIterator[tuple[Application, Client]]:
    store = SqliteStore(tmp_path / "events.db")
    await store.open()
    try:
        async with running_server(store, registry=REGISTRY, anonymous_admin=True, poll_seconds=0.05) as running:
            yield running
    finally:
        await store.close()


async def test_parked_commands_larger_than_a_message_are_listed_in_pages_each_within_the_page_bytes(
    store: StoreAdapter,
) -> None:
    async with running_server(store, registry=REGISTRY, anonymous_admin=True, poll_seconds=0.05) as (app, client):
        listed = await park(client, [f"n{i}" for i in range(20)], LARGE)
        # All twenty, each once, in the order they were parked (their events' order).
        assert [box.RenameBox.FromString(p.command.value).name for p in listed] == [f"n{i}" for i in range(20)]
        assert all(p.command_metadata["note0"] == "x" * 4000 for p in listed)
        assert sum(p.ByteSize() for p in listed) > 4 * 1024 * 1024  # more than a client takes in one message
        # The Python client follows the pages.
        async with ChronicleClient.connect(app.address) as chronicle:
            assert [p.command_id async for p in chronicle.parked_commands(RELAY)] == [p.command_id for p in listed]
        # Each page stops at the one that brings it to the page's bytes (1 MiB here).
        first = await client.reactions.ListParkedCommands(pb.ListParkedCommandsRequest(reaction=RELAY))
        assert first.next_page_token and 1 < len(first.commands) < 20
        assert first.ByteSize() < 1024 * 1024 + max(p.ByteSize() for p in listed)


async def test_page_size_pages_oldest_first_and_bad_input_is_invalid_argument(
    sqlite_server: tuple[Application, Client],
) -> None:
    _, client = sqlite_server
    listed = await park(client, ["a", "b", "c", "d", "e"])
    first = await client.reactions.ListParkedCommands(pb.ListParkedCommandsRequest(reaction=RELAY, page_size=2))
    assert [p.command_id for p in first.commands] == [p.command_id for p in listed[:2]]
    assert [p.command_id for p in await every_page(client, page_size=2)] == [p.command_id for p in listed]
    assert [p.position for p in listed] == sorted(p.position for p in listed)

    # One replayed between two pages: the next page goes on after the last one shown.
    await client.submit(command("gated", box.ArchiveBox()))
    await client.reactions.ReplayParkedCommand(
        pb.ReplayParkedCommandRequest(reaction=RELAY, command_id=listed[1].command_id)
    )
    second = await client.reactions.ListParkedCommands(
        pb.ListParkedCommandsRequest(reaction=RELAY, page_size=2, page_token=first.next_page_token)
    )
    assert [p.command_id for p in second.commands] == [p.command_id for p in listed[2:4]]

    too_many = pb.ListParkedCommandsRequest(reaction=RELAY, page_size=1001)
    assert await refused(client.reactions.ListParkedCommands(too_many)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "PAGE_SIZE_TOO_LARGE",
    )
    garbage = pb.ListParkedCommandsRequest(reaction=RELAY, page_token="not a token")
    assert await refused(client.reactions.ListParkedCommands(garbage)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )
    # A token of this listing whose fields were tampered with.
    fields = json.loads(base64.urlsafe_b64decode(first.next_page_token + "=" * (-len(first.next_page_token) % 4)))
    fields["p"] = True
    tampered = base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")
    damaged = pb.ListParkedCommandsRequest(reaction=RELAY, page_token=tampered)
    assert await refused(client.reactions.ListParkedCommands(damaged)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )
    elsewhere = pb.ListParkedCommandsRequest(reaction="bank.transfers", page_token=first.next_page_token)
    assert await refused(client.reactions.ListParkedCommands(elsewhere)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "PAGE_TOKEN_MISMATCH",
    )


async def test_replay_all_sends_each_parked_command_once_and_keeps_those_refused_again(
    sqlite_server: tuple[Application, Client],
) -> None:
    _, client = sqlite_server
    listed = await park(client, ["a", "b", "c"])
    shut = await client.reactions.ReplayAllParkedCommands(pb.ReplayAllParkedCommandsRequest(reaction=RELAY))
    assert (shut.accepted, shut.refused) == (0, 3)
    again = await every_page(client)
    assert [(p.command_id, p.replays, p.reason) for p in again] == [(p.command_id, 1, "GATE_SHUT") for p in listed]

    other = pb.ReplayAllParkedCommandsRequest(reaction=RELAY, reason="NO_SUCH_REASON")
    assert (await client.reactions.ReplayAllParkedCommands(other)).refused == 0

    await client.submit(command("gated", box.ArchiveBox()))
    opened = await client.reactions.ReplayAllParkedCommands(pb.ReplayAllParkedCommandsRequest(reaction=RELAY))
    assert (opened.accepted, opened.refused) == (3, 0)
    assert await every_page(client) == []
    status = await client.reactions.GetReaction(pb.GetReactionRequest(name=RELAY))
    assert status.parked == 0
    renamed = [box.BoxRenamed.FromString(e.payload.value).name async for e in _gated_renames(client)]
    assert sorted(renamed) == ["a", "b", "c"]

    entries = (await client.admin.QueryAudit(admin_pb.QueryAuditRequest(aggregate_id=f"reaction:{RELAY}"))).entries
    messages = [e.message for e in entries if e.command_type.endswith("/ReplayAllParkedCommands")]
    assert "3 parked commands replayed: 3 accepted, 0 refused again" in messages
    assert "3 parked commands replayed: 0 accepted, 3 refused again" in messages


async def test_dismiss_all_removes_those_of_the_reason_asked_in_one_go(
    sqlite_server: tuple[Application, Client],
) -> None:
    _, client = sqlite_server
    await park(client, ["a", "b"])
    none = pb.DismissAllParkedCommandsRequest(reaction=RELAY, reason="NO_SUCH_REASON")
    assert (await client.reactions.DismissAllParkedCommands(none)).dismissed == 0
    assert len(await every_page(client)) == 2
    shut = pb.DismissAllParkedCommandsRequest(reaction=RELAY, reason="GATE_SHUT")
    assert (await client.reactions.DismissAllParkedCommands(shut)).dismissed == 2
    assert await every_page(client) == []
    entries = (await client.admin.QueryAudit(admin_pb.QueryAuditRequest(aggregate_id=f"reaction:{RELAY}"))).entries
    assert "2 parked commands refused with GATE_SHUT dismissed" in [e.message for e in entries]
    bad = pb.DismissAllParkedCommandsRequest(reaction=RELAY, reason="\x00")
    assert await refused(client.reactions.DismissAllParkedCommands(bad)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REASON",
    )


async def test_replaying_or_dismissing_all_takes_an_administrator(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "events.db")
    await store.open()
    try:
        async with running_server(store, registry=REGISTRY) as (_, client):
            replay = client.reactions.ReplayAllParkedCommands(pb.ReplayAllParkedCommandsRequest(reaction=RELAY))
            assert await refused(replay) == (grpc.StatusCode.PERMISSION_DENIED, "ANONYMOUS_ADMIN_DENIED")
            dismiss = client.reactions.DismissAllParkedCommands(pb.DismissAllParkedCommandsRequest(reaction=RELAY))
            assert await refused(dismiss) == (grpc.StatusCode.PERMISSION_DENIED, "ANONYMOUS_ADMIN_DENIED")
    finally:
        await store.close()


@pytest.mark.slow
async def test_chronicle_reaction_parked_follows_the_pages_and_dismiss_all(
    sqlite_server: tuple[Application, Client],
) -> None:
    app, client = sqlite_server
    listed = await park(client, [f"n{i}" for i in range(20)], LARGE)

    def chronicle(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(*args, server=app.address, check=False)

    shown = await asyncio.to_thread(chronicle, "reaction", RELAY, "--parked")
    assert (shown.returncode, shown.stderr) == (0, "")
    assert [json.loads(line)["command_id"] for line in shown.stdout.splitlines()] == [p.command_id for p in listed]
    dismissed = await asyncio.to_thread(chronicle, "reaction", RELAY, "--dismiss-all")
    assert (dismissed.returncode, json.loads(dismissed.stdout)) == (0, {"reaction": RELAY, "dismissed": 20})
    usage = await asyncio.to_thread(chronicle, "reaction", "--dismiss-all")
    assert usage.returncode != 0 and "act on one reaction" in usage.stderr


async def _gated_renames(client: Client) -> AsyncIterator[event_pb2.Event]:
    async for event in client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id="gated")):
        if event.event_type == "box.v1.BoxRenamed":
            yield event
