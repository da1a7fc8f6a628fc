"""docs/reliability.md, claim by claim, where no other test asserted the
claim: over real sockets, against in-process servers and server processes,
on PostgreSQL where the claim is about it.

- the invariant checker also catches a gap in an aggregate's versions, a
  snapshot that is not the replayed state at its version, a refusal recorded
  with another reason than its client got, and an acknowledged command
  recorded as refused (and accepts a true snapshot);
- a server killed with SIGKILL under a command: its client sees
  ``UNAVAILABLE``, and the command, sent again with its id to the restarted
  server, is stored once;
- once PostgreSQL is back after a restart and health says SERVING, the first
  read and the first write go through, without a retry (no dead pooled
  connection is handed out);
- bytes that do not parse are refused after the limits and authentication:
  a caller without credentials is UNAUTHENTICATED, one over a limit
  RESOURCE_EXHAUSTED, and only then INVALID_ARGUMENT / MALFORMED_REQUEST;
- ``QueryAudit``: a ``since``/``until`` outside what a timestamp holds is
  INVALID_TIMESTAMP, its filter values are checked (INVALID_FILTER; an
  aggregate id INVALID_AGGREGATE_ID);
- versions above 2^63-1 on SQLite are INVALID_VERSION;
- the bank refuses a deposit beyond a balance of 10^15 (BALANCE_LIMIT), and
  the account and its read model go on;
- when a server's stop returns, none of its background tasks is left running.

Where a test waits, it waits for an outcome (``eventually``); the bounds
only make a broken build fail rather than hang."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import command_service_pb2 as cs
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import event_service_pb2_grpc as ev_grpc
from chronicle.v1 import projection_service_pb2 as pj
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import start
from service.plugins.registry import Registry
from service.store.memory import MemoryStore
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore
from tests.support.faults import appends_blocked, wait_for_waiters
from tests.support.grpc_client import (
    TEST_SETTINGS,
    Client,
    command,
    connect,
    details_of,
    running_server,
    submit_retrying,
)
from tests.support.history import History, Operation, check_invariants
from tests.support.load import health_becomes
from tests.support.postgres import Cluster
from tests.support.processes import replica
from tests.support.security import POLICY, api_key_file, write
from tests.support.waiting import eventually

REGISTRY = Registry([bank_account.plugin])
SUBMIT = "/chronicle.v1.CommandService/Submit"
SUBSCRIBE = "/chronicle.v1.EventService/Subscribe"


async def refused(call: object) -> tuple[grpc.StatusCode, str, list[str]]:
    """The status, ErrorInfo reason and BadRequest fields of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    details = details_of(raised.value)
    return details.code, details.reason, details.field_violations


async def sent(client: Client, history: History, aggregate_id: str, message: bank.Deposit | bank.Withdraw) -> None:
    """One command, recorded with what its client saw (an answer, or a refusal)."""
    op = history.begin(aggregate_id, message)
    try:
        history.ok(op, await client.submit(command(aggregate_id, message, command_id=op.command_id)))
    except grpc.aio.AioRpcError as error:
        history.refused(op, details_of(error).reason)


def request_of(op: Operation) -> cs.SubmitRequest:
    return cs.SubmitRequest(command=command(op.aggregate_id, op.message, command_id=op.command_id))


# -- the invariant checker ---------------------------------------------------------


@dataclass
class Recorded:
    history: History
    url: str

    def tamper(self, sql: str, *params: object) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql, params)

    def check(self) -> None:
        check_invariants(self.history, self.url, REGISTRY)

    def the_refusal(self) -> Operation:
        (op,) = [op for op in self.history.operations.values() if op.outcome == "refused"]
        return op


@pytest.fixture
async def recorded(postgres_url: str) -> Recorded:
    """acc-1: opened, +100, a refused -500 (recorded), -30, +5."""
    history = History()
    async with running_server(PostgresStore(postgres_url, pool_size=2)) as (_, client):
        opened = history.begin("acc-1", bank.OpenAccount(owner="ann"))
        history.ok(opened, await client.submit(command("acc-1", opened.message, command_id=opened.command_id)))
        for message in (
            bank.Deposit(amount=100),
            bank.Withdraw(amount=500),
            bank.Withdraw(amount=30),
            bank.Deposit(amount=5),
        ):
            await sent(client, history, "acc-1", message)
    check_invariants(history, postgres_url, REGISTRY)  # faithful so far
    return Recorded(history, postgres_url)


