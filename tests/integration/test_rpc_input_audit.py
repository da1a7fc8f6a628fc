"""Bad input the fuzz (test_fuzz.py) is unlikely to draw, aimed at each
place a request's value reaches a store: over a real socket, on each store
(a number SQLite or PostgreSQL cannot hold showed up there only), the answer
is INVALID_ARGUMENT with its ErrorInfo reason and the field at fault, no
traceback is logged, and nothing is written."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import command_service_pb2 as commands
from chronicle.v1 import projection_service_pb2 as projections
from chronicle.v1 import subscription_group_service_pb2 as groups
from chronicle.v1 import subscription_group_service_pb2_grpc as groups_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.api.page_tokens import fingerprint, make_token
from service.store.base import StoreAdapter
from service.store.memory import MemoryStore
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.waiting import eventually

STORES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
PROJECTION = "bank.balances_by_owner"
# Beyond a signed 64-bit integer, what every store holds positions, versions and times in.
HUGE = [2**63, 2**64 - 1]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreAdapter:
    if request.param == "memory":
        return MemoryStore()
    if request.param == "sqlite":
        return SqliteStore(tmp_path / "events.db")
    return PostgresStore(request.getfixturevalue("postgres_url"), pool_size=4)


@pytest.fixture
async def client(store: StoreAdapter, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Client]:
    """A client of a server on ``store``; no test may make it log an error."""
    caplog.set_level(logging.ERROR)
    async with running_server(store, anonymous_admin=True) as (_, connected):
        await connected.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        yield connected
    logged = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert not logged, f"a client's mistake logged errors: {logged}"


async def refused(call: object) -> tuple[grpc.StatusCode, str, list[str]]:
    """The status, ErrorInfo reason and BadRequest fields of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    details = details_of(raised.value)
    return details.code, details.reason, details.field_violations


