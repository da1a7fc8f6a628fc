"""A stopping server ends its command streams after its drain, as it ends
subscriptions, group consumers and watches: each takes no more commands,
answers those it started, and ends UNAVAILABLE with reason SHUTTING_DOWN,
so its client sends the rest to another member at once. Before, an open
command stream held the server's stop for the whole shutdown grace, and
then ended with gRPC's bare cancellation.

- an idle SubmitStream or SubmitStreamPages does not hold ``stop``: with an
  hour of grace, ``stop`` returns once the drain is over, and the stream's
  status is UNAVAILABLE / SHUTTING_DOWN;
- a command the stream started before the stop (its append held in the
  store) is answered, and only then does the stream end so.

The bounds on the waits only make a broken build fail rather than hang."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from chronicle.v1 import command_service_pb2 as cs
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.memory import MemoryStore
from tests.support.blocking import GatedStore
from tests.support.grpc_client import command, details_of, running_server

HOUR = 3600.0


def opening(aggregate_id: str) -> cs.SubmitRequest:
    return cs.SubmitRequest(command=command(aggregate_id, bank.OpenAccount(owner="ann")))


async def write(call: Any, method: str, request: cs.SubmitRequest) -> None:
    await call.write(request if method == "SubmitStream" else cs.SubmitPage(requests=[request]))


def answers_of(method: str, message: Any) -> list[cs.SubmitStreamResponse]:
    return [message] if method == "SubmitStream" else list(message.results)


async def status_at_the_end(call: Any) -> grpc.aio.AioRpcError:
    while True:
        try:
            if await call.read() is grpc.aio.EOF:
                raise AssertionError("the stream ended OK")
        except grpc.aio.AioRpcError as ended:
            return ended


@pytest.mark.parametrize("method", ["SubmitStream", "SubmitStreamPages"])
async def test_an_idle_command_stream_does_not_hold_the_stop_and_ends_shutting_down(method: str) -> None:
    async with running_server(MemoryStore()) as (app, client):
        call = getattr(client.commands, method)()
        await write(call, method, opening("acc-1"))
        (answer,) = answers_of(method, await call.read())
        assert answer.ok.version == 1
        async with asyncio.timeout(20):  # before: the whole hour of grace
            await app.stop(grace=HOUR, drain=0.0)
            ended = await status_at_the_end(call)
    assert ended.code() == grpc.StatusCode.UNAVAILABLE
    assert details_of(ended).reason == "SHUTTING_DOWN"


@pytest.mark.parametrize("method", ["SubmitStream", "SubmitStreamPages"])
async def test_a_command_started_before_the_stop_is_answered_before_the_stream_ends(method: str) -> None:
    store = GatedStore(MemoryStore())
    async with running_server(store) as (app, client):
        call = getattr(client.commands, method)()
        await write(call, method, opening("acc-1"))
        async with asyncio.timeout(20):
            await store.entered.wait()  # started: its append waits in the store
            stopping = asyncio.ensure_future(app.stop(grace=HOUR, drain=0.0))
            await asyncio.sleep(0.2)  # the stop has reached the streams; the command is still held
            assert not stopping.done()
            store.gate.set()
            (answer,) = answers_of(method, await call.read())
            ended = await status_at_the_end(call)
            await stopping
    assert answer.ok.version == 1
    assert (ended.code(), details_of(ended).reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    head = await store.inner.head("acc-1")
    assert head is not None and head.version == 1


async def test_one_grace_bounds_the_stop_for_calls_and_the_commands_they_wait_for() -> None:
    """gRPC's stop waits its grace for a call whose command is held; the
    router then gets what is left of the same grace, not a second one (a
    stop took drain + 2 x grace, past the termination period deployment.md
    gives an orchestrator)."""
    store = GatedStore(MemoryStore())
    async with running_server(store) as (app, client):
        held = asyncio.ensure_future(client.commands.Submit(opening("acc-1")))
        async with asyncio.timeout(20):
            await store.entered.wait()
            given: list[float] = []
            close = app.router.close

            async def recorded_close(grace: float = 30.0) -> None:
                given.append(grace)
                await close(grace=grace)

            app.router.close = recorded_close  # type: ignore[method-assign]
            await app.stop(grace=1.0, drain=0.0)
        held.cancel()
    assert len(given) == 1 and given[0] < 0.5  # before: the whole second again
