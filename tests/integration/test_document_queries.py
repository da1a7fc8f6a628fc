"""Queries of a read model beyond one document, over a real socket with the
Python client, on SQLite and PostgreSQL: several documents by key in one
call (``GetDocuments``: one store read, found and missing keys, the keys'
limit, ``min_position``, answers bounded in size)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.client import ChronicleClient, InvalidArgument, NotFound
from service.plugins.registry import Registry
from service.store.base import StoreAdapter
from service.store.records import StoredDocument
from tests.support.grpc_client import running_server
from tests.support.stores import STORES, store_site

BALANCES = "bank.balances_by_owner"
REGISTRY = Registry([bank_account.plugin])


@pytest.fixture(params=["sqlite", "postgres"])
async def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    async with STORES[request.param](store_site(request, tmp_path)) as opened:
        yield opened


class Reads:
    """The document reads a store was asked for (its instance's methods
    wrapped): which keys each ``load_documents`` call named."""

    def __init__(self, store: StoreAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[tuple[str, tuple[str, ...]]] = []
        self.singles = 0
        load_documents, load_document = store.load_documents, store.load_document

        async def batched(projection: str, keys: Sequence[str]) -> list[StoredDocument]:
            self.batches.append((projection, tuple(keys)))
            return await load_documents(projection, keys)

        async def single(projection: str, key: str) -> StoredDocument | None:
            self.singles += 1
            return await load_document(projection, key)

        monkeypatch.setattr(store, "load_documents", batched)
        monkeypatch.setattr(store, "load_document", single)


@pytest.fixture
async def served(sql_store: StoreAdapter) -> AsyncIterator[tuple[Application, ChronicleClient]]:
    async with (
        running_server(sql_store, registry=REGISTRY, anonymous_admin=True, poll_seconds=0.05) as (app, _),
        ChronicleClient.connect(app.address) as client,
    ):
        yield app, client


async def opened(client: ChronicleClient, owners: int) -> int:
    """``owners`` accounts, owner-0…; the position of the last."""
    last = 0
    for n in range(owners):
        last = (await client.submit(f"acc-{n}", bank.OpenAccount(owner=f"owner-{n}"))).position
    return last


async def test_documents_by_keys_are_read_in_one_call_and_one_store_read(
    sql_store: StoreAdapter, served: tuple[Application, ChronicleClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = served
    last = await opened(client, 5)
    # Caught up: the runner reads no more documents.
    await client.projections.document(BALANCES, "owner:owner-4", min_position=last)
    reads = Reads(sql_store, monkeypatch)
    keys = ["owner:owner-3", "owner:nobody", "owner:owner-0", "owner:owner-3", "account:acc-1"]
    found = await client.projections.documents_by_keys(BALANCES, keys, min_position=last)
    assert list(found.documents) == ["owner:owner-3", "owner:owner-0", "account:acc-1"]
    assert found.missing == ["owner:nobody"]
    assert found.documents["owner:owner-0"].document_as(bank.OwnerBalance) == bank.OwnerBalance(
        owner="owner-0", account_ids=["acc-0"]
    )
    assert found.documents["account:acc-1"].type_name == "bank.v1.AccountBalance"
    assert found.position >= last and found.documents["owner:owner-3"].position == found.position
    wanted = ("owner:owner-3", "owner:nobody", "owner:owner-0", "account:acc-1")
    assert reads.batches == [(BALANCES, wanted)]  # each key once, one statement
    assert reads.singles == 0


async def test_a_read_by_keys_waits_for_min_position(
    sql_store: StoreAdapter, served: tuple[Application, ChronicleClient]
) -> None:
    _, client = served
    await opened(client, 1)
    deposited = await client.submit("acc-0", bank.Deposit(amount=40))
    found = await client.projections.documents_by_keys(BALANCES, ["owner:owner-0"], min_position=deposited.position)
    assert found.documents["owner:owner-0"].document_as(bank.OwnerBalance).balance == 40


async def test_more_than_100_keys_or_a_bad_key_is_refused(served: tuple[Application, ChronicleClient]) -> None:
    _, client = served
    with pytest.raises(InvalidArgument) as too_many:
        await client.projections.documents_by_keys(BALANCES, [f"owner:{n}" for n in range(101)])
    assert too_many.value.reason == "TOO_MANY_KEYS"
    hundred = await client.projections.documents_by_keys(BALANCES, [f"owner:{n}" for n in range(100)])
    assert (hundred.documents, len(hundred.missing)) == ({}, 100)
    for bad in ("", "owner:\n", "k" * 201):
        with pytest.raises(InvalidArgument) as refused:
            await client.projections.documents_by_keys(BALANCES, ["owner:ann", bad])
        assert refused.value.reason == "INVALID_KEY"
    with pytest.raises(NotFound) as unknown:
        await client.projections.documents_by_keys("no.such", ["k"])
    assert unknown.value.reason == "PROJECTION_NOT_FOUND"


async def test_documents_too_large_for_one_answer_are_read_by_more_calls(sql_store: StoreAdapter) -> None:
    # A quarter of a 64 KiB message limit: a few accounts of 3 KiB owners' names per answer.
    async with (
        running_server(
            sql_store, registry=REGISTRY, poll_seconds=0.05, max_message_bytes=64 * 1024, max_event_bytes=16 * 1024
        ) as (app, _),
        ChronicleClient.connect(app.address) as client,
    ):
        calls: list[Any] = []
        stub = client.projections._stub  # counting the calls the client makes
        get_documents = stub.GetDocuments

        def counted(request: Any, **kwargs: Any) -> Any:
            calls.append(list(request.keys))
            return get_documents(request, **kwargs)

        stub.GetDocuments = counted
        last = 0
        for n in range(12):
            last = (await client.submit(f"acc-{n}", bank.OpenAccount(owner=f"{n:02d}" + "x" * 3000))).position
        keys = [f"account:acc-{n}" for n in range(12)] + ["account:nobody"]
        found = await client.projections.documents_by_keys(BALANCES, keys, min_position=last)
        assert list(found.documents) == keys[:12] and found.missing == ["account:nobody"]
        assert len(calls) > 1 and calls[0] == keys
        assert all(set(later) < set(keys[:12]) for later in calls[1:])  # only the unread ones again


# -- counting ---------------------------------------------------------------------------


async def test_documents_under_a_prefix_are_counted_up_to_a_limit(served: tuple[Application, ChronicleClient]) -> None:
    _, client = served
    last = await opened(client, 12)
    counted = await client.projections.count(BALANCES, key_prefix="owner:", min_position=last)
    assert (counted.count, counted.more) == (12, False) and counted.position >= last
    assert (await client.projections.count(BALANCES)).count == 24  # owner: and account: documents
    assert (await client.projections.count(BALANCES, key_prefix="owner:owner-1")).count == 3  # 1, 10, 11
    assert (await client.projections.count(BALANCES, key_prefix="nobody:")).count == 0
    capped = await client.projections.count(BALANCES, key_prefix="owner:", limit=5)
    assert (capped.count, capped.more) == (5, True)
    exact = await client.projections.count(BALANCES, key_prefix="owner:", limit=12)
    assert (exact.count, exact.more) == (12, False)


async def test_a_count_is_read_from_the_store_up_to_one_more_than_its_limit(
    sql_store: StoreAdapter, served: tuple[Application, ChronicleClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = served
    last = await opened(client, 8)
    asked: list[tuple[str, str, int]] = []
    count_documents = sql_store.count_documents

    async def counted(projection: str, prefix: str, *, limit: int) -> int:
        asked.append((projection, prefix, limit))
        return await count_documents(projection, prefix, limit=limit)

    monkeypatch.setattr(sql_store, "count_documents", counted)
    await client.projections.count(BALANCES, key_prefix="owner:", limit=3, min_position=last)
    await client.projections.count(BALANCES)
    assert asked == [(BALANCES, "owner:", 4), (BALANCES, "", 10_001)]


async def test_bad_counts_are_refused_with_their_reason(served: tuple[Application, ChronicleClient]) -> None:
    _, client = served
    for call, reason in [
        (client.projections.count(BALANCES, limit=1_000_001), "COUNT_LIMIT_TOO_LARGE"),
        (client.projections.count(BALANCES, key_prefix="owner:\x00"), "INVALID_KEY_PREFIX"),
        (client.projections.count(BALANCES, min_position=10**6), "POSITION_BEYOND_END"),
    ]:
        with pytest.raises(InvalidArgument) as refused:
            await call
        assert refused.value.reason == reason
    assert (await client.projections.count(BALANCES, limit=1_000_000)).count == 0
    with pytest.raises(NotFound):
        await client.projections.count("no.such")