@pytest.mark.postgres
async def test_the_checker_catches_a_gap_in_an_aggregate_s_versions(recorded: Recorded) -> None:
    """ "every aggregate's versions are 1..N, in position order, with no gap":
    the same events, the same commands, versions 1, 2, 3, 5."""
    recorded.tamper("UPDATE chronicle.events SET version = 5 WHERE version = 4")
    with pytest.raises(AssertionError, match=r"not 1\.\.N"):
        recorded.check()


@pytest.mark.postgres
async def test_the_checker_compares_every_snapshot_with_the_replayed_state(recorded: Recorded) -> None:
    true = bank.Account(owner="ann", balance=100).SerializeToString()
    columns = "aggregate_id, aggregate_type, version, state_type, schema_version, state"
    insert = f"INSERT INTO chronicle.snapshots ({columns}) VALUES ('acc-1', 'Account', 2, 'bank.v1.Account', 1, %s)"
    recorded.tamper(insert, true)
    recorded.check()  # the state at version 2: open, +100
    recorded.tamper(
        "UPDATE chronicle.snapshots SET state = %s WHERE aggregate_id = 'acc-1' AND version = 2",
        bank.Account(owner="ann", balance=1000).SerializeToString(),
    )
    with pytest.raises(AssertionError, match="snapshot at v2"):
        recorded.check()


@pytest.mark.postgres
async def test_the_checker_catches_a_refusal_recorded_with_another_reason(recorded: Recorded) -> None:
    refusal = recorded.the_refusal()
    assert refusal.reason == "INSUFFICIENT_FUNDS"
    recorded.tamper(
        "UPDATE chronicle.commands SET rejection = jsonb_set(rejection, '{reason}', '\"ACCOUNT_CLOSED\"')"
        " WHERE command_id = %s",
        refusal.command_id,
    )
    with pytest.raises(AssertionError, match="is recorded as"):
        recorded.check()


@pytest.mark.postgres
async def test_the_checker_catches_an_acknowledged_command_recorded_as_refused(recorded: Recorded) -> None:
    (last,) = [op for op in recorded.history.acknowledged if op.message == bank.Deposit(amount=5)]
    recorded.tamper(
        "UPDATE chronicle.commands SET rejection = (SELECT rejection FROM chronicle.commands"
        " WHERE rejection IS NOT NULL) WHERE command_id = %s",
        last.command_id,
    )
    with pytest.raises(AssertionError, match="not recorded as accepted"):
        recorded.check()


# -- faults ----------------------------------------------------------------------------


@pytest.mark.postgres
async def test_a_server_killed_under_a_command_is_unavailable_to_its_client_and_the_retry_is_stored_once(
    postgres_url: str, tmp_path: Path
) -> None:
    """ "SIGKILL a server under load, restart it on the same port: clients
    saw the kill (UNAVAILABLE)", and what was in flight is stored once."""
    history = History()
    with replica(postgres_url, log_path=tmp_path / "server.log") as server:
        async with connect(server.address) as client:
            opened = history.begin("acc-1", bank.OpenAccount(owner="ann"))
            history.ok(opened, await client.submit(command("acc-1", opened.message, command_id=opened.command_id)))
            deposit = history.begin("acc-1", bank.Deposit(amount=7))
            with appends_blocked(postgres_url):
                call = client.commands.Submit(request_of(deposit), timeout=30)
                await asyncio.to_thread(wait_for_waiters, postgres_url)  # inside its append, waiting
                assert server.stop(signal.SIGKILL) == -signal.SIGKILL
                with pytest.raises(grpc.aio.AioRpcError) as lost:
                    await call
                assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
                history.unknown(deposit, lost.value)
            server.start()  # same port: the client's channel reconnects to it
            retried = await submit_retrying(client, command("acc-1", deposit.message, command_id=deposit.command_id))
            history.ok(deposit, retried)
            again = await client.submit(command("acc-1", deposit.message, command_id=deposit.command_id))
            assert again.replayed
            history.ok(deposit, again)
    states = check_invariants(history, postgres_url, REGISTRY)
    assert states["acc-1"].balance == 7  # type: ignore[attr-defined]


