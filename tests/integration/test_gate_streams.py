"""The gate around streaming methods, over a real socket: each item the
servicer yields reaches the client, an error becomes the call's status, and
a call the client cancels closes the servicer's generator (its cleanup runs)
and is counted out of the gate's limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from service.api.gate import RpcGate
from service.errors import InvalidInput
from service.security.credentials import ApiKeys, Authenticator, hash_api_key
from tests.support.grpc_client import reason_of
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


# -- streams ended by their credentials (service/api/live_streams.py) ------------

KEY = "chr_gate-streams-test-key-0123456789abcdef"


class Endless:
    """A stream of each shape that runs until it is ended."""

    async def server_stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"open"
        await asyncio.Event().wait()

    async def upload(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        async for _ in requests:
            pass
        return b"done"

    async def duplex(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request


async def test_every_stream_shape_ends_when_its_credential_is_revoked(tmp_path: Any) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(f'[[keys]]\nprincipal = "alice"\nsha256 = "{hash_api_key(KEY)}"\n')
    authenticator = Authenticator(api_keys=ApiKeys.load(keys_file))
    gate = RpcGate(max_rpcs=10, max_subscriptions=10, authenticator=authenticator)
    endless = Endless()
    plain = {"request_deserializer": bytes, "response_serializer": None}
    handlers = {
        "ServerStream": grpc.unary_stream_rpc_method_handler(endless.server_stream, **plain),
        "Upload": grpc.stream_unary_rpc_method_handler(endless.upload, **plain),
        "Duplex": grpc.stream_stream_rpc_method_handler(endless.duplex, **plain),
    }
    wrapped = {name: gate.wrap(f"/test.v1.Streams/{name}", handler) for name, handler in handlers.items()}
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.v1.Streams", wrapped),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    metadata = (("authorization", f"Bearer {KEY}"),)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            server_stream = channel.unary_stream("/test.v1.Streams/ServerStream")(b"", metadata=metadata)
            upload = channel.stream_unary("/test.v1.Streams/Upload")(metadata=metadata)
            duplex = channel.stream_stream("/test.v1.Streams/Duplex")(metadata=metadata)
            assert await server_stream.read() == b"open"
            await upload.write(b"a record")
            await duplex.write(b"ping")
            assert await duplex.read() == b"ping"
            await eventually(lambda: gate.streams is not None and len(gate.streams) == 3, what="three streams open")
            assert gate.streams is not None

            authenticator.use_api_keys(ApiKeys({}))  # the key revoked, as a reload of its file does
            assert gate.streams.recheck() == 3
            for ending in (server_stream.read(), upload, duplex.read()):
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await ending
                assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert reason_of(ended.value) == "UNKNOWN_API_KEY"
            assert len(gate.streams) == 0
            await _counted_out(gate)
    finally:
        await server.stop(0)


class Flood:
    """A server stream that sends large messages as fast as it is let."""

    def __init__(self) -> None:
        self.produced = 0

    async def server_stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        while True:
            self.produced += 1
            yield b"x" * 4 * 1024 * 1024


@contextlib.asynccontextmanager
async def _flooding(gate: RpcGate, flood: Flood) -> AsyncIterator[grpc.aio.Channel]:
    """A server of ``flood``'s stream behind ``gate``, and a channel to it
    with a fixed receive window: its client takes in little until it reads,
    so the server's writes wait on flow control."""
    handler = grpc.unary_stream_rpc_method_handler(flood.server_stream, request_deserializer=bytes)
    wrapped = {"ServerStream": gate.wrap("/test.v1.Streams/ServerStream", handler)}
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 8 * 1024 * 1024)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.v1.Streams", wrapped),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    options = [
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 64 * 1024),
        ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            yield channel
    finally:
        await server.stop(0)


async def test_a_stream_ended_while_its_first_message_is_on_its_way_gets_its_status_after_it(tmp_path: Any) -> None:
    """A credential revoked while the server's first write (the one that
    carries the response headers too) waits for a client that is not
    reading. Cancelling that write would leave it pending in gRPC's core,
    which then refuses the status (``GRPC_CALL_ERROR_TOO_MANY_OPERATIONS``),
    and the client would wait for ever: the stream ends once the write
    completes, with nothing sent after it."""
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(f'[[keys]]\nprincipal = "alice"\nsha256 = "{hash_api_key(KEY)}"\n')
    authenticator = Authenticator(api_keys=ApiKeys.load(keys_file))
    gate = RpcGate(max_rpcs=10, max_subscriptions=10, authenticator=authenticator)
    flood = Flood()
    async with _flooding(gate, flood) as channel:
        call = channel.unary_stream("/test.v1.Streams/ServerStream")(
            b"", metadata=(("authorization", f"Bearer {KEY}"),)
        )
        await eventually(lambda: gate.streams is not None and len(gate.streams) == 1, what="the stream open")
        assert gate.streams is not None
        (live,) = list(gate.streams._open)
        seen: list[int] = []

        def stalled() -> bool:  # the first write waits for the client to take it in
            seen.append(flood.produced)
            # (``writing`` read with getattr so the test runs, and fails, on code without it)
            return getattr(live, "writing", True) and seen[-5:] == [1] * 5

        await eventually(stalled, what="the server's first write held by flow control")

        authenticator.use_api_keys(ApiKeys({}))
        assert gate.streams.recheck() == 1
        received: list[object] = []

        async def read_to_the_end() -> None:
            while True:
                message = await asyncio.wait_for(call.read(), timeout=10)
                assert message is not grpc.aio.EOF, "the stream ended without its status"
                received.append(message)

        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await read_to_the_end()
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason_of(ended.value) == "UNKNOWN_API_KEY"
        assert len(received) <= 1 and flood.produced == 1  # nothing produced after the end was sent
        await _counted_out(gate)


async def test_a_client_that_cancels_while_a_write_waits_for_it_is_no_error(caplog: pytest.LogCaptureFixture) -> None:
    """A stream held by flow control (its client not reading) and cancelled
    by that client: the pending write fails inside gRPC (ExecuteBatchError),
    which is a client going away, as ordinary as a cancel, not an
    "unexpected error" with a traceback in the server's log."""
    gate = RpcGate(max_rpcs=10, max_subscriptions=10)
    flood = Flood()
    async with _flooding(gate, flood) as channel:
        call = channel.unary_stream("/test.v1.Streams/ServerStream")(b"")
        assert len(await call.read()) == 4 * 1024 * 1024
        seen: list[int] = []

        def stalled() -> bool:
            seen.append(flood.produced)
            return len(seen) >= 5 and len(set(seen[-5:])) == 1

        await eventually(stalled, what="the server's write held by flow control")
        call.cancel()
        await _counted_out(gate)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
