"""ReactionService over a real socket, on every store: where a reaction
stands, the commands it parked, and an administrator replaying or
dismissing them."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import event_pb2
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import reaction_service_pb2 as pb
from domain_plugins import bank_account
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.app import Application
from service.plugins.registry import Registry
from service.store.base import StoreAdapter
from service.store.records import PARKED_COMMAND_TYPE, DocumentWrite, StoredDocument
from tests.support import plugins
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.processes import cli

REGISTRY = Registry([bank_account.plugin, plugins.gates])


@dataclass
class Relay:
    app: Application
    client: Client

    async def let_through(self, name: str) -> None:
        await self.client.submit(command("source", box.RenameBox(name=name)))

    async def status(self) -> pb.ReactionStatus:
        status: pb.ReactionStatus = await self.client.reactions.GetReaction(pb.GetReactionRequest(name="gates.relay"))
        return status

    async def caught_up(self) -> pb.ReactionStatus:
        deadline = time.monotonic() + 20
        while True:
            status = await self.status()
            if status.position == status.log_head:
                return status
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.02)

    async def parked(self) -> list[pb.ParkedCommand]:
        response = await self.client.reactions.ListParkedCommands(pb.ListParkedCommandsRequest(reaction="gates.relay"))
        return list(response.commands)


@pytest.fixture
async def relay(store: StoreAdapter) -> AsyncIterator[Relay]:
    async with running_server(store, registry=REGISTRY, anonymous_admin=True, poll_seconds=0.05) as (app, client):
        await client.submit(command("source", box.ArchiveBox()))
        yield Relay(app, client)


async def test_reactions_are_listed_with_where_they_stand(relay: Relay) -> None:
    await relay.let_through("ann")
    status = await relay.caught_up()
    listed = await relay.client.reactions.ListReactions(pb.ListReactionsRequest())
    assert [r.name for r in listed.reactions] == ["bank.transfers", "gates.relay"]
    assert status.running and not status.error
    assert (list(status.aggregate_types), list(status.event_types)) == (["Gate"], ["box.v1.BoxRenamed"])
    assert (status.handled, status.refused, status.parked) == (1, 1, 1)


async def test_a_refusal_on_refused_ignores_is_counted_ignored_and_not_parked(relay: Relay) -> None:
    # The relay's on_refused ignores the gate's refusal of a "harmless…" name
    # (tests/support/plugins.py) and parks any other.
    await relay.let_through("harmless-1")
    await relay.let_through("kept")
    status = await relay.caught_up()
    (parked,) = await relay.parked()
    assert box.RenameBox.FromString(parked.command.value).name == "kept"
    assert (status.refused, status.ignored, status.parked) == (2, 1, 1)
    # The command line prints the counter with the rest of the status.
    printed = await asyncio.to_thread(cli, "reaction", "gates.relay", server=relay.app.address)
    shown = json.loads(printed.stdout)
    assert (shown["refused"], shown["ignored"], shown["parked"]) == ("2", "1", "1")


async def test_an_unknown_reaction_is_not_found(relay: Relay) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await relay.client.reactions.GetReaction(pb.GetReactionRequest(name="no.such"))
    details = details_of(missing.value)
    assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, "REACTION_NOT_FOUND")


async def test_a_parked_command_is_listed_replayed_once_its_cause_is_fixed(relay: Relay) -> None:
    await relay.let_through("ann")
    await relay.caught_up()
    (parked,) = await relay.parked()
    (cause,) = [e async for e in _events(relay.client, "source") if e.event_type == "box.v1.BoxRenamed"]
    assert (parked.aggregate_id, parked.reason, parked.event_id) == ("gated", "GATE_SHUT", cause.event_id)
    assert box.RenameBox.FromString(parked.command.value).name == "ann"
    assert parked.command_metadata["relayed"] == "yes"

    # Still shut: refused again, still parked.
    request = pb.ReplayParkedCommandRequest(reaction="gates.relay", command_id=parked.command_id)
    again = await relay.client.reactions.ReplayParkedCommand(request)
    assert (again.accepted, again.reason) == (False, "GATE_SHUT")
    (still,) = await relay.parked()
    assert still.replays == 1

    await relay.client.submit(command("gated", box.ArchiveBox()))
    replayed = await relay.client.reactions.ReplayParkedCommand(request)
    assert replayed.accepted and replayed.command_id != again.command_id
    assert await relay.parked() == []
    (through,) = [e async for e in _events(relay.client, "gated") if e.event_type == "box.v1.BoxRenamed"]
    assert (through.command_id, through.causation_id) == (replayed.command_id, cause.event_id)
    assert (await relay.status()).parked == 0


async def test_a_parked_command_can_be_dismissed_and_is_then_gone(relay: Relay) -> None:
    await relay.let_through("bob")
    await relay.caught_up()
    (parked,) = await relay.parked()
    request = pb.DismissParkedCommandRequest(reaction="gates.relay", command_id=parked.command_id)
    await relay.client.reactions.DismissParkedCommand(request)
    assert await relay.parked() == []
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await relay.client.reactions.DismissParkedCommand(request)
    assert details_of(gone.value).reason == "PARKED_COMMAND_NOT_FOUND"
    # Audited as an administrator's action.
    entries = await relay.client.admin.QueryAudit(admin.QueryAuditRequest())
    assert "chronicle.v1.ReactionService/DismissParkedCommand" in [e.command_type for e in entries.entries]


class DocumentReads:
    """The documents of ``gates.relay`` the server reads from ``store``
    while it is watched (the store's own methods, wrapped)."""

    def __init__(self, store: StoreAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
        self.keys: list[str] = []
        load_document, load_documents = store.load_document, store.load_documents

        async def one(projection: str, key: str) -> StoredDocument | None:
            if projection == "gates.relay":
                self.keys.append(key)
            return await load_document(projection, key)

        async def many(projection: str, keys: Sequence[str]) -> list[StoredDocument]:
            if projection == "gates.relay":
                self.keys.extend(keys)
            return await load_documents(projection, keys)

        monkeypatch.setattr(store, "load_document", one)
        monkeypatch.setattr(store, "load_documents", many)


async def parked_counts(relay: Relay, reads: DocumentReads) -> tuple[int, int]:
    """What GetReaction and ListReactions say it parked, having read none
    of its documents to say it."""
    reads.keys.clear()
    got = (await relay.status()).parked
    listed = await relay.client.reactions.ListReactions(pb.ListReactionsRequest())
    assert reads.keys == []
    return got, next(r.parked for r in listed.reactions if r.name == "gates.relay")


async def test_the_parked_count_follows_parking_replays_and_dismissals_without_reading_them(
    relay: Relay, store: StoreAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = DocumentReads(store, monkeypatch)
    for name in ("ann", "bob", "cat", "dan"):
        await relay.let_through(name)
    await relay.caught_up()
    assert await parked_counts(relay, reads) == (4, 4)
    ann, bob, *_ = await relay.parked()
    await relay.client.reactions.DismissParkedCommand(
        pb.DismissParkedCommandRequest(reaction="gates.relay", command_id=ann.command_id)
    )
    assert await parked_counts(relay, reads) == (3, 3)
    replay = pb.ReplayParkedCommandRequest(reaction="gates.relay", command_id=bob.command_id)
    assert not (await relay.client.reactions.ReplayParkedCommand(replay)).accepted  # refused again: still parked
    assert await parked_counts(relay, reads) == (3, 3)
    await relay.client.submit(command("gated", box.ArchiveBox()))  # the gate opens
    assert (await relay.client.reactions.ReplayParkedCommand(replay)).accepted
    assert await parked_counts(relay, reads) == (2, 2)
    await relay.client.reactions.DismissAllParkedCommands(pb.DismissAllParkedCommandsRequest(reaction="gates.relay"))
    await relay.caught_up()
    assert await parked_counts(relay, reads) == (0, 0)


async def test_the_parked_count_reads_no_document_with_ten_thousand_parked(
    relay: Relay, store: StoreAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    await relay.let_through("ann")
    position = (await relay.caught_up()).position
    # More than a reaction parks (MAX_PARKED) by far, as documents of their
    # own: the count does not depend on how many there are.
    many = [DocumentWrite(f"parked:c-{n}", PARKED_COMMAND_TYPE, b"\x0a\x01c") for n in range(10_000)]
    await store.commit_projection("gates.relay", expected_position=position, new_position=position, writes=many)
    reads = DocumentReads(store, monkeypatch)
    assert await parked_counts(relay, reads) == (10_001, 10_001)


async def test_replaying_takes_an_administrator(store: StoreAdapter) -> None:
    async with running_server(store, registry=REGISTRY) as (_, client):
        request = pb.ReplayParkedCommandRequest(reaction="gates.relay", command_id=str(uuid.uuid4()))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.reactions.ReplayParkedCommand(request)
    details = details_of(refused.value)
    assert (details.code, details.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ANONYMOUS_ADMIN_DENIED")


async def _events(client: Client, aggregate_id: str) -> AsyncIterator[event_pb2.Event]:
    async for event in client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id=aggregate_id)):
        yield event


async def test_the_parked_command_log_line_names_the_reason_and_ids_never_the_refusal_text(
    relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    """A refusal's text may quote the aggregate's data ("gate gated is
    shut", "account 'x' is closed"), and the store seals it under the
    aggregate's key (security.md): the WARNING said it in the clear."""
    caplog.set_level(logging.DEBUG, logger="service.processing")
    await relay.let_through("ann")
    await relay.caught_up()
    (parked,) = await relay.parked()
    assert parked.message == "gate gated is shut"  # kept where it is sealed
    lines = [r.getMessage() for r in caplog.records if "parked command" in r.getMessage()]
    assert len(lines) == 1, lines
    (line,) = lines
    assert parked.command_id in line and "GATE_SHUT" in line and "box.v1.RenameBox for gated" in line
    assert "chronicle reaction gates.relay --parked" in line
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert "is shut" not in everything