@pytest.mark.postgres
async def test_once_postgres_is_back_and_health_says_serving_the_first_read_and_write_go_through(
    private_cluster: Cluster,
) -> None:
    """ "Dead pooled connections after a database restart": the connections
    open before the restart are dead; none of them is handed out once
    health says SERVING again. Each round's read and write are sent once."""
    url = private_cluster.create_database()
    settings = replace(TEST_SETTINGS, database_url=url, health_interval=0.1)
    async with running_server(PostgresStore(url, pool_size=4), settings=settings) as (app, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        for round_ in range(1, 3):
            await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acc-1"), timeout=10)
            await asyncio.to_thread(private_cluster.stop, "immediate")
            await health_becomes(app.address, "NOT_SERVING", within=20)
            await asyncio.to_thread(private_cluster.start)
            await health_becomes(app.address, "SERVING", within=20)
            read = await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acc-1"), timeout=10)
            assert read.version == round_
            written = await client.submit(command("acc-1", bank.Deposit(amount=1)))
            assert written.version == round_ + 1


# -- bad input ---------------------------------------------------------------------------

GARBAGE = b"\x0a\xff"  # field 1, length-delimited, its length cut short


def test_the_garbage_does_not_parse() -> None:
    for message in (cs.SubmitRequest, ev.SubscribeRequest):
        with pytest.raises(DecodeError):
            message.FromString(GARBAGE)


ALICE = "chr_reliability-alice-key-0123456789abcdef"


async def raw_refusal(
    channel: grpc.aio.Channel, path: str, *, key: str | None = None, stream: bool = False
) -> tuple[grpc.StatusCode, str]:
    """What ``path`` answers to ``GARBAGE``, with ``key`` as a bearer API key."""
    metadata = (("authorization", f"Bearer {key}"),) if key else ()

    async def garbage() -> object:
        if stream:
            call = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
            return await call(GARBAGE, metadata=metadata, timeout=10).read()
        send = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        return await send(GARBAGE, metadata=metadata, timeout=10)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await garbage()
    details = details_of(raised.value)
    return details.code, details.reason


async def test_bytes_that_do_not_parse_are_refused_after_the_limits_and_authentication(tmp_path: Path) -> None:
    """ "checked by the gate after the limits and authentication": a caller
    without credentials learns nothing from sending garbage."""
    async with running_server(
        MemoryStore(),
        auth=True,
        policy_file=write(tmp_path / "policy.toml", POLICY),
        api_keys_file=api_key_file(tmp_path / "keys.toml", [(ALICE, "alice", [])]),
        max_subscriptions=1,
    ) as (app, client):
        channel = client.channel
        assert await raw_refusal(channel, SUBMIT) == (grpc.StatusCode.UNAUTHENTICATED, "NO_CREDENTIALS")
        assert await raw_refusal(channel, SUBMIT, key=ALICE) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
        assert await raw_refusal(channel, SUBSCRIBE, key=ALICE, stream=True) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "MALFORMED_REQUEST",
        )
        # The one subscription the server takes, held open: garbage to
        # Subscribe now meets the limit first.
        held = ev_grpc.EventServiceStub(channel).Subscribe(
            ev.SubscribeRequest(), metadata=(("authorization", f"Bearer {ALICE}"),)
        )
        try:
            gate = app.gate
            assert gate is not None
            await eventually(lambda: gate.subscriptions == 1, what="the subscription counted")
            assert await raw_refusal(channel, SUBSCRIBE, stream=True) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "TOO_MANY_SUBSCRIPTIONS",
            )
        finally:
            held.cancel()


