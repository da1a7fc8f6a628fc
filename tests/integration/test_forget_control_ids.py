"""An administrator can forget and delete an aggregate stored under an id
with a control character. No write takes such an id now (``values.id_problem``),
but imports took them before they held ids to that rule, so a store may
hold one: it is written to the store directly here, sealed under encryption
at rest. ForgetAggregate, DeleteAggregate and QueryAudit's aggregate filter
take it as the reads do (``codec.check_stored_id``); an empty id is still
refused. A real server on SQLite with master keys, a real gRPC client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import event_service_pb2 as ev
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.store.encryption import new_master_key
from service.store.sqlite import SqliteStore
from tests.support.at_rest import sqlite_at_rest
from tests.support.events import new_event
from tests.support.grpc_client import Client, details_of, running_server
from tests.support.security import write

OWNER = b"Quillon Vanterpool-Ashby"
FORGOTTEN = "esc\x1b[31mred"
DELETED = "line\nbreak"
KEPT = "nul\x00byte"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Application, Client]]:
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    store = SqliteStore(tmp_path / "data" / "events.db")
    async with running_server(store, master_key_file=keys, anonymous_admin=True) as (app, client):
        for aggregate_id in (FORGOTTEN, DELETED, KEPT):
            opened = bank.AccountOpened(owner=OWNER.decode()).SerializeToString()
            # Through the server's own (sealing) store: what an old import wrote.
            await app.store.events.append(
                aggregate_id, [new_event("bank.v1.AccountOpened", aggregate_type="Account", payload=opened)], 0
            )
        yield app, client


async def test_an_aggregate_stored_under_a_control_character_can_be_forgotten_and_deleted(
    served: tuple[Application, Client], tmp_path: Path
) -> None:
    _, client = served
    forgotten = await client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id=FORGOTTEN))
    assert not forgotten.already_forgotten and forgotten.HasField("forgotten_time")
    read = [e async for e in client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id=FORGOTTEN))]
    assert [(e.redacted, e.payload.value) for e in read] == [(True, b"")]
    kept = [e async for e in client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id=KEPT))]
    assert OWNER in kept[0].payload.value  # the others are untouched
    assert sqlite_at_rest(tmp_path / "data").read_wrapped_key(FORGOTTEN) is None

    deleted = await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id=DELETED))
    assert deleted.events_deleted == 1 and not deleted.already_deleted

    audit = await client.admin.QueryAudit(admin.QueryAuditRequest(aggregate_id=FORGOTTEN))
    assert [e.command_type for e in audit.entries] == ["chronicle.v1.AdminService/ForgetAggregate"]


async def test_an_empty_id_is_still_refused(served: tuple[Application, Client]) -> None:
    _, client = served
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id=""))
    details = details_of(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AGGREGATE_ID")
