"""Exporting a store and importing it into another over a real socket
(AdminService.ExportLog and ImportLog), between SQLite and PostgreSQL:
every envelope, claim, snapshot and command record arrives as it was, a
repeated import changes nothing, a cut one resumes, and bad input gets a
clear status."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import export_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.store.base import StoreAdapter
from service.store.imported import marked_imported
from service.store.records import LogFilter, RecordedEvent
from service.store.sqlite import SqliteStore
from tests.support.contents import at_rest
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.transfer import OpenStore, exported, imported, kinds, store_opener
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

PAIRS = [("sqlite", "postgres"), ("postgres", "sqlite")]


@pytest.fixture
def open_store(tmp_path: Path, request: pytest.FixtureRequest) -> OpenStore:
    return store_opener(tmp_path, lambda: request.getfixturevalue("pg_cluster"))


async def log_of(store: StoreAdapter) -> list[RecordedEvent]:
    return list((await store.read_log(0, LogFilter(), 10_000)).events)


def unplaced(events: list[RecordedEvent]) -> list[RecordedEvent]:
    return [replace(e, position=0) for e in events]


def as_imported(events: list[RecordedEvent]) -> list[RecordedEvent]:
    """``events`` as an import writes them elsewhere: the same, at positions
    of their own, each marked as imported (history to reactions)."""
    return [marked_imported(e) for e in unplaced(events)]


class Filled:
    """What ``fill`` sent: commands to retry on the other side."""

    def __init__(self) -> None:
        self.opened = command("acc-1", bank.OpenAccount(owner="ann"), metadata={"channel": "wéb"})
        self.deposits = [command("acc-1", bank.Deposit(amount=n)) for n in (10, 20, 30)]
        self.refused = command("acc-1", bank.Withdraw(amount=1_000))
        self.other = command("acc-2", bank.OpenAccount(owner="bob"))
        self.user = command("u-1", users.RegisterUser(email="ann@old.example", name="Ann"))
        self.moved = command("u-1", users.ChangeEmail(email="ann@example.com"))


async def fill(client: Client, store: StoreAdapter | None = None) -> Filled:
    """Accounts, a user holding a claim, a refusal; with ``store`` (a server
    taking snapshots every 2 versions), until u-1's snapshot is saved."""
    sent = Filled()
    for built in (sent.opened, *sent.deposits, sent.other, sent.user, sent.moved):
        await client.submit(built)
    with pytest.raises(grpc.aio.AioRpcError):
        await client.submit(sent.refused)
    if store is not None:
        saved = store

        async def snapshot_saved() -> bool:
            snapshot = await saved.load_snapshot("u-1")
            return snapshot is not None and snapshot.version == 2

        await eventually(snapshot_saved, what="u-1's snapshot at version 2")
    return sent


@pytest.mark.parametrize(("source", "target"), PAIRS)
async def test_a_store_moves_with_its_envelopes_claims_snapshots_and_command_records(
    open_store: OpenStore, source: str, target: str
) -> None:
    async with open_store(source, "source") as old, open_store(target, "target") as new:
        async with running_server(old, anonymous_admin=True, snapshot_every=2) as (_, client):
            sent = await fill(client, old)
            records = await exported(client, include_snapshots=True, include_commands=True)
            old_log, old_snapshot = await log_of(old), await old.load_snapshot("u-1")
        assert kinds(records)[0] == "header" and kinds(records)[-1] == "end"
        assert records[0].header.source == source.replace("postgres", "postgresql")
        assert records[-1].end.events == len(old_log) == 7

        async with running_server(new, anonymous_admin=True) as (_, client):
            response = await imported(client, records)
            assert (response.events_written, response.events_skipped) == (7, 0)
            assert response.commands_written == 8  # seven accepted, one refused
            assert response.claims_written == 1  # the address u-1 holds now
            assert response.snapshots_written == 1
            # The same events, envelope for envelope, in the same order, marked as imported.
            assert unplaced(await log_of(new)) == as_imported(old_log)
            assert old_snapshot is not None and await new.load_snapshot("u-1") == old_snapshot
            # Claims are taken again: the address is held on the new store.
            with pytest.raises(grpc.aio.AioRpcError) as taken:
                await client.submit(command("u-2", users.RegisterUser(email="ann@example.com", name="Eve")))
            assert details_of(taken.value).reason == "NOT_UNIQUE"
            # Command records came along: a retry is replayed, a refusal refused alike.
            replayed = await client.submit(sent.deposits[1])
            assert replayed.replayed and [e.version for e in replayed.events] == [3]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.submit(sent.refused)
            assert details_of(refused.value).reason == "INSUFFICIENT_FUNDS"
            state = await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acc-1"))
            assert state.version == 4
            audit = await client.admin.QueryAudit(admin.QueryAuditRequest())
            entry = next(e for e in audit.entries if e.command_type.endswith("/ImportLog"))
            assert entry.outcome == admin.AUDIT_OUTCOME_ACCEPTED
            assert "7 event" in entry.message


