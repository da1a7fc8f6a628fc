"""The Python client's default retry policy waits out a server restart and a
database outage, as the README, docs/clients.md and docs/reliability.md say
(``service/client/retry.py``).

``RetryPolicy()`` sets no ``max_attempts``: a unary call or a read is tried
again for ``retry_for`` seconds (30), and a subscription, a command stream
or a group consumer is reopened for as long as it is iterated, the backoff
growing to ``max_backoff`` (2 s) and no further. Before, five attempts in a
row (about 0.75-0.9 s of backoff) ended every one of them while a server
restarted.

Held here: the policy's numbers, with a fake clock (a unary call given up
at 30 s and not before; a stream reopened any number of times; a read
given up 30 s after its last event; a group consumer's waits growing to
the cap); and against a real server process killed (SIGKILL) or stopped
(SIGTERM) and started again on its port about three seconds later, with
the default policy: a subscriber that receives every event once, in
order; a submit made while the server was down that succeeds once it is
back, its command run once; a command stream whose unanswered commands
are sent again, each appended once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest

from chronicle.v1 import event_pb2
from chronicle.v1 import subscription_group_service_pb2 as pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient, Command, Event, RetryPolicy, StreamResult, Unavailable
from service.client.errors import RemoteError
from service.client.groups import GroupConsumer
from service.client.retry import DEFAULT_RETRY, call_with_retries, resuming
from tests.support.broken_calls import ScriptedCall, lost
from tests.support.processes import Replica
from tests.support.waiting import eventually

# How long the server stays down: longer than five attempts' backoff
# (about 0.9 s) and than a restart, short enough for the suite.
DOWN_SECONDS = 3.0
MOST_WAIT = DEFAULT_RETRY.max_backoff * (1 + DEFAULT_RETRY.jitter)


def unavailable(details: str = "down (simulated)", *, retry_delay: float | None = None) -> RemoteError:
    return RemoteError(details, code=grpc.StatusCode.UNAVAILABLE, reason="UNAVAILABLE", retry_delay=retry_delay)


class FakeTime:
    """A clock that only ``sleep`` (and the test) moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


# -- the policy, with a fake clock -------------------------------------------------


# The default policy's numbers themselves: test_client_claims.py
# (test_the_retry_policy_and_attempt_timeout_default_as_documented).


def test_a_stream_with_the_default_policy_is_reopened_after_any_number_of_breaks_the_backoff_capped() -> None:
    waits = [DEFAULT_RETRY.delay(attempt, unavailable()) for attempt in range(1, 10_001)]
    assert None not in waits, f"gave up at attempt {waits.index(None) + 1}"
    assert all(wait is not None and wait <= MOST_WAIT for wait in waits)
    assert sum(wait for wait in waits[:10] if wait is not None) > DOWN_SECONDS  # the backoff grows to the cap
    told = DEFAULT_RETRY.delay(50, unavailable(retry_delay=3.0))
    assert told is not None and told >= 3.0  # the server's RetryInfo, past the cap
    assert DEFAULT_RETRY.delay(1, RemoteError("no", code=grpc.StatusCode.PERMISSION_DENIED, reason="X")) is None


async def test_a_unary_call_with_the_default_policy_is_retried_for_30_seconds_then_raises() -> None:
    time = FakeTime()
    began: list[float] = []

    async def refused() -> None:
        began.append(time.now)
        time.now += 0.01  # connection refused: at once
        raise lost("connection refused (simulated)")

    with pytest.raises(Unavailable):
        await call_with_retries(DEFAULT_RETRY, "submit", refused, clock=time.clock, sleep=time.sleep)
    assert len(began) > 10
    assert 30.0 - MOST_WAIT <= began[-1] <= 30.0  # no attempt after the budget, none left unused before it
    assert max(time.slept) <= MOST_WAIT


async def test_a_unary_call_with_the_default_policy_succeeds_once_the_server_is_back_within_30_seconds() -> None:
    time = FakeTime()
    attempts = 0

    async def back_after_25_seconds() -> str:
        nonlocal attempts
        attempts += 1
        if time.now < 25.0:
            raise lost("connection refused (simulated)")
        return "done"

    assert await call_with_retries(DEFAULT_RETRY, "submit", back_after_25_seconds, clock=time.clock, sleep=time.sleep)
    assert attempts > 5 and time.now < 25.0 + MOST_WAIT


async def test_a_unary_call_that_hangs_is_given_up_once_its_budget_is_spent() -> None:
    """Attempts that each take the attempt timeout (10 s) still end the call
    about 30 s in: no attempt begins after the budget."""
    time = FakeTime()
    began: list[float] = []

    async def hangs() -> None:
        began.append(time.now)
        time.now += 10.0
        raise lost("Deadline Exceeded", grpc.StatusCode.DEADLINE_EXCEEDED)

    with pytest.raises(RemoteError):
        await call_with_retries(DEFAULT_RETRY, "submit", hangs, clock=time.clock, sleep=time.sleep)
    assert len(began) == 3 and began[-1] <= 30.0


