"""ResetReaction over a real socket (docs/plugins.md, "Resetting a
reaction"): the bank's transfers, new to a store whose log already held a
requested transfer, start at its end and leave it pending; reset to the
position before it, they carry it out, and reset to the start they carry
out nothing twice (their commands are answered from their records) — on
SQLite and PostgreSQL, the store served twice. An imported pending
transfer stays history: a reset does not carry it out. Bad input refused
with its reason, each call audited; the replica that does not run the
reaction refuses and moves nothing; the CLI's ``reaction NAME reset``."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import reaction_service_pb2 as pb
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.app import Application
from service.plugins.registry import Registry
from service.store.base import StoreAdapter
from service.store.postgres import PostgresStore
from service.store.records import NewEvent
from service.store.sqlite import SqliteStore
from tests.integration.test_import_reactions import Legacy, stream
from tests.support import plugins
from tests.support.cluster import replica
from tests.support.grpc_client import TEST_SETTINGS, Client, command, details_of, running_server
from tests.support.processes import cli
from tests.support.transfer import imported
from tests.support.waiting import eventually

TRANSFERS = "bank.transfers"
RELAY = "gates.relay"
BANK = Registry([bank_account.plugin])
GATES = Registry([plugins.gates])
SETTINGS = replace(TEST_SETTINGS, poll_seconds=0.05, anonymous_admin=True)


class Site:
    """One store, served again and again (each server opens its own
    adapter of it, and closes it when it stops), and written straight."""

    def __init__(self, kind: str, path: Path, postgres_url: str) -> None:
        self.kind, self._path, self._url = kind, path, postgres_url

    def store(self) -> StoreAdapter:
        return SqliteStore(self._path) if self.kind == "sqlite" else PostgresStore(self._url, pool_size=4)

    def served(self, registry: Registry) -> AbstractAsyncContextManager[tuple[Application, Client]]:
        if self.kind == "sqlite":
            return running_server(self.store(), settings=SETTINGS, registry=registry)
        return replica(self._url, registry=registry, anonymous_admin=True)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    url = await request.getfixturevalue("postgres_current")() if request.param == "postgres" else ""
    return Site(request.param, tmp_path / "chronicle.db", url)


class Accounts:
    """ann (100) and bob, and a transfer of 30 from ann to bob requested:
    written straight into the store, as a server without the transfers
    reaction (or before it) wrote them. Not imported: live history."""

    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.ann, self.bob, self.transfer = f"ann-{suffix}", f"bob-{suffix}", f"transfer-{suffix}"

    async def open(self, store: StoreAdapter) -> int:
        """The accounts; the log's head after them (before the transfer)."""
        await store.open()
        try:
            await store.append(self.ann, [_new("Account", bank.AccountOpened(owner="ann"))], 0)
            await store.append(self.ann, [_new("Account", bank.MoneyDeposited(amount=100))], 1)
            await store.append(self.bob, [_new("Account", bank.AccountOpened(owner="bob"))], 0)
            return await store.log_head()
        finally:
            await store.close()

    async def request_transfer(self, store: StoreAdapter) -> int:
        """The transfer requested; the log's head after it."""
        await store.open()
        try:
            requested = bank.TransferRequested(source_account_id=self.ann, target_account_id=self.bob, amount=30)
            await store.append(self.transfer, [_new("Transfer", requested)], 0)
            return await store.log_head()
        finally:
            await store.close()


def _new(aggregate_type: str, message: Message, *, age_us: int = 0) -> NewEvent:
    return NewEvent(
        event_id=str(uuid.uuid4()),
        aggregate_type=aggregate_type,
        event_type=message.DESCRIPTOR.full_name,
        schema_version=1,
        payload=message.SerializeToString(),
        timestamp_us=time.time_ns() // 1000 - age_us,
        user_id="teller",
    )


async def state_of(client: Client, aggregate_id: str, message: Message) -> Message:
    response: ev.GetAggregateResponse = await client.events.GetAggregate(
        ev.GetAggregateRequest(aggregate_id=aggregate_id), timeout=10
    )
    assert response.state.Unpack(message)
    return message


async def balances(client: Client, accounts: Accounts) -> tuple[int, int]:
    ann = await state_of(client, accounts.ann, bank.Account())
    bob = await state_of(client, accounts.bob, bank.Account())
    assert isinstance(ann, bank.Account) and isinstance(bob, bank.Account)
    return int(ann.balance), int(bob.balance)


async def transfer_status(client: Client, transfer: str) -> int:
    state = await state_of(client, transfer, bank.Transfer())
    assert isinstance(state, bank.Transfer)
    return int(state.status)


async def status(client: Client, name: str) -> pb.ReactionStatus:
    answer: pb.ReactionStatus = await client.reactions.GetReaction(pb.GetReactionRequest(name=name), timeout=10)
    return answer