async def test_importing_again_changes_nothing_but_the_audit_log(open_store: OpenStore) -> None:
    async with open_store("sqlite", "source") as old, open_store("postgres", "target") as new:
        async with running_server(old, anonymous_admin=True, snapshot_every=2) as (_, client):
            await fill(client, old)
            records = await exported(client, include_snapshots=True, include_commands=True)
        async with running_server(new, anonymous_admin=True) as (_, client):
            await imported(client, records)
            before = await at_rest(new)
            again = await imported(client, records)
            assert (again.events_written, again.events_skipped) == (0, 7)
            assert (again.snapshots_written, again.claims_written, again.commands_written) == (0, 0, 0)
            changes = (await at_rest(new)).changes_since(before)
        assert set(changes) == {"refusals"}  # the audit entry of the second import
        assert len(changes["refusals"].added) == 1 and not changes["refusals"].removed


async def test_an_import_cut_short_is_incomplete_and_finishes_when_sent_again(open_store: OpenStore) -> None:
    async with open_store("postgres", "source") as old, open_store("sqlite", "target") as new:
        async with running_server(old, anonymous_admin=True) as (_, client):
            await fill(client)
            records = await exported(client, include_commands=True)
            old_log = await log_of(old)
        async with running_server(new, anonymous_admin=True) as (_, client):
            cut = records[: 1 + 4]  # the header and four events
            with pytest.raises(grpc.aio.AioRpcError) as incomplete:
                await imported(client, cut)
            assert (incomplete.value.code(), details_of(incomplete.value).reason) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "EXPORT_INCOMPLETE",
            )
            assert unplaced(await log_of(new)) == as_imported(old_log[:4])  # what came was written
            resumed = await imported(client, records)
            assert (resumed.events_written, resumed.events_skipped) == (3, 4)
            assert unplaced(await log_of(new)) == as_imported(old_log)


def _header(**fields: object) -> export_pb2.ExportRecord:
    header = export_pb2.ExportHeader(format="chronicle.export", format_version=1)
    for name, value in fields.items():
        setattr(header, name, value)
    return export_pb2.ExportRecord(header=header)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_bad_streams_are_refused_with_a_reason_and_nothing_written(open_store: OpenStore, kind: str) -> None:
    async with open_store(kind, "source") as old, open_store(kind, "target") as new:
        async with running_server(old, anonymous_admin=True) as (_, client):
            await fill(client)
            records = await exported(client)
        event = records[1]
        no_id = export_pb2.ExportRecord()
        no_id.CopyFrom(event)
        no_id.event.event.event_id = ""
        end = export_pb2.ExportRecord(end=export_pb2.ExportEnd(events=1))
        cases = [
            ([], grpc.StatusCode.INVALID_ARGUMENT, "NOT_AN_EXPORT", []),
            ([event, end], grpc.StatusCode.INVALID_ARGUMENT, "NOT_AN_EXPORT", ["record[0]"]),
            ([_header(format="csv"), end], grpc.StatusCode.INVALID_ARGUMENT, "NOT_AN_EXPORT", ["record[0]"]),
            (
                [_header(format_version=3), end],
                grpc.StatusCode.INVALID_ARGUMENT,
                "UNSUPPORTED_EXPORT_VERSION",
                ["record[0].header.format_version"],
            ),
            (
                [_header(), no_id, end],
                grpc.StatusCode.INVALID_ARGUMENT,
                "BAD_RECORD",
                ["record[1].event.event.event_id"],
            ),
            ([_header(), _header(), end], grpc.StatusCode.INVALID_ARGUMENT, "BAD_RECORD", ["record[1]"]),
            ([_header(), event, end, event], grpc.StatusCode.INVALID_ARGUMENT, "BAD_RECORD", ["record[3]"]),
            ([_header(), end], grpc.StatusCode.INVALID_ARGUMENT, "EXPORT_INCOMPLETE", []),
        ]
        async with running_server(new, anonymous_admin=True) as (_, client):
            await client.submit(command("acc-9", bank.OpenAccount(owner="zed")))
            before = await at_rest(new)
            for sent, code, reason, fields in cases:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await imported(client, sent)
                details = details_of(refused.value)
                assert (details.code, details.reason, details.field_violations) == (code, reason, fields), sent
            changes = (await at_rest(new)).changes_since(before)
            # Each refusal is audited; the event before the end record of the
            # stream that went on after it was written (a whole batch), and
            # the read model applied it.
            read_model = {"projection_checkpoints", "projection_documents", "projection_subjects"}
            assert set(changes) <= {"refusals", "events", "log_head", *read_model}
            assert len(changes["refusals"].added) == len(cases)
            assert len(changes["events"].added) == 1 and not changes["events"].removed


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_an_aggregate_with_other_events_is_refused_unless_overwritten(open_store: OpenStore, kind: str) -> None:
    async with open_store(kind, "source") as old, open_store(kind, "target") as new:
        async with running_server(old, anonymous_admin=True) as (_, client):
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
            await client.submit(command("acc-1", bank.Deposit(amount=100)))
            records = await exported(client)
            old_events = await old.read_aggregate("acc-1")
        async with running_server(new, anonymous_admin=True) as (_, client):
            # The target has its own acc-1, as long, and its state cached in a worker.
            await client.submit(command("acc-1", bank.OpenAccount(owner="bob")))
            await client.submit(command("acc-1", bank.Deposit(amount=5)))
            before = await at_rest(new)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await imported(client, records)
            details = details_of(refused.value)
            assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "AGGREGATE_NOT_EMPTY")
            assert details.metadata["aggregate_id"] == "acc-1"
            assert set((await at_rest(new)).changes_since(before)) == {"refusals"}

            replaced = await imported(client, records, overwrite=True)
            assert (replaced.aggregates_replaced, replaced.events_written) == (1, 2)
            assert unplaced(await new.read_aggregate("acc-1")) == as_imported(old_events)
            # The server forgot its cached acc-1: the next command is decided on the imported one.
            after = await client.submit(command("acc-1", bank.Deposit(amount=1)))
            assert after.version == 3
            state = await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acc-1"))
            account = bank.Account()
            state.state.Unpack(account)
            assert (account.owner, account.balance) == ("ann", 101)


