"""Deadlines under encryption at rest, through a real server and client
(SQLite): a deadline's document is sealed, its key a keyed hash, and the
runner still finds it by its due time and fires it (counted by
``chronicle_reaction_deadlines_fired_total``); forgetting an aggregate
a process names deletes the process's deadline with its state
(``ForgetAggregate``), and the reaction's status stops counting it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from chronicle.v1 import admin_service_pb2 as admin_pb
from chronicle.v1 import event_service_pb2
from chronicle.v1 import reaction_service_pb2 as pb
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.plugins.registry import Registry
from service.store.encryption import new_master_key
from service.store.sqlite import SqliteStore
from tests.support import deadline_saga
from tests.support.deadline_saga import REACTION
from tests.support.grpc_client import Client, command, running_server
from tests.support.metrics import sample, scrape
from tests.support.security import write
from tests.support.waiting import eventually


async def _status(client: Client) -> pb.ReactionStatus:
    status: pb.ReactionStatus = await client.reactions.GetReaction(pb.GetReactionRequest(name=REACTION))
    return status


async def test_sealed_deadlines_fire_and_go_with_a_forgotten_aggregate(tmp_path: Path) -> None:
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    store = SqliteStore(tmp_path / "events.db")
    await store.open()
    async with running_server(
        store,
        registry=Registry([deadline_saga.plugin]),
        anonymous_admin=True,
        poll_seconds=0.05,
        master_key_file=keys,
        metrics_listen="127.0.0.1:0",
    ) as (app, client):
        await client.submit(command("order-ann@example.com", box.CreateBox(name="after-1200000")))  # 20 minutes
        await client.submit(command("order-bob@example.com", box.CreateBox(name="after-300")))

        async def bobs_cancelled() -> bool:
            read = client.events.ReadAggregate(
                event_service_pb2.ReadAggregateRequest(aggregate_id="order-bob@example.com")
            )
            types = [event.event_type async for event in read]
            return types == ["box.v1.BoxCreated", "box.v1.BoxArchived"]

        await eventually(bobs_cancelled, what="bob's order cancelled by its deadline")
        assert (await _status(client)).deadlines == 1  # ann's
        fired = sample(await scrape(app), "chronicle_reaction_deadlines_fired_total", reaction=REACTION)
        assert fired == 1  # bob's
        with sqlite3.connect(tmp_path / "events.db") as conn:
            stored = conn.execute(
                "SELECT key, data FROM projection_documents WHERE projection = ? AND due_us IS NOT NULL", (REACTION,)
            ).fetchall()
        assert len(stored) == 1
        ((key, data),) = stored
        assert "ann" not in key and b"ann" not in data  # hidden and sealed

        await client.admin.ForgetAggregate(admin_pb.ForgetAggregateRequest(aggregate_id="order-ann@example.com"))
        status = await _status(client)
        assert (status.deadlines, status.HasField("next_deadline")) == (0, False)