async def caught_up(client: Client, name: str) -> pb.ReactionStatus:
    async def there() -> bool:
        now = await status(client, name)
        return now.running and now.position == now.log_head

    await eventually(there, what=f"{name} caught up")
    return await status(client, name)


async def reset(client: Client, name: str, position: int = 0, *, to_end: bool = False) -> pb.ResetReactionResponse:
    request = pb.ResetReactionRequest(name=name, position=position, to_end=to_end)
    answer: pb.ResetReactionResponse = await client.reactions.ResetReaction(request, timeout=10)
    return answer


async def test_a_transfer_the_reaction_started_past_is_carried_out_once_reset_before_it(site: Site) -> None:
    accounts = Accounts()
    # A server with reactions has served the store: the bank's reaction, new
    # on it later, starts at the log's end (start_from not said: "end").
    async with site.served(GATES):
        pass
    before = await accounts.open(site.store())
    head = await accounts.request_transfer(site.store())
    async with site.served(BANK) as (_, client):
        started = await caught_up(client, TRANSFERS)
        assert started.start_position == head
        assert await balances(client, accounts) == (100, 0)
        assert await transfer_status(client, accounts.transfer) == bank.TRANSFER_STATUS_PENDING

        moved = await reset(client, TRANSFERS, before)
        assert (moved.previous_position, moved.position, moved.log_head) == (head, before, head)

        async def carried_out() -> bool:
            return await transfer_status(client, accounts.transfer) == bank.TRANSFER_STATUS_COMPLETED

        await eventually(carried_out, what="the transfer carried out after the reset")
        assert await balances(client, accounts) == (70, 30)
        done = await caught_up(client, TRANSFERS)
        assert (done.accepted, done.replayed, done.parked) == (3, 0, 0)  # withdraw, deposit, complete

        # Back to the start: every command sent again under its id, answered
        # from its record; no money moves twice.
        assert (await reset(client, TRANSFERS, to_end=False)).position == 0
        await eventually(lambda: _replayed(client, 3), what="the transfer's three commands answered from their records")
        assert await balances(client, accounts) == (70, 30)
        again = await caught_up(client, TRANSFERS)
        assert (again.accepted, again.parked) == (3, 0)


async def _replayed(client: Client, count: int) -> bool:
    return (await status(client, TRANSFERS)).replayed == count


async def test_an_imported_pending_transfer_stays_history_after_a_reset(tmp_path: Path) -> None:
    """The walkthrough's import: a transfer requested, not carried out, in
    the store the export came from. The reaction sends nothing for imported
    events, whatever its checkpoint: reset to the start, it stays pending."""
    legacy = Legacy()
    async with running_server(SqliteStore(tmp_path / "chronicle.db"), settings=SETTINGS, registry=BANK) as (
        _,
        client,
    ):
        await imported(client, stream(*legacy.requested))
        await caught_up(client, TRANSFERS)
        assert (await reset(client, TRANSFERS, 0)).position == 0
        await caught_up(client, TRANSFERS)
        assert await transfer_status(client, legacy.transfer) == bank.TRANSFER_STATUS_PENDING
        assert (await status(client, TRANSFERS)).accepted == 0


@pytest.fixture
async def relay_server(tmp_path: Path) -> AsyncIterator[tuple[Application, Client]]:
    async with running_server(SqliteStore(tmp_path / "chronicle.db"), settings=SETTINGS, registry=GATES) as served:
        for gate in ("source", "gated"):
            await served[1].submit(command(gate, box.ArchiveBox()))  # open
        await served[1].submit(command("source", box.RenameBox(name="ann")))  # relayed to "gated"
        await caught_up(served[1], RELAY)
        yield served


@pytest.fixture
def relay(relay_server: tuple[Application, Client]) -> Client:
    return relay_server[1]


