"""``timeout=`` on the Python client's calls beyond commands and state
reads (docs/clients.md, "Bounding a call"), against a real server over a
real socket whose store stalls (a database that stops answering): the call
ends with ``DeadlineExceeded`` (reason DEADLINE_EXCEEDED, the timeout in
its metadata) after about its timeout, not the retry policy's 30 s nor an
attempt's 10 s; the same calls answer once the store does. One of each
kind: a status read (reactions, projections, groups), a process state,
a page of a listing (admin.aggregates, projections.documents), a whole
read (read_all), a group's parked events (a listing bounded as a whole)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient, DeadlineExceeded, NotFound, RetryPolicy
from service.store.memory import MemoryStore
from tests.support.grpc_client import running_server

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
TIMEOUT = 0.4


class StallingStore(MemoryStore):
    """A memory store whose reads wait while it is stalled (``stall``,
    ``answer``), as a database that stops answering does."""

    def __init__(self) -> None:
        super().__init__()
        self._answering = asyncio.Event()
        self._answering.set()

    def stall(self) -> None:
        self._answering.clear()

    def answer(self) -> None:
        self._answering.set()

    async def _wait(self) -> None:
        await self._answering.wait()

    async def log_head(self) -> int:
        await self._wait()
        return await super().log_head()

    async def read_aggregate(self, *args: Any, **kwargs: Any) -> Any:
        await self._wait()
        return await super().read_aggregate(*args, **kwargs)

    async def list_aggregates(self, *args: Any, **kwargs: Any) -> Any:
        await self._wait()
        return await super().list_aggregates(*args, **kwargs)

    async def load_document(self, *args: Any, **kwargs: Any) -> Any:
        await self._wait()
        return await super().load_document(*args, **kwargs)

    async def list_documents(self, *args: Any, **kwargs: Any) -> Any:
        await self._wait()
        return await super().list_documents(*args, **kwargs)

    async def list_groups(self) -> Any:
        await self._wait()
        return await super().list_groups()

    async def load_group(self, name: str) -> Any:
        await self._wait()
        return await super().load_group(name)


async def _listed(pages: Any) -> list[Any]:
    return [item async for item in pages]


async def test_calls_given_a_timeout_end_with_deadline_exceeded_while_the_store_stalls() -> None:
    store = StallingStore()
    async with (
        running_server(store, anonymous_admin=True) as (app, _),
        ChronicleClient.connect(app.address, retry=FAST) as client,
    ):
        await client.submit("acc-1", bank.OpenAccount(owner="ann"))
        await client.groups.create("audit", aggregate_types=["Account"])
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "reactions.get": lambda: client.reactions.get("bank.transfers", timeout=TIMEOUT),
            "reactions.state": lambda: client.reactions.state("bank.transfers", "t-1", timeout=TIMEOUT),
            "projections.get": lambda: client.projections.get("bank.balances_by_owner", timeout=TIMEOUT),
            "projections.documents": lambda: _listed(
                client.projections.documents("bank.balances_by_owner", timeout=TIMEOUT)
            ),
            "groups.list": lambda: client.groups.list(timeout=TIMEOUT),
            "groups.parked": lambda: client.groups.parked("audit", timeout=TIMEOUT),
            "admin.aggregates": lambda: _listed(client.admin.aggregates(prefix="acc-", timeout=TIMEOUT)),
            "read_all": lambda: client.read_all("acc-1", timeout=TIMEOUT),
        }
        store.stall()
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded) as timed_out:
                await call()
            took = time.monotonic() - started
            assert TIMEOUT <= took < TIMEOUT + 2, (name, took)  # its timeout: not the retries' 30 s
            assert timed_out.value.reason == "DEADLINE_EXCEEDED", name
            assert timed_out.value.metadata["timeout"] == f"{TIMEOUT:g}", name
        store.answer()
        for name, call in calls.items():
            if name == "reactions.state":
                with pytest.raises(NotFound):  # answered: no such process
                    await call()
                continue
            await call()  # answered within the same timeout
        assert [e.version for e in await client.read_all("acc-1", timeout=TIMEOUT)] == [1]


async def test_a_listings_timeout_bounds_all_of_its_pages() -> None:
    async with (
        running_server(MemoryStore(), anonymous_admin=True) as (app, _),
        ChronicleClient.connect(app.address, retry=FAST) as client,
    ):
        for owner in ("ann", "bob", "cy"):
            await client.submit(f"acc-{owner}", bank.OpenAccount(owner=owner))
        seen: list[str] = []

        async def slowly() -> None:
            async for aggregate in client.admin.aggregates(prefix="acc-", page_size=1, timeout=0.5):
                seen.append(aggregate.aggregate_id)
                await asyncio.sleep(0.3)  # the caller's time between pages counts

        with pytest.raises(DeadlineExceeded):
            await slowly()
        assert seen == ["acc-ann", "acc-bob"]  # the 3rd page was asked for past the 0.5 s
        everything = [a.aggregate_id async for a in client.admin.aggregates(prefix="acc-", page_size=1, timeout=5)]
        assert everything == ["acc-ann", "acc-bob", "acc-cy"]


async def test_a_timeout_that_is_not_positive_is_refused_before_anything_is_sent() -> None:
    async with (
        running_server(MemoryStore()) as (app, _),
        ChronicleClient.connect(app.address, retry=FAST) as client,
    ):
        for call in (
            lambda: client.reactions.list(timeout=0),
            lambda: client.groups.delete("none", timeout=-1),
            lambda: client.admin.count_to_forget(prefix="acc-", timeout=0),
            lambda: client.read_all("acc-1", timeout=0),
        ):
            with pytest.raises(ValueError, match="timeout must be positive"):
                await call()
