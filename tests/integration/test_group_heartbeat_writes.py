"""A consumer session's heartbeat is one write to the store (docs/
subscriptions.md, "Each consumer's session reports"): its report rides in
the renewal of its leases (``GroupStore.renew_consumer``, one transaction),
no longer a write of its own beside it. A real server on memory, SQLite
and PostgreSQL, a real consumer over gRPC; the store's calls for the
group's consumer counted over a steady stretch of heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from service.app import start
from service.client import ChronicleClient
from service.store.base import StoreAdapter
from service.store.grouping import consumer_group
from service.store.memory import MemoryStore
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore
from tests.support.grpc_client import TEST_SETTINGS
from tests.support.waiting import eventually

LEASE_SECONDS = 0.9  # a heartbeat every 0.3 s
WINDOW_SECONDS = 3.0  # about ten heartbeats
GROUP = consumer_group("billing")


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    if request.param == "memory":
        yield MemoryStore()
    elif request.param == "sqlite":
        yield SqliteStore(str(tmp_path / "groups.db"))
    else:
        yield PostgresStore(request.getfixturevalue("postgres_url"), pool_size=4)


# Set within a counted call: the memory store's renew_consumer renews
# through its own LocalLeases, one step, not a call of the session's.
_within = contextvars.ContextVar("within", default=False)


def counting(calls: Counter[str], name: str, method: Callable[..., Any], *, of_group: bool = False) -> Any:
    """``method``, counting the session's calls of it under ``name`` (with
    ``of_group``, only those on the consumer group's leases: the replica's
    own leases renew too)."""

    async def counted(*args: Any, **kwargs: Any) -> Any:
        if (not of_group or args[0] == GROUP) and not _within.get():
            calls[name] += 1
        token = _within.set(True)
        try:
            return await method(*args, **kwargs)
        finally:
            _within.reset(token)

    return counted


async def test_a_consumers_heartbeat_writes_its_report_and_renews_its_leases_in_one_call(
    store: StoreAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await start(
        replace(TEST_SETTINGS, lease_seconds=LEASE_SECONDS, poll_seconds=0.1, anonymous_admin=True), store=store
    )
    try:
        async with ChronicleClient.connect(app.address) as client:
            await client.groups.create("billing", aggregate_types=["Account"], segments=4)

            async def consume() -> None:
                async with client.consume("billing", consumer="steady") as deliveries:
                    async for _ in deliveries:
                        pass

            consuming = asyncio.ensure_future(consume())
            try:

                async def settled() -> bool:
                    consumers = (await client.groups.get("billing")).consumers
                    return [(len(c.segments), c.HasField("since_last_heard")) for c in consumers] == [(4, True)]

                await eventually(settled, what="the consumer holding every segment, reported")
                calls: Counter[str] = Counter()
                leases = store.consumer_leases
                for name in ("renew_consumer", "report_consumer"):
                    if hasattr(store, name):  # renew_consumer: not on a store from before it
                        monkeypatch.setattr(store, name, counting(calls, name, getattr(store, name)))
                for name in ("renew_leases", "change_leases", "leave_group"):
                    monkeypatch.setattr(leases, name, counting(calls, name, getattr(leases, name), of_group=True))
                began = time.monotonic()
                await asyncio.sleep(WINDOW_SECONDS)
                elapsed = time.monotonic() - began
                counted = dict(calls)
                (consumer,) = (await client.groups.get("billing")).consumers
            finally:
                consuming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consuming
    finally:
        await app.stop(grace=0.5, drain=0)
    heartbeats = elapsed / (LEASE_SECONDS / 3)
    # One call a heartbeat (it was two: the renewal, and the report beside it) ...
    assert 0.7 <= sum(counted.values()) / heartbeats <= 1.3, (counted, heartbeats)
    # ... renew_consumer alone: no report_consumer, no renewal of its own.
    assert set(counted) == {"renew_consumer"}, counted
    # And the report is as fresh as the heartbeat.
    assert consumer.since_last_heard.ToTimedelta().total_seconds() < 2 * LEASE_SECONDS / 3
