"""Keepalive pings on a connection without calls (Go's PermitWithoutStream,
Java's keepAliveWithoutCalls, grpc-js's keepalive_permit_without_calls) are
accepted at the same bound as pings with calls open
(--min-client-ping-seconds): before, gRPC's own rule for connections without
calls (one ping in two hours) stayed, and such a client was sent GOAWAY
too_many_pings after its third ping. Pings are no calls, though: a pinging
connection without calls is still closed after --max-connection-idle-seconds
(docs/deployment.md). The intervals are lowered through the settings to keep
the tests short: a floor of 0.2 s, pings every 0.3 s, well past gRPC's
strike window (two strikes; the third bad ping is GOAWAY)."""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass, replace

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.store.memory import MemoryStore
from tests.support.grpc_client import TEST_SETTINGS, running_server

FLOOR = 0.2
EVERY = 0.3
PINGING = replace(TEST_SETTINGS, min_client_ping_seconds=FLOOR, max_connection_idle_seconds=0)

# HTTP/2 (RFC 9113): the client's preface, frame types, flags, error codes.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, PING, GOAWAY = 0x4, 0x6, 0x7
ACK = 0x1
ENHANCE_YOUR_CALM = 0xB  # GOAWAY too_many_pings


def _frame(kind: int, flags: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", 0) + payload


@dataclass
class Pinged:
    acks: int  # the pings the server answered
    goaway_error: int | None  # the error code of the server's GOAWAY, if it sent one
    closed_after: float | None  # seconds from the handshake to the server's close, if it closed


async def _ping_without_calls(address: str, *, pings: int, every: float) -> Pinged:
    """A client that finishes HTTP/2's handshake and then opens no call,
    sending a keepalive ping every ``every`` seconds, ``pings`` of them (it
    answers the server's pings); reads until it sent them all and has
    waited ``every`` more, or the server closed the connection."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(PREFACE + _frame(SETTINGS, 0))
    await writer.drain()
    started = time.monotonic()
    acks, goaway_error = 0, None

    async def pinger() -> None:
        for number in range(pings):
            await asyncio.sleep(every)
            writer.write(_frame(PING, 0, struct.pack(">Q", number)))
            await writer.drain()
        await asyncio.sleep(every)

    sending = asyncio.ensure_future(pinger())
    try:
        while not sending.done():
            read = asyncio.ensure_future(reader.readexactly(9))
            await asyncio.wait([read, sending], return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                read.cancel()
                break
            try:
                header = read.result()
            except asyncio.IncompleteReadError:
                return Pinged(acks, goaway_error, time.monotonic() - started)
            length = int.from_bytes(header[:3], "big")
            kind, flags = header[3], header[4]
            payload = await reader.readexactly(length)
            if kind == SETTINGS and not flags & ACK:
                writer.write(_frame(SETTINGS, ACK))
            elif kind == PING and flags & ACK:
                acks += 1
            elif kind == PING:
                writer.write(_frame(PING, ACK, payload))
            elif kind == GOAWAY:
                goaway_error = int.from_bytes(payload[4:8], "big")
            await writer.drain()
        return Pinged(acks, goaway_error, None)
    finally:
        sending.cancel()
        writer.close()


async def test_pings_without_calls_at_the_floor_are_answered_and_never_sent_goaway() -> None:
    async with running_server(MemoryStore(), settings=PINGING) as (app, _):
        pinged = await _ping_without_calls(app.address, pings=10, every=EVERY)
    assert pinged == Pinged(acks=10, goaway_error=None, closed_after=None)


async def test_pings_without_calls_more_often_than_the_floor_are_still_refused() -> None:
    """The bound holds without calls as with them: not a free-for-all."""
    async with running_server(MemoryStore(), settings=replace(PINGING, min_client_ping_seconds=5.0)) as (app, _):
        pinged = await _ping_without_calls(app.address, pings=10, every=EVERY)
    assert pinged.goaway_error == ENHANCE_YOUR_CALM


async def test_a_connection_that_pings_without_calls_is_still_closed_as_idle() -> None:
    idle = 0.6
    async with running_server(MemoryStore(), settings=replace(PINGING, max_connection_idle_seconds=idle)) as (app, _):
        pinged = await _ping_without_calls(app.address, pings=20, every=EVERY)
    # gRPC looks once per idle period: closed within two of them (and some slack), its pings answered meanwhile.
    assert pinged.closed_after is not None and idle / 2 <= pinged.closed_after < 2 * idle + 3.0, pinged
    assert pinged.goaway_error is not None and pinged.goaway_error != ENHANCE_YOUR_CALM, pinged
    assert pinged.acks >= 1


async def test_a_grpcio_channel_pinging_without_calls_keeps_its_connection() -> None:
    """A raw grpcio channel with keepalive_permit_without_calls, as the
    walkthrough ran it (every 6 s against the 5 s floor), scaled down: one
    health check, then no call for ten ping intervals; the connection it
    made stays up (a GOAWAY would drop the channel to IDLE)."""
    options = [
        ("grpc.keepalive_time_ms", round(EVERY * 1000)),
        ("grpc.keepalive_timeout_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    async with (
        running_server(MemoryStore(), settings=PINGING) as (app, _),
        grpc.aio.insecure_channel(app.address, options=options) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        states = []
        for _ in range(20):
            await asyncio.sleep(EVERY / 2)
            states.append(channel.get_state())
    assert set(states) == {grpc.ChannelConnectivity.READY}, states