class ScriptedStream:
    """A server stream call: ``messages``, then ``error`` (None: it ends)."""

    def __init__(self, messages: list[Any], error: BaseException | None) -> None:
        self._messages = messages
        self._error = error

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._run()

    async def _run(self) -> AsyncIterator[Any]:
        for message in self._messages:
            yield message
        if self._error is not None:
            raise self._error

    def cancel(self) -> bool:
        return True


async def test_a_subscription_stream_with_the_default_policy_is_reopened_through_a_long_outage() -> None:
    """A hundred failed reopenings in a row (over three minutes of fake
    time), then the server is back: the stream goes on."""
    time = FakeTime()
    opened = 0

    def open_stream() -> ScriptedStream:
        nonlocal opened
        opened += 1
        if opened == 1:
            return ScriptedStream(["first"], lost("server stopping (simulated)"))
        if opened <= 101:
            return ScriptedStream([], lost("connection refused (simulated)"))
        return ScriptedStream(["second"], None)

    stream = resuming(DEFAULT_RETRY, "subscribe", open_stream, clock=time.clock, sleep=time.sleep)
    assert [message async for message in stream] == ["first", "second"]
    assert opened == 102 and time.now > 100 * DEFAULT_RETRY.max_backoff
    assert max(time.slept) <= MOST_WAIT


async def test_a_read_with_the_default_policy_is_given_up_30_seconds_after_its_last_event() -> None:
    time = FakeTime()
    opened = 0

    def open_stream() -> ScriptedStream:
        nonlocal opened
        opened += 1
        if opened == 1:
            time.now += 100.0  # a long read: its budget counts from its last event
            return ScriptedStream(["event"], lost("server stopping (simulated)"))
        return ScriptedStream([], lost("connection refused (simulated)"))

    received: list[Any] = []

    async def read() -> None:
        stream = resuming(DEFAULT_RETRY, "read", open_stream, bounded=True, clock=time.clock, sleep=time.sleep)
        async for message in stream:
            received.append(message)

    with pytest.raises(Unavailable):
        await read()
    assert received == ["event"]
    assert 130.0 - MOST_WAIT <= time.now <= 130.0 and opened > 10


def scripted_consume(error: BaseException | None) -> ScriptedCall:
    """A Consume call that fails with ``error``, or joins and delivers one event."""
    if error is not None:
        return ScriptedCall(error)
    return ScriptedCall(
        pb.ConsumeResponse(joined=pb.Joined(consumer="c#1")),
        pb.ConsumeResponse(deliveries=pb.Deliveries(deliveries=[pb.Delivery(event=event_pb2.Event(event_id="e-1"))])),
    )


async def test_a_group_consumer_backs_off_from_its_reconnect_delay_up_to_the_cap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = RetryPolicy(max_backoff=0.08)
    calls = [scripted_consume(lost("connection refused (simulated)")) for _ in range(6)] + [scripted_consume(None)]
    consumer = GroupConsumer(lambda: calls.pop(0), group="g", consumer="c", reconnect_delay=0.01, retry=policy)
    with caplog.at_level(logging.INFO, logger="service.client.retry"):
        async with asyncio.timeout(10), consumer:
            delivered = [delivery.event.event_id async for delivery in consumer]
    assert delivered == ["e-1"]
    waits = [float(record.args[-1]) for record in caplog.records if "group g" in record.getMessage()]  # type: ignore[index, arg-type]
    assert waits == [0.01, 0.02, 0.04, 0.08, 0.08, 0.08]
    levels = [record.levelno for record in caplog.records if "group g" in record.getMessage()]
    assert levels == [logging.INFO] * 3 + [logging.WARNING] * 3  # the first few quietly


# -- a real server process, killed and started again ----------------------------------


async def gave_up(**tasks: asyncio.Task[Any]) -> dict[str, BaseException]:
    """The tasks that ended with an error (cancelled ones aside), by name."""
    await asyncio.sleep(0)
    return {
        name: error
        for name, task in tasks.items()
        if task.done() and not task.cancelled() and (error := task.exception()) is not None
    }


async def within(awaitable: Awaitable[Any], seconds: float = 30.0) -> Any:
    async with asyncio.timeout(seconds):  # a broken build fails instead of hanging
        return await awaitable


@pytest.fixture
def server(tmp_path: Path) -> Any:
    replica = Replica(f"sqlite:///{tmp_path}/events.db", log_path=tmp_path / "server.log")
    try:
        replica.start()
        yield replica
    finally:
        replica.close()


