"""Projections the store holds but no loaded plugin declares (renamed away,
or not deployed on this replica yet), over a real socket: listed to
administrators as orphaned, refused to readers as PROJECTION_NOT_LOADED,
and deleted by DeleteProjection (docs/plugins.md, "Changing a projection's
logic")."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin_pb
from chronicle.v1 import projection_service_pb2 as pb
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.api import stored_projections
from service.client import ChronicleClient
from service.client.errors import FailedPrecondition, NotFound
from service.plugins.registry import Registry
from service.processing.reaction_starts import MARKER
from service.store.base import StoreAdapter
from service.store.postgres import PostgresStore
from service.store.records import DocumentWrite
from service.store.sqlite import SqliteStore
from tests.support import bluegreen
from tests.support.grpc_client import Client, ErrorDetails, command, details_of, running_server
from tests.support.waiting import eventually

BLUE = Registry([bank_account.plugin, bluegreen.blue])
GREEN = Registry([bank_account.plugin, bluegreen.green])


# A server's stop closes its store: each server here opens one of its own
# on the same database, as a restarted server would.
Opener = Callable[[], Awaitable[StoreAdapter]]


@pytest.fixture(params=["sqlite", "postgres"])
async def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    url = await request.getfixturevalue("postgres_current")() if request.param == "postgres" else None

    async def opened() -> StoreAdapter:
        store: StoreAdapter = PostgresStore(url, pool_size=4) if url else SqliteStore(tmp_path / "events.db")
        await store.open()
        return store

    return opened


async def refused(call: Any) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return details_of(raised.value)


async def caught_up(client: Client, name: str) -> None:
    async def check() -> bool:
        status = await client.projections.GetProjection(pb.GetProjectionRequest(name=name))
        return bool(status.position == status.log_head)

    await eventually(check, what=f"{name} catching up")


async def renamed_away(reopen: Opener) -> int:
    """Version 1 run and caught up under BLUE, then the server stopped: the
    store holds it, and GREEN no longer declares it. Its checkpoint."""
    async with running_server(await reopen(), registry=BLUE, poll_seconds=0.05) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await client.submit(command("acc-1", bank.Deposit(amount=7)))
        await caught_up(client, bluegreen.V1)
        status = await client.projections.GetProjection(pb.GetProjectionRequest(name=bluegreen.V1))
    return int(status.position)


async def test_a_renamed_away_projection_is_listed_as_orphaned_to_an_administrator(reopen: Opener) -> None:
    checkpoint = await renamed_away(reopen)
    async with running_server(await reopen(), registry=GREEN, anonymous_admin=True) as (_, client):
        listed = await client.projections.ListProjections(pb.ListProjectionsRequest(include_orphaned=True))
        plain = await client.projections.ListProjections(pb.ListProjectionsRequest())
    assert [(o.name, o.position) for o in listed.orphaned] == [(bluegreen.V1, checkpoint)]
    assert checkpoint > 0
    assert bluegreen.V1 not in [p.name for p in listed.projections]
    assert list(plain.orphaned) == []  # only when asked
    # The server's own checkpoints (reactions' starts) are not read models.
    assert MARKER not in [o.name for o in listed.orphaned]


async def test_orphaned_projections_are_listed_to_administrators_only(reopen: Opener) -> None:
    await renamed_away(reopen)
    async with running_server(await reopen(), registry=GREEN) as (_, client):
        details = await refused(client.projections.ListProjections(pb.ListProjectionsRequest(include_orphaned=True)))
    assert (details.code, details.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ANONYMOUS_ADMIN_DENIED")


async def test_reads_of_a_stored_but_undeclared_projection_say_it_is_not_loaded(reopen: Opener) -> None:
    checkpoint = await renamed_away(reopen)
    async with running_server(await reopen(), registry=GREEN, anonymous_admin=True) as (_, client):
        reads = [
            client.projections.GetDocument(pb.GetDocumentRequest(projection=bluegreen.V1, key=bluegreen.KEY)),
            client.projections.ListDocuments(pb.ListDocumentsRequest(projection=bluegreen.V1)),
            client.projections.GetProjection(pb.GetProjectionRequest(name=bluegreen.V1)),
            client.projections.ListParkedEvents(pb.ListParkedEventsRequest(projection=bluegreen.V1)),
        ]
        for read in reads:
            details = await refused(read)
            assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, "PROJECTION_NOT_LOADED")
            assert details.metadata == {"projection": bluegreen.V1, "position": str(checkpoint)}
        # A name nothing holds is still plainly unknown.
        details = await refused(client.projections.GetDocument(pb.GetDocumentRequest(projection="nope", key="k")))
        assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, "PROJECTION_NOT_FOUND")


async def test_to_a_reader_who_is_not_an_administrator_a_stored_projection_is_as_unknown_as_any(
    reopen: Opener,
) -> None:
    # Reads do not tell existence apart (docs/security.md): a retired
    # projection's name and checkpoint are an administrator's to learn.
    await renamed_away(reopen)
    async with running_server(await reopen(), registry=GREEN) as (_, client):
        stored = await refused(
            client.projections.GetDocument(pb.GetDocumentRequest(projection=bluegreen.V1, key=bluegreen.KEY))
        )
        unknown = await refused(client.projections.GetDocument(pb.GetDocumentRequest(projection="nope", key="k")))
    assert (stored.code, stored.reason, stored.metadata) == (grpc.StatusCode.NOT_FOUND, "PROJECTION_NOT_FOUND", {})
    assert stored.message == unknown.message.replace("'nope'", f"'{bluegreen.V1}'")


async def test_a_deletion_removes_every_stored_row_and_is_audited(reopen: Opener) -> None:
    await renamed_away(reopen)
    async with running_server(await reopen(), registry=GREEN, anonymous_admin=True) as (_, client):
        deleted = await client.projections.DeleteProjection(pb.DeleteProjectionRequest(name=bluegreen.V1))
        again = await client.projections.DeleteProjection(pb.DeleteProjectionRequest(name=bluegreen.V1))
        listed = await client.projections.ListProjections(pb.ListProjectionsRequest(include_orphaned=True))
        details = await refused(
            client.projections.GetDocument(pb.GetDocumentRequest(projection=bluegreen.V1, key=bluegreen.KEY))
        )
        audit = await client.admin.QueryAudit(admin_pb.QueryAuditRequest(aggregate_id=f"projection:{bluegreen.V1}"))
    assert (deleted.deleted, again.deleted) == (1, 0)  # its one document; then nothing: idempotent
    assert list(listed.orphaned) == []
    assert details.reason == "PROJECTION_NOT_FOUND"
    action = "chronicle.v1.ProjectionService/DeleteProjection"
    assert [(e.command_type, e.outcome, e.message) for e in audit.entries] == [
        (action, admin_pb.AUDIT_OUTCOME_ACCEPTED, "0 documents and parked events deleted"),  # newest first
        (action, admin_pb.AUDIT_OUTCOME_ACCEPTED, "1 documents and parked events deleted"),
    ]


async def test_a_deletion_of_many_documents_goes_a_bounded_page_per_transaction(
    reopen: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await reopen()
    writes = [DocumentWrite(f"k{i:03}", "bank.v1.AccountBalance", b"") for i in range(25)]
    await store.commit_projection("gone.v1", expected_position=0, new_position=3, writes=writes)
    pages: list[int] = []
    delete_page = store.delete_projection

    async def counted(name: str, *, limit: int) -> int:
        pages.append(limit)
        return await delete_page(name, limit=limit)

    monkeypatch.setattr(stored_projections, "DELETE_PAGE", 10)
    monkeypatch.setattr(store, "delete_projection", counted)
    async with running_server(store, registry=GREEN, anonymous_admin=True) as (_, client):
        deleted = await client.projections.DeleteProjection(pb.DeleteProjectionRequest(name="gone.v1"))
    assert deleted.deleted == 25
    # 10, 10, 5, then the one that finds nothing left; then its stored failure's row (none)
    assert pages == [10, 10, 10, 10, 10]


@pytest.mark.parametrize(
    ("name", "code", "reason"),
    [
        (bluegreen.V2, grpc.StatusCode.FAILED_PRECONDITION, "PROJECTION_LOADED"),
        ("bank.transfers", grpc.StatusCode.FAILED_PRECONDITION, "PROJECTION_LOADED"),  # a reaction's state
        (MARKER, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PROJECTION"),
        ("", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PROJECTION"),
        ("bad\nname", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PROJECTION"),
    ],
)
async def test_a_deletion_is_refused_for_what_is_loaded_or_not_a_name(
    reopen: Opener, name: str, code: grpc.StatusCode, reason: str
) -> None:
    async with running_server(await reopen(), registry=GREEN, anonymous_admin=True) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await client.submit(command("acc-1", bank.Deposit(amount=7)))
        await caught_up(client, bluegreen.V2)
        details = await refused(client.projections.DeleteProjection(pb.DeleteProjectionRequest(name=name)))
        total = await client.projections.GetDocument(pb.GetDocumentRequest(projection=bluegreen.V2, key="total"))
    assert (details.code, details.reason) == (code, reason)
    assert total.document.value  # the loaded projection's documents are untouched


async def test_a_reactions_name_given_to_projection_service_is_said_to_be_a_reaction(reopen: Opener) -> None:
    """Not sent round in a loop (GetProjection saying it is not loaded and
    to delete it, DeleteProjection saying it is loaded and to rebuild it):
    each call says it is a reaction, and where a reaction is handled."""
    async with running_server(await reopen(), registry=GREEN, anonymous_admin=True) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        for call in (
            client.projections.GetProjection(pb.GetProjectionRequest(name="bank.transfers")),
            client.projections.RebuildProjection(pb.RebuildProjectionRequest(name="bank.transfers")),
            client.projections.ListDocuments(pb.ListDocumentsRequest(projection="bank.transfers")),
        ):
            details = await refused(call)
            assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "NOT_A_PROJECTION")
            assert "is a reaction" in details.message and "ReactionService" in details.message
        deleting = await refused(client.projections.DeleteProjection(pb.DeleteProjectionRequest(name="bank.transfers")))
        assert (deleting.reason, deleting.metadata["declared_as"]) == ("PROJECTION_LOADED", "reaction")
        assert "RebuildProjection" not in deleting.message and "ReactionService" in deleting.message


async def test_a_deletion_takes_an_administrator(reopen: Opener) -> None:
    await renamed_away(reopen)
    async with running_server(await reopen(), registry=GREEN) as (_, client):
        details = await refused(client.projections.DeleteProjection(pb.DeleteProjectionRequest(name=bluegreen.V1)))
    assert (details.code, details.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ANONYMOUS_ADMIN_DENIED")
    store = await reopen()
    try:
        assert await store.projection_position(bluegreen.V1) > 0  # nothing deleted
    finally:
        await store.close()


async def test_the_python_client_finds_and_deletes_an_orphaned_projection(reopen: Opener) -> None:
    checkpoint = await renamed_away(reopen)
    async with (
        running_server(await reopen(), registry=GREEN, anonymous_admin=True) as (app, _),
        ChronicleClient.connect(app.address) as client,
    ):
        found = [(o.name, o.position) for o in await client.projections.orphaned()]
        with pytest.raises(NotFound) as unloaded:
            await client.projections.document(bluegreen.V1, bluegreen.KEY)
        with pytest.raises(FailedPrecondition) as loaded:
            await client.projections.delete(bluegreen.V2)
        deleted = (await client.projections.delete(bluegreen.V1), await client.projections.delete(bluegreen.V1))
        left = await client.projections.orphaned()
    assert found == [(bluegreen.V1, checkpoint)]
    assert (unloaded.value.reason, loaded.value.reason) == ("PROJECTION_NOT_LOADED", "PROJECTION_LOADED")
    assert deleted == (1, 0)
    assert left == []


async def test_a_name_used_again_after_its_deletion_is_built_from_the_log(reopen: Opener) -> None:
    # Without the deletion, declaring version 1 again would resume from its
    # stale checkpoint with its stale documents (docs/plugins.md): here a
    # total of another meaning, as a changed handler would have left.
    checkpoint = await renamed_away(reopen)
    store = await reopen()
    stale = [DocumentWrite("total", "bank.v1.AccountBalance", bank.AccountBalance(balance=1000).SerializeToString())]
    await store.commit_projection(bluegreen.V1, expected_position=checkpoint, new_position=checkpoint, writes=stale)
    await store.close()
    async with running_server(await reopen(), registry=GREEN, anonymous_admin=True) as (_, client):
        await client.projections.DeleteProjection(pb.DeleteProjectionRequest(name=bluegreen.V1))
    rebuilt = Registry([bank_account.plugin, bluegreen.blue])
    async with running_server(await reopen(), registry=rebuilt, poll_seconds=0.05) as (_, client):
        await client.submit(command("acc-1", bank.Deposit(amount=2)))
        await caught_up(client, bluegreen.V1)
        found = await client.projections.GetDocument(pb.GetDocumentRequest(projection=bluegreen.V1, key="total"))
    document = bank.AccountBalance()
    assert found.document.Unpack(document) and document.balance == 9  # 7 from the log again, then 2
