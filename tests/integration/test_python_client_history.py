"""The Python client reading the past against a real server over a real
socket: pages forwards and backwards, a broken read resumed inside a
version an upcaster split, and aggregates at a past version or moment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import grpc
import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient, InvalidArgument, NotFound, OutOfRange, RetryPolicy
from service.plugins.registry import Registry
from service.store.base import StoreAdapter
from service.store.memory import MemoryStore
from tests.support import plugins
from tests.support.broken_calls import BreakFirstStream
from tests.support.events import new_event
from tests.support.grpc_client import running_server

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture
async def client(store: StoreAdapter) -> AsyncIterator[ChronicleClient]:
    """acc-1: opened, then deposits of 1 to 5 (versions 1 to 6)."""
    async with running_server(store) as (app, _), ChronicleClient.connect(app.address, retry=FAST) as connected:
        await connected.submit("acc-1", bank.OpenAccount(owner="ann"))
        for amount in range(1, 6):
            await connected.submit("acc-1", bank.Deposit(amount=amount))
        yield connected


async def versions(client: ChronicleClient, **options: Any) -> list[int]:
    return [e.version for e in await client.read_all("acc-1", **options)]


async def test_reading_pages_forwards_with_a_limit(client: ChronicleClient) -> None:
    assert await versions(client, limit=4) == [1, 2, 3, 4]
    assert await versions(client, limit=4, from_version=5) == [5, 6]  # shorter than the limit: the last page


async def test_reading_backwards_from_the_latest_or_a_version(client: ChronicleClient) -> None:
    assert await versions(client, backwards=True) == [6, 5, 4, 3, 2, 1]
    assert await versions(client, backwards=True, limit=2) == [6, 5]
    assert await versions(client, backwards=True, limit=2, from_version=4) == [4, 3]


async def test_a_limit_below_one_is_refused_before_sending(client: ChronicleClient) -> None:
    with pytest.raises(ValueError, match="limit"):
        await versions(client, limit=0)


async def test_get_aggregate_at_a_past_version(client: ChronicleClient) -> None:
    then = await client.get_aggregate("acc-1", bank.Account, at_version=3)
    assert (then.version, then.state.balance) == (3, 1 + 2)


async def test_get_aggregate_at_a_version_not_reached_is_out_of_range(client: ChronicleClient) -> None:
    with pytest.raises(OutOfRange) as refused:
        await client.get_aggregate("acc-1", bank.Account, at_version=7)
    assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.OUT_OF_RANGE, "VERSION_NOT_REACHED")
    assert refused.value.metadata["current_version"] == "6"
    with pytest.raises(InvalidArgument) as invalid:
        await client.get_aggregate("acc-1", bank.Account, at_version=0)
    assert invalid.value.reason == "INVALID_VERSION"


async def test_get_aggregate_at_a_past_moment(client: ChronicleClient) -> None:
    third = (await client.read_all("acc-1"))[2].envelope.timestamp.ToDatetime(tzinfo=UTC)
    at_third = third.astimezone(timezone(timedelta(hours=-5)))  # any time zone names the same moment
    then = await client.get_aggregate("acc-1", bank.Account, at_time=at_third)
    assert (then.version, then.state.balance) == (3, 1 + 2)
    with pytest.raises(NotFound):
        await client.get_aggregate("acc-1", bank.Account, at_time=third - timedelta(days=365))


async def test_a_moment_must_be_timezone_aware_and_alone(client: ChronicleClient) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await client.get_aggregate("acc-1", bank.Account, at_time=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="not both"):
        await client.get_aggregate("acc-1", bank.Account, at_version=1, at_time=datetime.now().astimezone())


@pytest.fixture
async def ledger_address() -> AsyncIterator[str]:
    """A book whose first stored event an upcaster splits in two: versions
    1, 1, 2 as delivered (opened, the opening bonus, a deposit)."""
    store = MemoryStore()
    opened = bank.AccountOpened(owner="ann").SerializeToString()
    deposited = bank.MoneyDeposited(amount=3).SerializeToString()
    await store.append(
        "book-1",
        [
            new_event("bank.v1.AccountOpened", aggregate_type="Book", payload=opened, schema_version=2),
            new_event("bank.v1.MoneyDeposited", aggregate_type="Book", payload=deposited, schema_version=1),
        ],
        0,
    )
    async with running_server(store, registry=Registry([plugins.ledger])) as (app, _):
        yield app.address


@pytest.mark.parametrize("backwards", [False, True])
async def test_a_read_broken_inside_a_split_version_resumes_without_a_gap_or_a_repeat(
    ledger_address: str, backwards: bool
) -> None:
    async with ChronicleClient.connect(ledger_address) as plain:
        expected = [(e.version, e.event_type) for e in await plain.read_all("book-1", backwards=backwards)]
    breaking = BreakFirstStream(after=2 if backwards else 1)  # between the two events of version 1
    channel = grpc.aio.insecure_channel(ledger_address, interceptors=[breaking])
    async with ChronicleClient(channel, retry=FAST, owns_channel=True) as client:
        events = [(e.version, e.event_type) for e in await client.read_all("book-1", backwards=backwards, limit=5)]
    assert events == expected
    assert sorted(events) == [
        (1, "bank.v1.AccountOpened"),
        (1, "bank.v1.MoneyDeposited"),
        (2, "bank.v1.MoneyDeposited"),
    ]
    first, second = breaking.requests
    assert (first.from_version, second.from_version) == ((0, 1) if backwards else (1, 1))
    assert (first.limit, second.limit) == (5, 5 - (2 if backwards else 1) + 1)
