"""The gate around streaming methods, over a real socket: each item the
servicer yields reaches the client, an error becomes the call's status, and
a call the client cancels closes the servicer's generator (its cleanup runs)
and is counted out of the gate's limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from service.api.gate import RpcGate
from service.errors import InvalidInput
from tests.support.waiting import eventually

METHOD = "/test.v1.Streams/Count"


class Servicer:
    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.fail_after: int | None = None

    async def count(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        try:
            for n in range(int(request)):
                if self.fail_after is not None and n == self.fail_after:
                    raise InvalidInput("no more", reason="NO_MORE")
                yield str(n).encode()
                await asyncio.sleep(0)
        finally:
            self.closed.set()


async def _serve(servicer: Servicer, gate: RpcGate) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    handler = gate.wrap(
        METHOD,
        grpc.unary_stream_rpc_method_handler(servicer.count, request_deserializer=bytes, response_serializer=None),
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.v1.Streams", {"Count": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def served() -> AsyncIterator[tuple[Servicer, RpcGate, grpc.aio.Channel]]:
    servicer, gate = Servicer(), RpcGate(max_rpcs=10, max_subscriptions=10)
    server, address = await _serve(servicer, gate)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            yield servicer, gate, channel
    finally:
        await server.stop(0)


def _count(channel: grpc.aio.Channel) -> Any:
    return channel.unary_stream(METHOD, request_serializer=None, response_deserializer=None)


async def _counted_out(gate: RpcGate) -> None:
    """Until the gate counts no call in flight. A status sent by an abort
    (an error, a cancel) can reach the client before the server's wrapper
    leaves the gate, in its own step of the loop."""
    await eventually(lambda: gate.in_flight == 0, within=1.0, what="the call counted out of the gate")


async def test_every_item_arrives_and_the_generator_is_closed(served: tuple[Servicer, RpcGate, Any]) -> None:
    servicer, gate, channel = served
    assert [item async for item in _count(channel)(b"5")] == [b"0", b"1", b"2", b"3", b"4"]
    assert servicer.closed.is_set()
    assert gate.in_flight == 0


async def test_an_error_after_some_items_is_the_call_s_status(served: tuple[Servicer, RpcGate, Any]) -> None:
    servicer, gate, channel = served
    servicer.fail_after = 2
    received: list[bytes] = []

    async def read() -> None:
        async for item in _count(channel)(b"5"):
            received.append(item)

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await read()
    assert received == [b"0", b"1"]
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert servicer.closed.is_set()
    await _counted_out(gate)


async def test_a_cancelled_call_closes_the_servicer_s_generator(served: tuple[Servicer, RpcGate, Any]) -> None:
    servicer, gate, channel = served
    call = _count(channel)(b"1000000")
    assert await call.read() == b"0"
    assert gate.in_flight == 1
    call.cancel()
    await asyncio.wait_for(servicer.closed.wait(), timeout=10)
    await _counted_out(gate)