@pytest.mark.slow
async def test_a_subscriber_and_a_submit_with_the_default_policy_outlast_a_killed_and_restarted_server(
    server: Replica,
) -> None:
    async with ChronicleClient.connect(server.address) as client:  # the default RetryPolicy
        await client.submit("acc-1", bank.OpenAccount(owner="ann"))
        for amount in (1, 2, 3):
            await client.submit("acc-1", bank.Deposit(amount=amount))
        received: list[Event] = []

        async def follow() -> None:
            async for event in client.subscribe(aggregate_id="acc-1"):
                received.append(event)

        follower = asyncio.create_task(follow())
        try:
            await eventually(lambda: len(received) == 4 or follower.done(), what="the catch-up")
            assert server.stop(signal.SIGKILL) == -signal.SIGKILL
            command_id = str(uuid.uuid4())
            submitting = asyncio.create_task(client.submit("acc-1", bank.Deposit(amount=10), command_id=command_id))
            await asyncio.sleep(DOWN_SECONDS)
            assert not await gave_up(subscriber=follower, submit=submitting), "gave up while the server was down"
            server.start()  # the same port and database

            submitted = await within(submitting)
            await client.submit("acc-1", bank.Deposit(amount=11))
            await eventually(lambda: len(received) == 6 or follower.done(), what="the events after the restart")
            assert not await gave_up(subscriber=follower)
            again = await client.submit("acc-1", bank.Deposit(amount=10), command_id=command_id)
            history = await client.read_all("acc-1")
        finally:
            follower.cancel()
    assert [e.version for e in received] == [1, 2, 3, 4, 5, 6]  # every event once, in order
    assert [e.position for e in received] == sorted({e.position for e in received})
    assert (submitted.version, submitted.replayed) == (5, False)
    assert (again.version, again.replayed) == (5, True)  # the same command id: run once
    assert [e.envelope.command_id for e in history].count(command_id) == 1
    assert [e.version for e in history] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
async def test_a_command_stream_with_the_default_policy_outlasts_a_stopped_and_restarted_server(
    server: Replica,
) -> None:
    later = asyncio.Event()
    results: list[StreamResult] = []

    async def commands() -> AsyncIterator[Command]:
        yield Command("acc-1", bank.OpenAccount(owner="ann"))
        for amount in range(1, 11):
            if amount == 5:
                await later.wait()  # the rest while the server is down
            yield Command("acc-1", bank.Deposit(amount=amount))

    async with ChronicleClient.connect(server.address) as client:  # the default RetryPolicy

        async def run() -> None:
            async for result in client.submit_stream(commands()):
                results.append(result)

        streaming = asyncio.create_task(run())
        try:
            await eventually(lambda: len(results) == 5 or streaming.done(), what="the first results")
            assert server.stop(signal.SIGTERM) == 0  # its streams end UNAVAILABLE (SHUTTING_DOWN)
            later.set()
            await asyncio.sleep(DOWN_SECONDS)
            assert not await gave_up(command_stream=streaming), "gave up while the server was down"
            server.start()
            await within(streaming)
        finally:
            streaming.cancel()
        history = await client.read_all("acc-1")
    assert [r.result().version for r in results] == list(range(1, 12))
    assert [e.version for e in history] == list(range(1, 12))  # each appended once
    assert [e.envelope.command_id for e in history] == [r.command_id for r in results]


@pytest.mark.slow
async def test_group_administration_with_the_default_policy_outlasts_a_killed_and_restarted_server(
    tmp_path: Path,
) -> None:
    """Creating, deleting and replaying a group are retried as the lists are
    (and as the Node client's are): an operator's call made while the server
    restarts is done once it is back."""
    server = Replica(f"sqlite:///{tmp_path}/events.db", log_path=tmp_path / "server.log", extra=["--anonymous-admin"])
    server.start()
    try:
        await _administer_groups_across_a_restart(server)
    finally:
        server.close()


async def _administer_groups_across_a_restart(server: Replica) -> None:
    async with ChronicleClient.connect(server.address) as client:  # the default RetryPolicy
        await client.groups.create("going")
        await client.groups.create("kept")
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        calls = {
            "create": asyncio.create_task(client.groups.create("new", aggregate_types=["Account"])),
            "delete": asyncio.create_task(client.groups.delete("going")),
            "replay": asyncio.create_task(client.groups.replay("kept")),
        }
        await asyncio.sleep(DOWN_SECONDS)
        assert not await gave_up(**calls), "gave up while the server was down"
        server.start()  # the same port and database
        created = await within(calls["create"])
        await within(calls["delete"])
        assert await within(calls["replay"]) == 0  # nothing parked
        groups = {group.name: group for group in await client.groups.list()}
    assert created.name == "new"
    assert sorted(groups) == ["kept", "new"]
    assert list(groups["new"].filter.aggregate_types) == ["Account"]
