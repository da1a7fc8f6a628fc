"""The Python client (``service.client``) against a real server over a real
socket: typed results, typed errors, and retries that never append twice."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import event_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2
from service.api.status import RETRY_AFTER_SECONDS
from service.client import (
    NO_RETRIES,
    ChronicleClient,
    Command,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
)
from service.errors import StoreUnavailable
from service.store.base import StoreAdapter
from service.store.memory import MemoryStore
from service.store.records import ClaimChange, CommandRecord, NewEvent, RecordedEvent
from tests.support.broken_calls import BreakFirstStream, LoseFirstAnswers, WithoutPagedReads
from tests.support.grpc_client import TEST_SETTINGS, running_server
from tests.support.processes import free_port
from tests.support.security import POLICY, Authority, api_key_file, write

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
TELLER_KEY = "chr_teller-test-key-0123456789abcdef0123456789"


class CommitsThenFails:
    """A store whose first append commits and then reports the connection
    lost: the server answers UNAVAILABLE (with RetryInfo) for a command that
    was in fact executed."""

    def __init__(self, inner: StoreAdapter) -> None:
        self.inner = inner
        self.failures_left = 1

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def append(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        commands: Sequence[CommandRecord] = (),
        claims: Sequence[ClaimChange] = (),
    ) -> list[RecordedEvent]:
        recorded = await self.inner.append(aggregate_id, events, expected_version, commands=commands, claims=claims)
        if events and self.failures_left:
            self.failures_left -= 1
            raise StoreUnavailable("connection to the store lost after commit (simulated)")
        return recorded


@pytest.fixture
async def address() -> AsyncIterator[str]:
    async with running_server(MemoryStore()) as (app, _):
        yield app.address


@pytest.fixture
async def client(address: str) -> AsyncIterator[ChronicleClient]:
    async with ChronicleClient.connect(address, origin="tests", user_id="tester", retry=FAST) as connected:
        yield connected


# -- typed results -------------------------------------------------------


async def test_submit_returns_the_events_decoded_and_its_new_command_id(client: ChronicleClient) -> None:
    opened = await client.submit("acc-1", bank.OpenAccount(owner="ann"))
    deposited = await client.submit("acc-1", bank.Deposit(amount=40), metadata={"channel": "web"})
    assert uuid.UUID(opened.command_id).version == 4
    assert opened.command_id != deposited.command_id
    assert (opened.version, opened.replayed) == (1, False)
    assert [e.payload for e in opened.events] == [bank.AccountOpened(owner="ann")]
    (event,) = deposited.events
    assert (event.event_type, event.version, event.aggregate_id) == ("bank.v1.MoneyDeposited", 2, "acc-1")
    assert event.payload_as(bank.MoneyDeposited).amount == 40
    assert (event.envelope.command_id, event.envelope.origin) == (deposited.command_id, "tests")
    assert dict(event.envelope.metadata) == {"channel": "web"}


async def test_payload_as_refuses_another_message_type(client: ChronicleClient) -> None:
    opened = await client.submit("acc-1", bank.OpenAccount(owner="ann"))
    with pytest.raises(TypeError, match=r"bank\.v1\.AccountOpened"):
        opened.events[0].payload_as(bank.MoneyDeposited)


async def test_read_yields_the_events_in_order_with_filters(client: ChronicleClient) -> None:
    await client.submit("acc-1", bank.OpenAccount(owner="ann"))
    for amount in (1, 2, 3):
        await client.submit("acc-1", bank.Deposit(amount=amount))
    everything = await client.read_all("acc-1")
    assert [e.version for e in everything] == [1, 2, 3, 4]
    deposits = await client.read_all("acc-1", from_version=3, event_types=["bank.v1.MoneyDeposited"])
    assert [e.payload_as(bank.MoneyDeposited).amount for e in deposits] == [2, 3]


async def test_get_aggregate_returns_the_state_as_the_given_type(client: ChronicleClient) -> None:
    await client.submit("acc-1", bank.OpenAccount(owner="ann"))
    await client.submit("acc-1", bank.Deposit(amount=30))
    account = await client.get_aggregate("acc-1", bank.Account)
    assert (account.aggregate_type, account.version) == ("Account", 2)
    assert (account.state.owner, account.state.balance) == ("ann", 30)
    with pytest.raises(TypeError):
        await client.get_aggregate("acc-1", box_pb2.Box)


# -- typed errors --------------------------------------------------------


async def test_a_refusal_is_a_typed_error_with_the_reason_and_metadata(client: ChronicleClient) -> None:
    await client.submit("acc-1", bank.OpenAccount(owner="ann"))
    with pytest.raises(FailedPrecondition) as refused:
        await client.submit("acc-1", bank.Withdraw(amount=5))
    error = refused.value
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    assert error.metadata == {"balance": "0", "amount": "5"}
    assert error.retry_delay is None


async def test_invalid_input_names_the_field(client: ChronicleClient) -> None:
    await client.submit("acc-1", bank.OpenAccount(owner="ann"))
    with pytest.raises(InvalidArgument) as refused:
        await client.submit("acc-1", bank.Deposit(amount=-1))
    assert refused.value.reason == "INVALID_AMOUNT"
    assert [v.field for v in refused.value.field_violations] == ["command.payload.amount"]


async def test_a_refusal_naming_several_fields_lists_each_and_is_replayed_alike(client: ChronicleClient) -> None:
    malformed = bank.TransferMoney(target_account_id="acc-2", amount=-5)
    refusals = []
    for _ in range(2):  # the second time, the same command id: the recorded refusal
        with pytest.raises(InvalidArgument) as refused:
            await client.submit("t-1", malformed, command_id="5b0b6a1e-0000-4000-8000-000000000001")
        refusals.append(refused.value)
    for error in refusals:
        assert error.reason == "INVALID_TRANSFER"
        assert [(v.field, v.description) for v in error.field_violations] == [
            ("command.payload.source_account_id", "must name the account to debit"),
            ("command.payload.amount", "must be positive, got -5"),
        ]


async def test_a_wrong_expected_version_says_the_current_one(client: ChronicleClient) -> None:
    await client.submit("acc-1", bank.OpenAccount(owner="ann"), expected_version=0)
    with pytest.raises(FailedPrecondition) as refused:
        await client.submit("acc-1", bank.Deposit(amount=1), expected_version=5)
    assert refused.value.reason == "WRONG_EXPECTED_VERSION"
    assert refused.value.metadata["current_version"] == "1"


async def test_get_of_an_unknown_aggregate_is_not_found(client: ChronicleClient) -> None:
    with pytest.raises(NotFound) as missing:
        await client.get_aggregate("nobody", bank.Account)
    assert missing.value.reason == "AGGREGATE_NOT_FOUND"


async def test_a_refusal_is_not_retried(address: str) -> None:
    counter = LoseFirstAnswers(count=0)
    channel = grpc.aio.insecure_channel(address, interceptors=[counter])
    async with ChronicleClient(channel, retry=FAST, owns_channel=True) as client:
        await client.submit("acc-1", bank.OpenAccount(owner="ann"))
        with pytest.raises(FailedPrecondition):
            await client.submit("acc-1", bank.Withdraw(amount=5))
    assert len(counter.requests) == 2


# -- retries are safe ----------------------------------------------------


@pytest.mark.usefixtures("store")
async def test_a_lost_answer_is_retried_with_the_same_id_and_appends_once(store: StoreAdapter) -> None:
    losing = LoseFirstAnswers(count=1)
    async with running_server(store) as (app, _):
        channel = grpc.aio.insecure_channel(app.address, interceptors=[losing])
        async with ChronicleClient(channel, retry=FAST, owns_channel=True) as client:
            opened = await client.submit("acc-1", bank.OpenAccount(owner="ann"))
            history = await client.read_all("acc-1")
    first, second = losing.requests
    assert first.command.command_id == second.command.command_id == opened.command_id
    assert opened.replayed  # the second attempt found the first one's result
    assert [e.payload for e in opened.events] == [bank.AccountOpened(owner="ann")]
    assert [(e.version, e.envelope.command_id) for e in history] == [(1, opened.command_id)]


async def test_an_unavailable_store_after_commit_is_retried_after_the_servers_delay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = CommitsThenFails(MemoryStore())
    with caplog.at_level(logging.INFO, logger="service.client.retry"):
        async with (
            running_server(store) as (app, _),  # type: ignore[arg-type]
            ChronicleClient.connect(app.address, retry=FAST) as client,
        ):
            opened = await client.submit("acc-1", bank.OpenAccount(owner="ann"))  # answered UNAVAILABLE, retried
            deposited = await client.submit("acc-1", bank.Deposit(amount=7))
            history = await client.read_all("acc-1")
    assert opened.replayed
    assert [e.version for e in history] == [1, 2]
    assert deposited.version == 2 and not deposited.replayed
    (retry,) = [r for r in caplog.records if r.name == "service.client.retry"]
    waited = float(retry.args[-1])  # type: ignore[index, arg-type]
    assert waited >= RETRY_AFTER_SECONDS[grpc.StatusCode.UNAVAILABLE] > FAST.max_backoff * (1 + FAST.jitter)


async def test_retries_are_bounded(address: str) -> None:
    nothing_there = f"127.0.0.1:{free_port()}"
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.01)
    async with ChronicleClient.connect(nothing_there, retry=policy, attempt_timeout=2) as client:
        with pytest.raises(Unavailable) as failed:
            await client.submit("acc-1", bank.OpenAccount(owner="ann"))
    assert failed.value.reason == "UNAVAILABLE"  # no ErrorInfo: the server never answered


async def test_no_retries_gives_up_on_the_first_lost_answer(address: str) -> None:
    losing = LoseFirstAnswers(count=1)
    channel = grpc.aio.insecure_channel(address, interceptors=[losing])
    async with ChronicleClient(channel, retry=NO_RETRIES, owns_channel=True) as client:
        with pytest.raises(Unavailable):
            await client.submit("acc-1", bank.OpenAccount(owner="ann"))
        # ... although the command did run: its events are there
        assert [e.version for e in await client.read_all("acc-1")] == [1]


async def test_a_broken_read_resumes_after_the_last_event_received(address: str) -> None:
    # 601 events: the server reads them in two pages (its store reads 500
    # at a time); the first stream breaks after the first 500 events.
    async with ChronicleClient.connect(address) as writer:
        await writer.submit("acc-1", bank.OpenAccount(owner="ann"))
        for first in range(0, 600, 100):
            await writer.submit_batch([Command("acc-1", bank.Deposit(amount=1)) for _ in range(first, first + 100)])
    breaking = BreakFirstStream(after=500)
    channel = grpc.aio.insecure_channel(address, interceptors=[breaking])
    async with ChronicleClient(channel, retry=FAST, owns_channel=True) as client:
        versions = [e.version for e in await client.read_all("acc-1")]
    assert versions == list(range(1, 602))
    assert [r.from_version for r in breaking.requests] == [1, 500]  # at the last version, its event skipped
    assert isinstance(breaking.requests[0], event_service_pb2.ReadAggregateRequest)


async def test_a_server_without_paged_reads_is_read_one_event_at_a_time(address: str) -> None:
    async with ChronicleClient.connect(address) as writer:
        await writer.submit("acc-1", bank.OpenAccount(owner="ann"))
        for amount in range(1, 5):
            await writer.submit("acc-1", bank.Deposit(amount=amount))
    older = WithoutPagedReads()
    breaking = BreakFirstStream(after=2, method="ReadAggregate")
    channel = grpc.aio.insecure_channel(address, interceptors=[older, breaking])
    async with ChronicleClient(channel, retry=FAST, owns_channel=True) as client:
        assert [e.version for e in await client.read_all("acc-1")] == [1, 2, 3, 4, 5]
        assert [e.version for e in await client.read_all("acc-1", from_version=4)] == [4, 5]
    # asked for pages once, then read event by event (and resumed after the
    # second event of the broken stream, at its version, that event skipped)
    assert older.methods == ["ReadAggregatePages", "ReadAggregate", "ReadAggregate", "ReadAggregate"]
    assert [r.from_version for r in breaking.requests] == [1, 2, 4]


# -- credentials ---------------------------------------------------------


async def test_a_token_authenticates_every_call_over_tls(tmp_path: Path) -> None:
    ca = Authority()
    server = ca.issue("localhost", server=True)
    settings = replace(
        TEST_SETTINGS,
        listen="localhost:0",
        auth=True,
        policy_file=write(tmp_path / "policy.toml", POLICY),
        api_keys_file=api_key_file(tmp_path / "keys.toml", [(TELLER_KEY, "alice", [])]),
        tls_cert_file=write(tmp_path / "server.pem", server.certificate),
        tls_key_file=write(tmp_path / "server.key", server.key),
    )
    trust = grpc.ssl_channel_credentials(root_certificates=ca.certificate)
    async with running_server(MemoryStore(), settings=settings) as (app, _):
        async with ChronicleClient.connect(app.address, credentials=trust, token=TELLER_KEY) as teller:
            opened = await teller.submit("acc-1", bank.OpenAccount(owner="ann"))
            history = await teller.read_all("acc-1")
            account = await teller.get_aggregate("acc-1", bank.Account)
        async with ChronicleClient.connect(app.address, credentials=trust, retry=FAST) as anonymous:
            with pytest.raises(Unauthenticated) as refused:
                await anonymous.submit("acc-1", bank.Deposit(amount=1))
    assert (opened.version, len(history), account.state.owner) == (1, 1, "ann")
    assert refused.value.reason == "NO_CREDENTIALS"
