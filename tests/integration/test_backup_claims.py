"""docs/deployment.md's "Backups": an export (``chronicle export
--snapshots --commands``) holds the events, snapshots, claims, command
records and data keys, and nothing else. What it leaves out (subscription
groups and their checkpoints, projection documents and checkpoints, the
audit entries that are not commands) is checked here, table by table, on a
SQLite store exported and imported as the guide's commands do."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import subscription_group_service_pb2 as groups
from chronicle.v1 import subscription_group_service_pb2_grpc as groups_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service import cli
from service.store.imported import REACTION_STARTS
from service.store.sqlite import SqliteStore
from tests.support.grpc_client import command, running_server
from tests.support.waiting import eventually

LEFT_OUT = ("subscription_groups", "group_segments", "projection_documents", "projection_checkpoints", "refusals")
CARRIED = ("events", "commands", "claims", "snapshots")


def counts(path: Path, tables: tuple[str, ...]) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in tables}


async def test_an_export_leaves_out_groups_projections_and_the_audit_entries_that_are_not_commands(
    tmp_path: Path,
) -> None:
    source, target, exported = tmp_path / "source.db", tmp_path / "target.db", tmp_path / "backup.chronicle"
    store = SqliteStore(source)
    await store.open()
    async with running_server(store, anonymous_admin=True) as (_, client):  # closes the store when it stops
        for account in ("acc-1", "acc-2"):
            await client.submit(command(account, bank.OpenAccount(owner="ann")))
            await client.submit(command(account, bank.Deposit(amount=5)))
        await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="acc-2"), timeout=10)
        await groups_grpc.SubscriptionGroupServiceStub(client.channel).CreateGroup(
            groups.CreateGroupRequest(name="billing"), timeout=10
        )
        await eventually(lambda: counts(source, ("projection_documents",))["projection_documents"] > 0)
    before = counts(source, LEFT_OUT + CARRIED)
    assert all(before[table] > 0 for table in (*LEFT_OUT, "events", "commands")), before

    url = f"sqlite:///{source}"
    assert (
        await asyncio.to_thread(cli.main, ["export", str(exported), "--snapshots", "--commands", "--database-url", url])
        == 0
    )
    assert (
        await asyncio.to_thread(cli.main, ["import", str(exported), "--quiet", "--database-url", f"sqlite:///{target}"])
        == 0
    )

    after = counts(target, LEFT_OUT + CARRIED)
    # The one checkpoint row is the import's own: the reactions' starts fixed
    # on a store it filled from empty (no projection's or reaction's moved).
    assert {table: after[table] for table in LEFT_OUT} == {**dict.fromkeys(LEFT_OUT, 0), "projection_checkpoints": 1}
    with sqlite3.connect(target) as db:
        assert db.execute("SELECT name FROM projection_checkpoints").fetchall() == [(REACTION_STARTS,)]
    assert {table: after[table] for table in CARRIED} == {table: before[table] for table in CARRIED}