def moment(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


async def test_query_audit_checks_its_times_and_filter_values() -> None:
    """ "QueryAudit with a since/until outside what a timestamp holds" is
    INVALID_TIMESTAMP; its filter values are checked."""
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    async with running_server(MemoryStore(), anonymous_admin=True) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        for request, expected in [
            (admin.QueryAuditRequest(since=moment(2**62)), (invalid, "INVALID_TIMESTAMP", ["since"])),
            (admin.QueryAuditRequest(since=moment(0, -1)), (invalid, "INVALID_TIMESTAMP", ["since"])),
            (admin.QueryAuditRequest(until=moment(-(2**62))), (invalid, "INVALID_TIMESTAMP", ["until"])),
            (admin.QueryAuditRequest(until=moment(253_402_300_800)), (invalid, "INVALID_TIMESTAMP", ["until"])),
            (admin.QueryAuditRequest(principal="a\x00b"), (invalid, "INVALID_FILTER", ["principal"])),
            (admin.QueryAuditRequest(principal="p" * 201), (invalid, "INVALID_FILTER", ["principal"])),
            (admin.QueryAuditRequest(command_id="a\nb"), (invalid, "INVALID_FILTER", ["command_id"])),
            (admin.QueryAuditRequest(aggregate_id="a" * 201), (invalid, "INVALID_AGGREGATE_ID", ["aggregate_id"])),
        ]:
            assert await refused(client.admin.QueryAudit(request, timeout=10)) == expected, request
        # The widest times a timestamp holds are a query like any other.
        widest = admin.QueryAuditRequest(since=moment(-62_135_596_800), until=moment(253_402_300_799, 999_999_999))
        assert len((await client.admin.QueryAudit(widest, timeout=10)).entries) == 1


@pytest.mark.parametrize("version", [2**63, 2**64 - 1])
async def test_versions_beyond_a_signed_64_bit_integer_are_invalid_on_sqlite(tmp_path: Path, version: int) -> None:
    invalid = (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_VERSION")
    async with running_server(SqliteStore(tmp_path / "events.db")) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        read = client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id="acc-1", from_version=version))
        assert (await refused(read.read()))[:2] == invalid
        at = client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acc-1", at_version=version), timeout=10)
        assert (await refused(at))[:2] == invalid


async def test_a_deposit_beyond_a_balance_of_10_to_the_15_is_refused_and_the_account_goes_on() -> None:
    """ "Deposits beyond a balance of 10^15 are now refused (BALANCE_LIMIT)":
    up to the limit is accepted, a unit more is not, and the account and the
    balances-by-owner read model go on."""
    async with running_server(MemoryStore()) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await client.submit(command("acc-1", bank.Deposit(amount=10**15 - 1)))
        await client.submit(command("acc-1", bank.Deposit(amount=1)))  # exactly 10^15
        code, reason, _ = await refused(client.submit(command("acc-1", bank.Deposit(amount=1))))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BALANCE_LIMIT")
        await client.submit(command("acc-1", bank.Withdraw(amount=10)))
        last = await client.submit(command("acc-1", bank.Deposit(amount=3)))
        document = await client.projections.GetDocument(
            pj.GetDocumentRequest(
                projection="bank.balances_by_owner", key="owner:ann", min_position=last.events[-1].position
            ),
            timeout=20,
        )
        balance = bank.OwnerBalance()
        assert document.document.Unpack(balance)
        assert balance.balance == 10**15 - 7


# -- stopping -------------------------------------------------------------------------------


async def test_when_a_server_s_stop_returns_none_of_its_background_tasks_is_left_running() -> None:
    """ "every background task now ends through service.tasks.cancel_and_wait":
    the store monitor, the runners, the lease heartbeat, the pruner, the
    idle sweep, the console's load sampler, the metrics' samplers."""
    before = asyncio.all_tasks()
    settings = replace(
        TEST_SETTINGS,
        console_listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        command_retention=3600.0,
        idle_timeout=0.2,
    )
    app = await start(settings, store=MemoryStore())
    stopped = False
    try:
        async with connect(app.address) as client:
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))  # an aggregate's worker, the sweep
        running = {task.get_name() for task in asyncio.all_tasks() - before}
        assert {"store-monitor", "aggregate-sweeper", "chronicle-retention", "lease-heartbeats"} <= running, running
        await app.stop(grace=1.0, drain=0.0)
        stopped = True
        # Named: the server's own (its calls' helpers are gRPC's "Task-n").
        left = {task.get_name() for task in asyncio.all_tasks() - before if not task.get_name().startswith("Task-")}
        assert left == set(), left
    finally:
        if not stopped:
            await app.stop(grace=1.0, drain=0.0)
