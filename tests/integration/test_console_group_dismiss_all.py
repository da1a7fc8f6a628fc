"""A group's *Dismiss all* is all or none (docs/console.md): the confirmed
parked events go in one transaction (``dismiss_confirmed``), so a failure
midway leaves every one of them parked. It went by DismissParked calls of
100 ids: a failure in the second left the first hundred dismissed and the
page said nothing of them. A real server on SQLite and on PostgreSQL, the
console over HTTP, the failure injected in the database itself: a trigger
that fails the deletion of the 121st event, as a full disk would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application, start
from service.client import ChronicleClient
from service.store.base import AuditQuery, StoreAdapter
from service.store.postgres import PostgresStore
from service.store.records import ACCEPTED, REFUSED
from service.store.sqlite import SqliteStore
from tests.integration.test_console_group_actions import ROOT_KEY, Operator, hidden, park_all, settings
from tests.support.console import console, text_of
from tests.support.failing_deletes import fail_deleting, heal_deleting
from tests.support.grpc_client import command, connect
from tests.support.security import bearer

PARKED = 150  # more than one batch of 100, as the console sent them
FAILING = 120  # the position, among the confirmed (by position), of the event whose deletion fails


@asynccontextmanager
async def parked_group(store: StoreAdapter, tmp_path: Path) -> AsyncIterator[tuple[Application, ChronicleClient]]:
    app = await start(settings(tmp_path), store=store)
    try:
        async with ChronicleClient.connect(app.address, token=ROOT_KEY) as client:
            await client.groups.create("billing", aggregate_types=["Account"])
            async with connect(app.address, interceptors=bearer(ROOT_KEY)) as root:
                for number in range(PARKED):
                    await root.submit(command(f"acc-{number}", bank.OpenAccount(owner="ann"), user_id="root-actions"))
            await park_all(client, PARKED)
            yield app, client
    finally:
        await app.stop(grace=0.5, drain=0)


async def _inject(store: StoreAdapter, event_id: str, postgres_url: str) -> None:
    await fail_deleting(store, postgres_url, table="group_parked", column="event_id", value=event_id)


async def _heal(store: StoreAdapter, postgres_url: str) -> None:
    await heal_deleting(store, postgres_url, table="group_parked")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_and_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[StoreAdapter, str]]:
    if request.param == "sqlite":
        yield SqliteStore(str(tmp_path / "groups.db")), ""
    else:
        url = request.getfixturevalue("postgres_url")
        yield PostgresStore(url, pool_size=4), url


async def test_dismiss_all_failing_midway_dismisses_none_and_once_the_store_heals_dismisses_all(
    store_and_url: tuple[StoreAdapter, str], tmp_path: Path
) -> None:
    store, postgres_url = store_and_url
    async with parked_group(store, tmp_path) as (app, client):
        root = await Operator.log_in(console(app), ROOT_KEY)
        confirm = (await root.get("/groups/billing/confirm?action=dismiss-all")).text
        confirmed = {"count": hidden(confirm, "count"), "digest": hidden(confirm, "digest")}
        ids = [event.event_id for event in await client.groups.parked("billing", limit=PARKED)]
        await _inject(store, ids[FAILING], postgres_url)

        failed = await root.post("/groups/billing/dismiss-all", confirmed)
        after_failure = await client.groups.get("billing")
        left = [event.event_id for event in await client.groups.parked("billing", limit=PARKED)]

        await _heal(store, postgres_url)
        done = await root.post("/groups/billing/dismiss-all", confirmed)  # the same confirmation: nothing changed
        told = text_of((await root.get("/groups/billing")).text)
        healed = await client.groups.get("billing")
        audited = [
            (entry.outcome, entry.reason)
            for entry in await app.store.audit.read_audit(AuditQuery())
            if entry.command_type.endswith("/DismissParked")
        ]
    assert confirmed["count"] == str(PARKED)
    assert failed.status == 503 and "STORE_UNAVAILABLE" in failed.text
    # None dismissed: before, the first batch of 100 was, and stayed so.
    assert (after_failure.parked, after_failure.dismissed) == (PARKED, 0)
    assert left == ids
    assert done.status == 303 and f"Dismissed {PARKED} parked event(s)." in told
    assert (healed.parked, healed.dismissed) == (0, PARKED)
    # One DismissParked each time (audited as the RPC is): refused, then done.
    assert sorted(audited) == sorted([(REFUSED, "STORE_UNAVAILABLE"), (ACCEPTED, "")])