async def test_exporting_chosen_aggregates_and_bad_requests(open_store: OpenStore) -> None:
    async with open_store("sqlite", "source") as old, running_server(old, anonymous_admin=True) as (_, client):
        await fill(client)
        chosen = await exported(client, aggregate_ids=["acc-2", "u-1"], include_snapshots=True)
        events = [r.event.event for r in chosen if r.HasField("event")]
        assert [(e.aggregate_id, e.version) for e in events] == [("acc-2", 1), ("u-1", 1), ("u-1", 2)]
        assert [r.claim.aggregate_id for r in chosen if r.HasField("claim")] == ["u-1"]
        assert list(chosen[0].header.aggregate_ids) == ["acc-2", "u-1"]
        cases: list[tuple[dict[str, object], str, str]] = [
            ({"aggregate_ids": ["   "]}, "INVALID_AGGREGATE_ID", "aggregate_ids[0]"),
            ({"aggregate_ids": [f"a-{n}" for n in range(1001)]}, "TOO_MANY_AGGREGATES", "aggregate_ids"),
            ({"aggregate_ids": ["acc-1"], "include_commands": True}, "INVALID_SELECTION", "include_commands"),
        ]
        for request, reason, field in cases:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await exported(client, **request)
            details = details_of(refused.value)
            assert (details.code, details.reason, details.field_violations) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                reason,
                [field],
            )


async def test_export_and_import_need_the_admin_grant_and_are_audited(tmp_path: Path) -> None:
    path = tmp_path / "events.db"  # one file, a server at a time on it
    async with running_server(SqliteStore(path), anonymous_admin=True) as (_, client):
        await fill(client)
        records = await exported(client)
    async with running_server(SqliteStore(path)) as (_, client):  # anonymous callers, not administrators
        for attempt in (exported(client), imported(client, records)):
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await attempt
            details = details_of(denied.value)
            assert (details.code, details.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ANONYMOUS_ADMIN_DENIED")
    async with running_server(SqliteStore(path), anonymous_admin=True) as (_, client):
        audit = await client.admin.QueryAudit(admin.QueryAuditRequest())
    actions = [(e.command_type.rpartition("/")[2], e.outcome) for e in audit.entries if not e.command_id]
    assert ("ImportLog", admin.AUDIT_OUTCOME_REFUSED) in actions
    assert actions.count(("ExportLog", admin.AUDIT_OUTCOME_REFUSED)) == 1
    assert actions.count(("ExportLog", admin.AUDIT_OUTCOME_ACCEPTED)) == 1