def at(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


@pytest.mark.parametrize(
    "moment",
    [at(2**62), at(-(2**62)), at(10**13), at(253_402_300_800), at(0, -5), at(0, 1_000_000_000)],
    ids=["2^62 s", "-2^62 s", "1e13 s", "year 10000", "negative nanos", "nanos of a whole second"],
)
async def test_a_command_timestamp_outside_timestamps_range_is_invalid_and_writes_nothing(
    client: Client, store: StoreAdapter, moment: timestamp_pb2.Timestamp
) -> None:
    """The client's timestamp of a command is stored with it: one that no
    Timestamp can be overflowed SQLite's and PostgreSQL's 64-bit column
    (INTERNAL), and was stored as it came on the memory store."""
    built = command("acc-t", bank.OpenAccount(owner="tim"))
    built.timestamp.CopyFrom(moment)
    expected = (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TIMESTAMP", ["command.timestamp"])
    assert await refused(client.submit(built)) == expected
    batch = commands.SubmitBatchRequest(commands=[built])
    assert await refused(client.commands.SubmitBatch(batch, timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_TIMESTAMP",
        ["commands[0].timestamp"],
    )
    assert await store.head("acc-t") is None


async def test_a_command_timestamp_at_the_edges_of_timestamps_range_is_kept(client: Client) -> None:
    for n, moment in enumerate([at(-62_135_596_800), at(253_402_300_799, 999_999_999)]):
        built = command(f"acc-edge-{n}", bank.OpenAccount(owner="eve"))
        built.timestamp.CopyFrom(moment)
        assert (await client.submit(built)).version == 1


@pytest.mark.parametrize("position", HUGE)
async def test_listing_a_groups_parked_events_after_a_position_no_store_holds_is_invalid(
    client: Client, position: int
) -> None:
    stub = groups_grpc.SubscriptionGroupServiceStub(client.channel)
    await stub.CreateGroup(groups.CreateGroupRequest(name="g1"), timeout=10)
    request = groups.ListParkedRequest(group="g1", after_position=position)
    assert await refused(stub.ListParked(request, timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_POSITION",
        ["after_position"],
    )
    done = await stub.ListParked(groups.ListParkedRequest(group="g1", after_position=2**63 - 1), timeout=10)
    assert list(done.parked) == []


def tampered(listing: str, **after: object) -> str:
    """A page token as a client could forge one: any JSON, escapes and all."""
    body = json.dumps({"l": listing, **after})  # ASCII, so a lone surrogate stays an escape
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        tampered(fingerprint("parked", PROJECTION), p=2**63, e="x"),
        tampered(fingerprint("parked", PROJECTION), p=-(2**70), e="x"),
        tampered(fingerprint("parked", PROJECTION), p=-1, e="x"),
        tampered(fingerprint("parked", PROJECTION), p=True, e="x"),
        tampered(fingerprint("parked", PROJECTION), p=1, e="\ud800"),
    ],
    ids=["position 2^63", "position -2^70", "position -1", "position true", "lone surrogate"],
)
async def test_a_tampered_parked_events_page_token_is_invalid(client: Client, token: str) -> None:
    request = projections.ListParkedEventsRequest(projection=PROJECTION, page_token=token)
    assert await refused(client.projections.ListParkedEvents(request, timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
        ["page_token"],
    )


async def test_a_documents_page_token_holding_a_lone_surrogate_is_invalid(client: Client) -> None:
    """Valid JSON, the right listing, a key that starts with the prefix:
    but no store can encode the key (SQLite and PostgreSQL answered INTERNAL)."""
    token = tampered(fingerprint("documents", PROJECTION, "", "asc"), k="\ud800")
    request = projections.ListDocumentsRequest(projection=PROJECTION, page_token=token)
    assert await refused(client.projections.ListDocuments(request, timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
        ["page_token"],
    )
    # A token the server made, of a key with any character a store holds, still works.
    listing = fingerprint("documents", PROJECTION, "", "asc")
    made = projections.ListDocumentsRequest(projection=PROJECTION, page_token=make_token(listing, k="a\u2028é"))
    await client.projections.ListDocuments(made, timeout=10)


async def test_an_unknown_audit_outcome_is_an_invalid_filter_not_any_outcome(client: Client) -> None:
    """Read as "any", an outcome this server does not know answered the
    filter with entries of every outcome."""
    request = admin.QueryAuditRequest(outcome=42)  # type: ignore[arg-type]
    assert await refused(client.admin.QueryAudit(request, timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FILTER",
        ["outcome"],
    )
    accepted = await client.admin.QueryAudit(admin.QueryAuditRequest(outcome=admin.AUDIT_OUTCOME_ACCEPTED), timeout=10)
    assert accepted.entries and {e.outcome for e in accepted.entries} == {admin.AUDIT_OUTCOME_ACCEPTED}


@pytest.mark.parametrize("version", HUGE)
async def test_deleting_at_an_expected_version_no_store_holds_is_invalid_on_every_store(
    client: Client, store: StoreAdapter, version: int
) -> None:
    """PostgreSQL answered UNSTORABLE_VALUE, the others WRONG_EXPECTED_VERSION
    (or NOT_FOUND): now one answer, and the aggregate is still there."""
    for aggregate_id in ("acc-1", "no-such-account"):
        request = admin.DeleteAggregateRequest(aggregate_id=aggregate_id, expected_version=version)
        assert await refused(client.admin.DeleteAggregate(request, timeout=10)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_VERSION",
            ["expected_version"],
        )
    head = await store.head("acc-1")
    assert head is not None and head.version == 1


async def test_a_metadata_value_holding_nul_is_invalid_on_every_store(client: Client, store: StoreAdapter) -> None:
    """PostgreSQL cannot hold NUL in text (UNSTORABLE_VALUE, naming no
    field); the other stores took it, and their export could then not be
    imported into PostgreSQL. Other control characters are values like any."""
    built = command("acc-m", bank.OpenAccount(owner="meg"), metadata={"note": "a\x00b"})
    assert await refused(client.submit(built)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_METADATA",
        ["command.metadata['note']"],
    )
    assert await store.head("acc-m") is None
    kept = command("acc-m", bank.OpenAccount(owner="meg"), metadata={"note": "line\nand\ttab"})
    assert (await client.submit(kept)).events[0].metadata["note"] == "line\nand\ttab"


async def nacked(
    stub: groups_grpc.SubscriptionGroupServiceStub, group: str, reason: str
) -> grpc.aio.AioRpcError | None:
    """Join ``group`` and nack its first delivery with ``reason``: the error
    the stream then ends with, or None if it goes on (it is hung up)."""
    call = stub.Consume(timeout=10)
    await call.write(groups.ConsumeRequest(start=groups.ConsumeStart(group=group, consumer="c1")))
    try:
        async for response in call:
            if response.WhichOneof("kind") == "deliveries":
                ids = [d.event.event_id for d in response.deliveries.deliveries]
                await call.write(groups.ConsumeRequest(nack=groups.Nack(event_ids=ids, reason=reason)))
                await asyncio.sleep(0.5)  # the time to end the stream, if it is to end
                if not call.done():
                    call.cancel()
                    return None
    except grpc.aio.AioRpcError as error:
        return error
    return None


async def test_a_nack_reason_holding_nul_ends_the_stream_and_parks_nothing(client: Client) -> None:
    """SQLite parked the event with the NUL; PostgreSQL could not, and ended
    the stream with UNSTORABLE_VALUE naming no field."""
    stub = groups_grpc.SubscriptionGroupServiceStub(client.channel)
    for name in ("g1", "g2"):
        await stub.CreateGroup(groups.CreateGroupRequest(name=name, max_delivery_attempts=1), timeout=10)
    error = await nacked(stub, "g1", "bad\x00reason")
    assert error is not None
    details = details_of(error)
    assert (details.code, details.reason, details.field_violations) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "BAD_NACK_REASON",
        ["nack.reason"],
    )
    assert not (await stub.ListParked(groups.ListParkedRequest(group="g1"), timeout=10)).parked
    # A reason of other control characters parks the event with it.
    assert await nacked(stub, "g2", "line\nbreak") is None

    async def parked_with_its_reason() -> bool:
        parked = (await stub.ListParked(groups.ListParkedRequest(group="g2"), timeout=10)).parked
        return [p.reason for p in parked] == ["line\nbreak"]

    await eventually(parked_with_its_reason, what="the event parked with the nack's reason")
