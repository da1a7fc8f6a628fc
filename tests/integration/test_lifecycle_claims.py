"""What docs/export-format.md ("Deleting, archiving, restoring") promises,
each promise tested as written, over a real socket on SQLite and PostgreSQL:
what a deletion leaves in the database (as someone who took the file or a
``pg_dump`` sees it), what a subscriber filtering by event type sees, an
archive keeping an aggregate that took a command after its export, and a
restore bringing back events (at new positions, to subscribers and read
models), snapshots and claims, and writing nothing the second time."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import admin_service_pb2_grpc, command_service_pb2_grpc, event_pb2
from chronicle.v1 import command_service_pb2 as cs
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import projection_service_pb2 as proj
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service import cli
from service.processing.commands import fingerprint
from service.transfer.restoring import only_aggregates
from tests.support.at_rest import Site, site_for
from tests.support.contents import at_rest
from tests.support.grpc_client import command, details_of, running_server
from tests.support.transfer import exported, imported
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

NAME = "Ysolde Pemberton-Achterberg"
EMAIL = "ysolde@pemberton.example"
NEW_EMAIL = "ysolde.pa@pemberton.example"


@pytest.fixture(params=["sqlite", "postgres"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    return site_for(request, tmp_path)


async def refusal(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    details = details_of(error.value)
    return details.code, details.reason


async def test_deleting_removes_payloads_snapshots_and_claims_from_the_files_and_keeps_command_records(
    site: Site,
) -> None:
    """Without encryption at rest: once deleted (and, on SQLite, once the
    WAL is checkpointed: at the latest when the server stops) neither the
    database file nor a pg_dump holds the payloads, the snapshot or the
    claimed address; the command records stay, with their fingerprints."""
    register = command("u-1", users.RegisterUser(email=EMAIL, name=NAME))
    change = command("u-1", users.ChangeEmail(email=NEW_EMAIL))
    async with running_server(site.store, anonymous_admin=True, snapshot_every=1) as (_, client):
        await client.submit(register)
        await client.submit(change)

        async def snapshotted() -> bool:  # saved in the background
            found = await site.store.load_snapshot("u-1")
            return found is not None and found.version == 2

        await eventually(snapshotted, what="u-1's snapshot")
        assert await site.store.claim_owner("users.email", NEW_EMAIL) == "u-1"
        deleted = await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="u-1", reason="asked"))
        assert deleted.events_deleted == 2
        assert await site.store.load_snapshot("u-1") is None
        assert await site.store.claim_owner("users.email", NEW_EMAIL) is None
        # Its command records stay (a retry is refused, the audit lists them).
        for built in (register, change):
            assert await site.store.find_command(built.command_id) is not None
        assert (await refusal(client.submit(register)))[1] == "AGGREGATE_DELETED"
        audit = await client.admin.QueryAudit(admin.QueryAuditRequest(aggregate_id="u-1"))
        assert {register.command_id, change.command_id} <= {e.command_id for e in audit.entries}
        # Its id stays taken: registering it again is refused, not a new user.
        again = command("u-1", users.RegisterUser(email="other@example.com", name="Other"))
        assert await refusal(client.submit(again)) == (grpc.StatusCode.FAILED_PRECONDITION, "AGGREGATE_DELETED")
    everything = site.at_rest.read_bytes()  # the server stopped: SQLite's WAL is checkpointed
    for secret in (NAME, EMAIL, NEW_EMAIL):
        assert secret.encode() not in everything
    # What the docs warn of: the records' fingerprints, plain SHA-256 of the
    # command without encryption at rest, still confirm a guess.
    assert fingerprint("u-1", users.RegisterUser(email=EMAIL, name=NAME)) in site.at_rest.read_fingerprints()


async def test_a_subscription_by_event_type_sees_tombstones_only_if_it_names_them(site: Site) -> None:
    """ "a subscription filtering by event type sees them only if it names
    chronicle.v1.AggregateDeleted" (a filter of names no plugin declares is
    INVALID_FILTER, but the tombstone's is a name the server itself writes)."""
    async with running_server(site.store, anonymous_admin=True) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await client.submit(command("acc-1", bank.Deposit(amount=3)))
        await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="acc-1"))
        await client.submit(command("acc-2", bank.OpenAccount(owner="bob")))  # a last event, after the tombstone

        async def seen(*types: str) -> list[tuple[str, int, bool]]:
            call = client.events.Subscribe(ev.SubscribeRequest(after_position=0, event_types=types))
            got: list[tuple[str, int, bool]] = []
            try:
                async for response in call:
                    if response.HasField("caught_up"):
                        return got
                    if response.HasField("event"):
                        got.append((response.event.aggregate_id, response.event.version, response.event.deleted))
            finally:
                call.cancel()
            return got

        assert await seen("bank.v1.MoneyDeposited", "bank.v1.AccountOpened") == [("acc-2", 1, False)]
        assert await seen("bank.v1.AccountOpened", "chronicle.v1.AggregateDeleted") == [
            ("acc-1", 3, True),
            ("acc-2", 1, False),
        ]
        assert await refusal(seen("bank.v1.AccountOpened", "AggregateDeleted")) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FILTER",
        )
        assert [(a, v, d) for a, v, d in await seen() if d] == [("acc-1", 3, True)]


