"""What a handler may write, over a real socket on SQLite and PostgreSQL:
a document key the read API would refuse, or the database cannot store
(NUL, a lone surrogate), a subject no aggregate can have, and a document
larger than an answer can carry all fail the handler on its event (so a
projection that parks parks it, and goes on) instead of failing the commit
for ever; and a document too large to send that is stored anyway (written
by an older server) is refused with its reason, the listing going past it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import projection_service_pb2 as pb
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import Plugin
from service.plugins.projections import Documents, ProjectedEvent
from service.plugins.registry import Registry
from service.store.base import StoreAdapter
from service.store.records import DocumentWrite
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.stores import STORES, store_site
from tests.support.waiting import eventually

MAX_MESSAGE = 64 * 1024  # the server's --max-message-bytes here: documents of up to 32 KiB

# The key (and subject) each account's owner name stands for.
KEYS = {
    "fine": ("fine", "acc"),
    "empty": ("", "acc"),
    "long": ("k" * 201, "acc"),
    "newline": ("a\nb", "acc"),
    "noncharacter": ("k\uffff", "acc"),
    "nul": ("k\x00", "acc"),
    "surrogate": ("k\ud800", "acc"),
    "nul-subject": ("s", "acc\x00"),
    "big": ("big", "acc"),
}

limits = Plugin("limits")
by_owner = limits.projection(
    "limits.by_owner", aggregate_types=["Account"], on_failure="park", max_attempts=2, retry_seconds=0.05
)
# Holds what an older server wrote (a document too large to send): its
# handler never runs here.
raw = limits.projection("limits.raw", aggregate_types=["Account"])


@by_owner.on(bank.AccountOpened)
def _file(event: bank.AccountOpened, envelope: ProjectedEvent, documents: Documents) -> None:
    key, subject = KEYS[event.owner]
    owner = "y" * 40_000 if event.owner == "big" else event.owner
    documents.put(key, bank.AccountBalance(owner=owner), subject=subject)


@raw.on(bank.AccountClosed)
def _never(event: bank.AccountClosed, envelope: ProjectedEvent, documents: Documents) -> None:
    raise AssertionError("no account is closed here")


REGISTRY = Registry([bank_account.plugin, limits])


@pytest.fixture(params=["sqlite", "postgres"])
async def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    async with STORES[request.param](store_site(request, tmp_path)) as opened:
        yield opened


def serving(store: StoreAdapter) -> object:
    return running_server(
        store,
        registry=REGISTRY,
        anonymous_admin=True,
        poll_seconds=0.2,
        max_message_bytes=MAX_MESSAGE,
        max_event_bytes=MAX_MESSAGE // 4,
    )


async def refusal(call: object) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    details = details_of(raised.value)
    return details.code, details.reason, details.metadata


async def test_a_key_subject_or_size_the_store_or_the_api_cannot_take_fails_the_handler_and_is_parked(
    sql_store: StoreAdapter,
) -> None:
    async with serving(sql_store) as (_, client):  # type: ignore[attr-defined]
        assert isinstance(client, Client)
        for i, owner in enumerate(KEYS):
            await client.submit(command(f"acc-{i}", bank.OpenAccount(owner=owner)))
        head = (await client.projections.GetProjection(pb.GetProjectionRequest(name="limits.by_owner"))).log_head

        async def parked_all() -> bool:
            status = await client.projections.GetProjection(pb.GetProjectionRequest(name="limits.by_owner"))
            return bool(status.position == head and status.parked_events == len(KEYS) - 1)

        await eventually(parked_all, what="every bad write parked and the projection caught up")
        parked = await client.projections.ListParkedEvents(pb.ListParkedEventsRequest(projection="limits.by_owner"))
        reasons = [event.error.split(":")[0] for event in parked.events]
        assert reasons == [*["INVALID_KEY"] * 6, "INVALID_SUBJECT", "DOCUMENT_TOO_LARGE"]
        assert "32768" in parked.events[-1].error  # the limit, said
        listed = await client.projections.ListDocuments(pb.ListDocumentsRequest(projection="limits.by_owner"))
        assert [d.key for d in listed.documents] == ["fine"]
        # The keys refused at put are the ones GetDocument refuses (one rule).
        for key in ("", "k" * 201, "a\nb", "k\uffff", "k\x00"):
            code, reason, _ = await refusal(
                client.projections.GetDocument(pb.GetDocumentRequest(projection="limits.by_owner", key=key))
            )
            assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_KEY")


async def test_a_stored_document_too_large_to_send_is_refused_with_its_reason_and_the_listing_goes_past_it(
    sql_store: StoreAdapter,
) -> None:
    writes = [
        DocumentWrite(key, "bank.v1.AccountBalance", bank.AccountBalance(owner=owner).SerializeToString())
        for key, owner in (("a", "ann"), ("big", "y" * 70_000), ("c", "cid"))
    ]
    await sql_store.commit_projection("limits.raw", expected_position=0, new_position=0, writes=writes)
    async with serving(sql_store) as (_, client):  # type: ignore[attr-defined]
        assert isinstance(client, Client)
        code, reason, metadata = await refusal(
            client.projections.GetDocument(pb.GetDocumentRequest(projection="limits.raw", key="big"))
        )
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DOCUMENT_TOO_LARGE")
        assert (metadata["key"], metadata["max_document_bytes"]) == ("big", str(MAX_MESSAGE // 2))
        first = await client.projections.ListDocuments(pb.ListDocumentsRequest(projection="limits.raw"))
        assert [d.key for d in first.documents] == ["a"] and first.next_page_token
        code, reason, metadata = await refusal(
            client.projections.ListDocuments(
                pb.ListDocumentsRequest(projection="limits.raw", page_token=first.next_page_token)
            )
        )
        assert (code, reason, metadata["key"]) == (grpc.StatusCode.FAILED_PRECONDITION, "DOCUMENT_TOO_LARGE", "big")
        past = await client.projections.ListDocuments(
            pb.ListDocumentsRequest(projection="limits.raw", page_token=metadata["next_page_token"])
        )
        assert ([d.key for d in past.documents], past.next_page_token) == (["c"], "")
