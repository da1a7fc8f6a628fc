"""The Python client's dry runs, batches and command streams against a real
server over a real socket: typed results, typed errors, and a broken stream
resumed without running a command twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import start
from service.client import (
    ChronicleClient,
    Command,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    RetryPolicy,
    StreamResult,
    Unavailable,
    streaming,
)
from service.store.base import StoreAdapter
from service.store.memory import MemoryStore
from tests.support.broken_calls import BreakFirstCommandStream, WithoutStreamPages, WritesAfterTheEnd
from tests.support.contents import at_rest, audited_dry_runs_only
from tests.support.grpc_client import TEST_SETTINGS, running_server
from tests.support.processes import free_port, server_process

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture
async def address(store: StoreAdapter) -> AsyncIterator[str]:
    async with running_server(store) as (app, _):
        yield app.address


@pytest.fixture
async def client(address: str) -> AsyncIterator[ChronicleClient]:
    async with ChronicleClient.connect(address, origin="tests", retry=FAST) as connected:
        yield connected


async def collect(results: AsyncIterator[StreamResult]) -> list[StreamResult]:
    async with asyncio.timeout(60):  # a broken build fails instead of hanging
        return [result async for result in results]


# -- dry runs ------------------------------------------------------------------


async def test_a_dry_run_says_what_would_be_appended_and_writes_nothing_but_its_audit_entry(
    client: ChronicleClient, store: StoreAdapter
) -> None:
    await client.submit("acc-1", bank.OpenAccount(owner="ann"))
    before = await at_rest(store)
    deposit = Command("acc-1", bank.Deposit(amount=5))
    preview = await client.submit("acc-1", deposit.message, command_id=deposit.command_id, dry_run=True)
    assert (preview.dry_run, preview.version, preview.replayed) == (True, 2, False)
    assert [(e.version, e.position, e.payload) for e in preview.events] == [(2, 0, bank.MoneyDeposited(amount=5))]
    await audited_dry_runs_only(store, before, "accepted")
    done = await client.submit("acc-1", deposit.message, command_id=deposit.command_id)  # the id is still free
    assert (done.dry_run, done.replayed, done.version) == (False, False, 2)


async def test_a_dry_run_is_refused_as_the_command_would_be(client: ChronicleClient) -> None:
    await client.submit("acc-1", bank.OpenAccount(owner="ann"))
    with pytest.raises(FailedPrecondition) as refused:
        await client.submit("acc-1", bank.Withdraw(amount=5), dry_run=True)
    assert refused.value.reason == "INSUFFICIENT_FUNDS"


# -- batches -------------------------------------------------------------------


async def test_a_batch_appends_every_command_and_returns_one_result_each(client: ChronicleClient) -> None:
    commands = [Command("acc-1", bank.OpenAccount(owner="ann")), Command("acc-1", bank.Deposit(amount=30))]
    batch = await client.submit_batch(commands)
    assert (batch.version, batch.replayed, batch.dry_run) == (2, False, False)
    assert [(r.command_id, r.version) for r in batch.results] == [
        (commands[0].command_id, 1),
        (commands[1].command_id, 2),
    ]
    assert [e.payload for r in batch.results for e in r.events] == [
        bank.AccountOpened(owner="ann"),
        bank.MoneyDeposited(amount=30),
    ]
    again = await client.submit_batch(commands)  # a retry, with the same command ids
    assert again.replayed and all(r.replayed for r in again.results)
    assert [e.version for e in await client.read_all("acc-1")] == [1, 2]


async def test_a_refused_command_refuses_the_batch_and_is_named(client: ChronicleClient) -> None:
    commands = [
        Command("acc-1", bank.OpenAccount(owner="ann")),
        Command("acc-1", bank.Deposit(amount=3)),
        Command("acc-1", bank.Withdraw(amount=5)),
    ]
    with pytest.raises(FailedPrecondition) as refused:
        await client.submit_batch(commands)
    assert refused.value.reason == "INSUFFICIENT_FUNDS"
    assert (refused.value.metadata["batch_index"], refused.value.metadata["command_id"]) == (
        "2",
        commands[2].command_id,
    )
    assert await client.read_all("acc-1") == []


async def test_a_batch_for_two_aggregates_is_invalid(client: ChronicleClient) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await client.submit_batch(
            [Command("acc-1", bank.OpenAccount(owner="ann")), Command("acc-2", bank.OpenAccount(owner="bob"))]
        )
    assert refused.value.reason == "MIXED_AGGREGATES"
    assert [v.field for v in refused.value.field_violations] == ["commands[1].aggregate_id"]


async def test_a_dry_run_batch_writes_nothing_but_its_audit_entry(client: ChronicleClient, store: StoreAdapter) -> None:
    before = await at_rest(store)
    batch = await client.submit_batch(
        [Command("acc-1", bank.OpenAccount(owner="ann"), expected_version=0), Command("acc-1", bank.Deposit(amount=1))],
        dry_run=True,
    )
    assert (batch.dry_run, batch.version) == (True, 2)
    assert all(r.dry_run for r in batch.results)
    await audited_dry_runs_only(store, before, "accepted", "accepted")


# -- streams -------------------------------------------------------------------


async def test_a_stream_answers_every_command_in_order_with_its_id(client: ChronicleClient) -> None:
    commands = [Command(f"acc-{i}", bank.OpenAccount(owner="ann")) for i in range(10)]
    commands += [Command(f"acc-{i % 10}", bank.Deposit(amount=i + 1)) for i in range(100)]
    results = await collect(client.submit_stream(commands))
    assert [r.command_id for r in results] == [c.command_id for c in commands]
    assert [r.command for r in results] == commands
    assert all(r.error is None for r in results)
    for i in range(10):
        versions = [r.result().version for r in results if r.command.aggregate_id == f"acc-{i}"]
        assert versions == list(range(1, 12))  # one aggregate's commands ran in the order sent


async def test_a_refused_command_is_a_typed_error_and_the_stream_goes_on(client: ChronicleClient) -> None:
    commands = [
        Command("acc-1", bank.OpenAccount(owner="ann")),
        Command("acc-1", bank.Withdraw(amount=5)),
        Command("acc-1", bank.Deposit(amount=-1)),
        Command("acc-1", bank.Deposit(amount=7)),
    ]
    opened, overdrawn, malformed, deposited = await collect(client.submit_stream(commands))
    assert isinstance(overdrawn.error, FailedPrecondition)
    assert (overdrawn.error.code, overdrawn.error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    assert overdrawn.error.metadata == {"balance": "0", "amount": "5"}
    assert overdrawn.submitted is None
    with pytest.raises(FailedPrecondition):
        overdrawn.result()
    assert isinstance(malformed.error, InvalidArgument)
    assert [v.field for v in malformed.error.field_violations] == ["command.payload.amount"]
    assert (opened.result().version, deposited.result().version) == (1, 2)


async def test_commands_can_come_from_a_generator_that_waits_for_results(client: ChronicleClient) -> None:
    # Each command is made only once the one before was answered: the stream
    # must not wait for the whole input before sending.
    answered: asyncio.Queue[StreamResult] = asyncio.Queue()

    async def one_after_another() -> AsyncIterator[Command]:
        yield Command("acc-1", bank.OpenAccount(owner="ann"))
        for amount in range(1, 6):
            previous = await answered.get()
            yield Command("acc-1", bank.Deposit(amount=amount), expected_version=previous.result().version)

    results = []
    async with asyncio.timeout(60):
        async for result in client.submit_stream(one_after_another()):
            results.append(result)
            answered.put_nowait(result)
    assert [r.result().version for r in results] == [1, 2, 3, 4, 5, 6]


async def test_a_dry_run_stream_writes_nothing_but_its_audit_entry(
    client: ChronicleClient, store: StoreAdapter
) -> None:
    before = await at_rest(store)
    results = await collect(client.submit_stream([Command("acc-1", bank.OpenAccount(owner="ann"))], dry_run=True))
    assert [(r.result().dry_run, r.result().version) for r in results] == [(True, 1)]
    await audited_dry_runs_only(store, before, "accepted")


async def test_an_error_raised_by_the_commands_ends_the_stream_and_is_raised(client: ChronicleClient) -> None:
    async def failing() -> AsyncIterator[Command]:
        yield Command("acc-1", bank.OpenAccount(owner="ann"))
        raise LookupError("the producer failed")

    with pytest.raises(LookupError, match="the producer failed"):
        await collect(client.submit_stream(failing()))


async def test_leaving_a_stream_early_ends_it_and_the_client_goes_on(client: ChronicleClient) -> None:
    async def endless() -> AsyncIterator[Command]:
        yield Command("acc-1", bank.OpenAccount(owner="ann"))
        while True:
            yield Command("acc-1", bank.Deposit(amount=1))

    results = client.submit_stream(endless())
    async with asyncio.timeout(60):
        first = await anext(results)
        await results.aclose()  # the call and the producer are stopped
    assert first.result().version == 1
    assert (await client.submit("acc-2", bank.OpenAccount(owner="bob"))).version == 1


async def test_a_broken_stream_sends_the_unanswered_commands_again_and_none_runs_twice(address: str) -> None:
    breaking = BreakFirstCommandStream(after=5)
    commands = [Command(f"acc-{i}", bank.OpenAccount(owner="ann")) for i in range(4)]
    commands += [Command(f"acc-{i % 4}", bank.Deposit(amount=1)) for i in range(40)]
    channel = grpc.aio.insecure_channel(address, interceptors=[breaking])
    async with ChronicleClient(channel, retry=FAST, owns_channel=True) as client:
        results = await collect(client.submit_stream(commands))
        histories = [await client.read_all(f"acc-{i}") for i in range(4)]
    assert [r.command_id for r in results] == [c.command_id for c in commands]
    assert all(r.error is None for r in results)
    assert [len(h) for h in histories] == [11, 11, 11, 11]  # every command appended once
    first, second = breaking.calls
    answered = {c.command_id for c in commands[:5]}
    resent = [r.command.command_id for r in second]
    # The second call starts with what the first left unanswered, in order,
    # and carries every later command; nothing answered is sent again.
    assert resent == [c.command_id for c in commands[5:]]
    assert answered.isdisjoint(resent)
    assert [r.command.command_id for r in first][:5] == [c.command_id for c in commands[:5]]


async def test_a_stream_gives_up_when_the_retries_are_spent(address: str) -> None:
    channel = grpc.aio.insecure_channel(address, interceptors=[BreakFirstCommandStream(after=1)])
    async with ChronicleClient(channel, retry=RetryPolicy(max_attempts=1), owns_channel=True) as client:
        stream = client.submit_stream([Command(f"acc-{i}", bank.OpenAccount(owner="ann")) for i in range(2)])
        with pytest.raises(Unavailable):
            await collect(stream)


async def test_a_stream_goes_on_through_a_server_restart() -> None:
    """The server stops (the stream ends UNAVAILABLE) and another comes up
    on the same address and store: the stream reopens there and goes on."""
    store, listen = MemoryStore(), f"127.0.0.1:{free_port()}"
    answered: asyncio.Queue[StreamResult] = asyncio.Queue()

    async def one_after_another() -> AsyncIterator[Command]:
        yield Command("acc-1", bank.OpenAccount(owner="ann"))
        for _ in range(9):
            await answered.get()
            yield Command("acc-1", bank.Deposit(amount=1))

    results: list[StreamResult] = []
    server = await start(replace(TEST_SETTINGS, listen=listen), store=store)
    try:
        async with ChronicleClient.connect(listen, retry=FAST) as client, asyncio.timeout(60):
            async for result in client.submit_stream(one_after_another()):
                results.append(result)
                if len(results) == 5:
                    await server.stop(grace=1.0)
                    server = await start(replace(TEST_SETTINGS, listen=listen), store=store)
                answered.put_nowait(result)
            events = await client.read_all("acc-1")
    finally:
        await server.stop(grace=0)
    assert [r.result().version for r in results] == list(range(1, 11))
    assert [e.version for e in events] == list(range(1, 11))


class RecordedStreams(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Records the messages each command stream sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Any]]] = []

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        sent: list[Any] = []
        self.calls.append((method.rpartition("/")[2], sent))

        async def recorded() -> AsyncIterator[Any]:
            async for message in request_iterator:
                sent.append(message)
                yield message

        return await continuation(details, recorded())


async def test_commands_taken_together_leave_as_one_page(address: str) -> None:
    recorded = RecordedStreams()
    commands = [Command(f"acc-{i}", bank.OpenAccount(owner="ann")) for i in range(50)]
    channel = grpc.aio.insecure_channel(address, interceptors=[recorded])
    async with ChronicleClient(channel, retry=FAST, owns_channel=True) as client:
        results = await collect(client.submit_stream(commands))
    assert [r.result().version for r in results] == [1] * 50
    [(method, sent)] = recorded.calls
    # The list is taken at once: one message carries every command.
    assert method == "SubmitStreamPages"
    assert [[r.command.command_id for r in page.requests] for page in sent] == [[c.command_id for c in commands]]


async def test_commands_that_come_one_at_a_time_leave_one_at_a_time(client: ChronicleClient) -> None:
    # Each command waits for the result before it: none may wait in the
    # client for another to fill its page.
    answered: asyncio.Queue[StreamResult] = asyncio.Queue()

    async def one_after_another() -> AsyncIterator[Command]:
        yield Command("acc-1", bank.OpenAccount(owner="ann"))
        for _ in range(5):
            await answered.get()
            yield Command("acc-1", bank.Deposit(amount=1))

    versions = []
    async with asyncio.timeout(60):
        async for result in client.submit_stream(one_after_another()):
            versions.append(result.result().version)
            answered.put_nowait(result)
    assert versions == [1, 2, 3, 4, 5, 6]


async def test_a_server_without_paged_streams_gets_the_commands_over_submit_stream(address: str) -> None:
    without = WithoutStreamPages()
    commands = [Command(f"acc-{i}", bank.OpenAccount(owner="ann")) for i in range(3)]
    commands += [Command(f"acc-{i % 3}", bank.Deposit(amount=2)) for i in range(9)]
    channel = grpc.aio.insecure_channel(address, interceptors=[without])
    async with ChronicleClient(channel, retry=RetryPolicy(max_attempts=1), owns_channel=True) as client:
        first = await collect(client.submit_stream(commands))
        second = await collect(client.submit_stream([Command("acc-0", bank.Deposit(amount=1))]))
        balances = [await client.read_all(f"acc-{i}") for i in range(3)]
    assert [r.command_id for r in first] == [c.command_id for c in commands]
    assert [r.result().version for r in first] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert second[0].result().version == 5
    assert [len(events) for events in balances] == [5, 4, 4]  # nothing ran twice, nothing lost
    # Asked once, refused (UNIMPLEMENTED, not retried as an error), then
    # SubmitStream for this stream and the client's next. Asked once more
    # when grpc.aio lost the refusal's status (the server ended the call as
    # the client wrote its commands, grpc/grpc#36066: INTERNAL instead),
    # which the client asks again before it decides anything.
    asked, then = without.methods[:-2], without.methods[-2:]
    assert then == ["SubmitStream", "SubmitStream"]
    assert asked in (["SubmitStreamPages"], ["SubmitStreamPages"] * 2)


async def test_an_older_server_is_found_out_when_grpc_loses_its_refusal(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server refuses SubmitStreamPages (UNIMPLEMENTED) while the client
    # still writes pages: the write fails, and grpc.aio reports INTERNAL in
    # place of the server's status (grpc/grpc#36066). The client asks again,
    # hears UNIMPLEMENTED, and sends the commands over SubmitStream. The
    # loss needs the refusal to reach gRPC's core after the first page left
    # and before the next: a loaded machine can deliver it sooner, so a
    # fresh client tries until one has lost it. Every try must come out right.
    monkeypatch.setattr(streaming, "PAGE_BYTES", 1)  # a page for each command
    for attempt in range(10):
        without, racing = WithoutStreamPages(), WritesAfterTheEnd()
        ids = [f"acc-{attempt}-{i}" for i in range(4)]
        channel = grpc.aio.insecure_channel(address, interceptors=[racing, without])
        async with ChronicleClient(channel, retry=RetryPolicy(max_attempts=1), owns_channel=True) as client:
            results = await collect(client.submit_stream([Command(i, bank.OpenAccount(owner="ann")) for i in ids]))
            balances = [await client.read_all(i) for i in ids]
        assert [r.result().version for r in results] == [1, 1, 1, 1]
        assert [len(events) for events in balances] == [1, 1, 1, 1]
        if without.methods != ["SubmitStreamPages", "SubmitStream"]:  # the refusal was heard at once
            break
    # Asked twice: the first refusal was lost.
    assert without.methods == ["SubmitStreamPages", "SubmitStreamPages", "SubmitStream"]


async def test_an_error_that_leaves_the_outcome_unknown_names_the_command_ids_to_resend(tmp_path: Any) -> None:
    """The client made the id up: the error carries it, and the same id sent
    again answers what the command did, running it at most once."""
    from domain_plugins.box.protos.box.v1 import box_pb2

    extra = ["--no-discover-plugins", "--plugin", "tests.support.plugins:slow"]
    with server_process(f"sqlite:///{tmp_path}/events.db", extra=extra) as server:
        once = RetryPolicy(max_attempts=1)
        async with ChronicleClient.connect(server.address, retry=once, attempt_timeout=0.2) as impatient:
            with pytest.raises(DeadlineExceeded) as late:
                await impatient.submit("s-1", box_pb2.RenameBox(name="a"))
            with pytest.raises(DeadlineExceeded) as late_batch:
                await impatient.submit_batch(
                    [Command("s-2", box_pb2.RenameBox(name="b")), Command("s-2", box_pb2.RenameBox(name="c"))]
                )
        command_id = late.value.command_id
        assert command_id is not None and late.value.command_ids == (command_id,)
        assert late_batch.value.command_id is None and len(late_batch.value.command_ids) == 2
        async with ChronicleClient.connect(server.address) as patient:
            again = await patient.submit("s-1", box_pb2.RenameBox(name="a"), command_id=command_id)
            assert (again.command_id, again.version, again.replayed) == (command_id, 1, True)
            batch = [
                Command("s-2", box_pb2.RenameBox(name=name), command_id=command_id)
                for name, command_id in zip("bc", late_batch.value.command_ids, strict=True)
            ]
            assert (await patient.submit_batch(batch)).version == 2