class CommandBeforeDeleting(admin_service_pb2_grpc.AdminServiceStub):
    """The admin stub `chronicle archive` uses, with a deposit to acc-1
    arriving after the archive's export, before its first deletion."""

    def __init__(self, channel: grpc.Channel) -> None:
        super().__init__(channel)  # type: ignore[no-untyped-call]
        self._commands = command_service_pb2_grpc.CommandServiceStub(channel)
        self._deposited = False
        deleting = self.DeleteAggregate

        def delete(request: admin.DeleteAggregateRequest, **kwargs: Any) -> Any:
            if not self._deposited:
                self._deposited = True
                self._commands.Submit(cs.SubmitRequest(command=command("acc-1", bank.Deposit(amount=1))))
            return deleting(request, **kwargs)

        self.DeleteAggregate = delete


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert cli.main(list(argv)) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


async def test_an_archived_aggregate_that_took_a_command_after_the_export_is_kept_and_listed_as_changed(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_server(site.store, anonymous_admin=True) as (app, client):
        for account in ("acc-1", "acc-2", "acc-3"):
            await client.submit(command(account, bank.OpenAccount(owner="ann")))
            await client.submit(command(account, bank.Deposit(amount=2)))
        # --limit: the rule picks at most that many, in id order.
        rule = admin.ArchiveRule(aggregate_type="Account", last_event_types=["bank.v1.MoneyDeposited"], limit=2)
        (header, *_) = await exported(client, include_snapshots=True, rule=rule)
        assert list(header.header.aggregate_ids) == ["acc-1", "acc-2"]

        monkeypatch.setattr(admin_service_pb2_grpc, "AdminServiceStub", CommandBeforeDeleting)
        folder = tmp_path / "archive"
        argv = ("archive", str(folder), "--type", "Account", "--last-event", "bank.v1.MoneyDeposited")
        done = await asyncio.to_thread(run_cli, capsys, *argv, "--server", app.address)
        assert (done["archived"], done["changed"]) == (["acc-2", "acc-3"], ["acc-1"])
        assert [p.name for p in folder.iterdir()] == [Path(done["file"]).name]  # complete: no .partial left
        live = [e async for e in client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id="acc-1"))]
        assert [(e.version, e.deleted) for e in live] == [(1, False), (2, False), (3, False)]
        (tombstone,) = [e async for e in client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id="acc-2"))]
        said = event_pb2.AggregateDeleted()
        assert tombstone.payload.Unpack(said) and said.archive == Path(done["file"]).name


async def test_restoring_brings_back_events_at_new_positions_snapshots_and_claims_and_again_writes_nothing(
    site: Site,
) -> None:
    async with running_server(site.store, anonymous_admin=True, snapshot_every=1) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await client.submit(command("acc-1", bank.Deposit(amount=7)))
        await client.submit(command("acc-2", bank.OpenAccount(owner="ann")))
        await client.submit(command("u-1", users.RegisterUser(email=EMAIL, name=NAME)))
        await client.submit(command("u-1", users.ChangeEmail(email=NEW_EMAIL)))
        chosen = ["acc-1", "u-1"]
        before = [e async for e in client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id="acc-1"))]

        async def snapshotted() -> bool:  # saved in the background
            found = await site.store.load_snapshot("u-1")
            return found is not None and found.version == 2

        await eventually(snapshotted, what="u-1's snapshot")
        snapshot = await site.store.load_snapshot("u-1")
        assert snapshot is not None and snapshot.version == 2
        archive = await exported(client, include_snapshots=True, aggregate_ids=chosen)
        assert [r.snapshot.version for r in archive if r.HasField("snapshot")] == [1, 2]  # every kept one
        for aggregate_id in chosen:
            await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id=aggregate_id))
        assert await site.store.claim_owner("users.email", NEW_EMAIL) is None
        head = await site.store.log_head()

        async def balance_of_ann() -> int | None:
            try:
                found = await client.projections.GetDocument(
                    proj.GetDocumentRequest(projection="bank.balances_by_owner", key="owner:ann")
                )
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                raise
            holder = bank.OwnerBalance()
            found.document.Unpack(holder)
            return holder.balance if sorted(holder.account_ids) == ["acc-1", "acc-2"] else -1

        await eventually(lambda: _is(balance_of_ann(), -1), what="the read model dropping acc-1")

        restored = await imported(client, only_aggregates(archive, {"acc-1"}), restore_deleted=True)
        assert (restored.events_written, restored.aggregates_replaced) == (2, 1)
        after = [e async for e in client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id="acc-1"))]
        assert [(e.event_id, e.version, e.timestamp) for e in after] == [
            (e.event_id, e.version, e.timestamp) for e in before
        ]
        assert all(e.position > head for e in after)  # new positions: subscribers see them as new
        async for response in client.events.Subscribe(ev.SubscribeRequest(after_position=head, aggregate_id="acc-1")):
            if response.HasField("caught_up"):
                break
            assert response.HasField("event") and not response.event.deleted
        await eventually(lambda: _is(balance_of_ann(), 7), what="the read model counting acc-1 again")

        # A restored user has its snapshot back and holds its address again.
        await imported(client, only_aggregates(archive, {"u-1"}), restore_deleted=True)
        assert await site.store.load_snapshot("u-1") == snapshot
        assert await site.store.claim_owner("users.email", NEW_EMAIL) == "u-1"
        taken = command("u-2", users.RegisterUser(email=NEW_EMAIL, name="Someone Else"))
        assert (await refusal(client.submit(taken)))[0] == grpc.StatusCode.FAILED_PRECONDITION

        # Restoring again writes nothing (the audit notes the import).
        quiet = await at_rest(site.store)
        again = await imported(client, only_aggregates(archive, set(chosen)), restore_deleted=True)
        assert (again.events_written, again.aggregates_replaced) == (0, 0)
        changes = (await at_rest(site.store)).changes_since(quiet)
        assert set(changes) <= {"refusals"}


async def _is(value: Any, expected: object) -> bool:
    return bool(await value == expected)