@pytest.mark.parametrize(
    ("request_", "code", "reason"),
    [
        (pb.ResetReactionRequest(name=RELAY, position=10**9), grpc.StatusCode.INVALID_ARGUMENT, "POSITION_BEYOND_HEAD"),
        (
            pb.ResetReactionRequest(name=RELAY, position=1, to_end=True),
            grpc.StatusCode.INVALID_ARGUMENT,
            "RESET_TARGET_AMBIGUOUS",
        ),
        (pb.ResetReactionRequest(name="no.such"), grpc.StatusCode.NOT_FOUND, "REACTION_NOT_FOUND"),
        (pb.ResetReactionRequest(name=""), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REACTION"),
    ],
    ids=["beyond-head", "position-and-end", "unknown", "no-name"],
)
async def test_bad_resets_are_refused_with_their_reason_and_audited(
    relay: Client, request_: pb.ResetReactionRequest, code: grpc.StatusCode, reason: str
) -> None:
    position = (await status(relay, RELAY)).position
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await relay.reactions.ResetReaction(request_, timeout=10)
    details = details_of(refused.value)
    assert (details.code, details.reason) == (code, reason)
    if reason == "POSITION_BEYOND_HEAD":
        assert details.metadata["log_head"] == str((await status(relay, RELAY)).log_head)
    assert (await status(relay, RELAY)).position == position
    audit = await relay.admin.QueryAudit(
        admin.QueryAuditRequest(command_type="chronicle.v1.ReactionService/ResetReaction")
    )
    assert [entry.reason for entry in audit.entries] == [reason]


async def test_a_reset_is_audited_with_where_it_moved_the_checkpoint(relay: Client) -> None:
    head = (await status(relay, RELAY)).log_head
    assert head > 0
    assert (await reset(relay, RELAY, to_end=True)).position == head
    await reset(relay, RELAY, 0)
    audit = await relay.admin.QueryAudit(admin.QueryAuditRequest(aggregate_id=f"reaction:{RELAY}"))
    resets = [e.message for e in audit.entries if e.command_type.endswith("/ResetReaction")]
    assert sorted(resets) == sorted(
        [
            f"checkpoint moved from {head} to {head} (log head {head})",
            f"checkpoint moved from {head} to 0 (log head {head})",
        ]
    )
    await caught_up(relay, RELAY)  # it went on from 0 to the head again


async def test_a_reset_needs_the_admin_grant(tmp_path: Path) -> None:
    plain = replace(SETTINGS, anonymous_admin=False)
    async with running_server(SqliteStore(tmp_path / "chronicle.db"), settings=plain, registry=GATES) as (_, client):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reset(client, RELAY, 0)
    assert details_of(refused.value).reason == "ANONYMOUS_ADMIN_DENIED"


async def test_the_cli_resets_a_reaction(relay_server: tuple[Application, Client]) -> None:
    app, relay = relay_server
    head = (await status(relay, RELAY)).log_head
    address = app.address
    done = await asyncio.to_thread(cli, "reaction", RELAY, "reset", "--to", "start", server=address)
    assert json.loads(done.stdout) == {"reaction": RELAY, "previous_position": head, "position": 0, "log_head": head}
    refused = await asyncio.to_thread(
        cli, "reaction", RELAY, "reset", "--to", str(head + 1000), server=address, check=False
    )
    assert refused.returncode == 1 and "POSITION_BEYOND_HEAD" in refused.stderr
    usage = await asyncio.to_thread(cli, "reaction", RELAY, "reset", server=address, check=False)
    assert usage.returncode == 2 and "reset --to POSITION|start|end" in usage.stderr


@pytest.mark.postgres
async def test_the_replica_that_does_not_run_the_reaction_refuses_to_reset_it(postgres_url: str) -> None:
    async with (
        replica(postgres_url, registry=GATES, anonymous_admin=True) as (a, to_a),
        replica(postgres_url, registry=GATES, anonymous_admin=True) as (b, to_b),
    ):

        def one_runs() -> bool:
            return sum(app.reactions.runners[RELAY].holds_lease for app in (a, b)) == 1

        await eventually(one_runs, what="one replica running the relay")
        runner, other = (to_a, to_b) if a.reactions.runners[RELAY].holds_lease else (to_b, to_a)
        position = (await status(runner, RELAY)).position
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reset(other, RELAY, to_end=True)
        details = details_of(refused.value)
        assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "REACTION_RUNS_ELSEWHERE")
        assert (await status(runner, RELAY)).position == position


DAY = 24 * 3600


async def test_a_reset_back_past_the_command_retention_is_refused_unless_asked_for(tmp_path: Path) -> None:
    """Records of commands decided before the retention window may be
    pruned: handed their events again, the reaction would carry them out
    again. An account opened two days ago, a server keeping command
    records for one day: a reset to before it is refused, and moves
    nothing; asked for knowingly, it is done; a reset after it is not
    refused."""
    path = tmp_path / "chronicle.db"
    store = SqliteStore(path)
    await store.open()
    try:
        await store.append("old", [_new("Account", bank.AccountOpened(owner="old"), age_us=2 * DAY * 10**6)], 0)
        await store.append("new", [_new("Account", bank.AccountOpened(owner="new"))], 0)
    finally:
        await store.close()
    keeping = replace(SETTINGS, command_retention=float(DAY))
    async with running_server(SqliteStore(path), settings=keeping, registry=BANK) as (_, client):
        head = (await caught_up(client, TRANSFERS)).position
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reset(client, TRANSFERS, 0)
        details = details_of(refused.value)
        assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "COMMAND_RECORDS_PRUNED")
        assert details.metadata["retention"] == f"{DAY}s"
        assert (await status(client, TRANSFERS)).position == head

        assert (await reset(client, TRANSFERS, 1)).position == 1  # after the old event: only new ones again
        forced = pb.ResetReactionRequest(name=TRANSFERS, position=0, even_if_records_pruned=True)
        assert (await client.reactions.ResetReaction(forced, timeout=10)).position == 0
        await caught_up(client, TRANSFERS)
