"""The console's HTTP server holds a connection no longer than its deadline
from the accept, a TLS handshake included, and counts it toward its cap
from the accept: sockets that never start TLS (or never send a byte)
cannot hold the process's descriptors (docs/console.md, "Bounded
requests"). The deadline is made short here; it is 10 s in the console."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from service.console.http import HARD_CAP_FACTOR, HttpServer, Request, Response
from tests.support.http import request
from tests.support.security import Authority, server_tls_files
from tests.support.waiting import eventually

DEADLINE = 0.5
CAP = 2
# Long enough for the cap's test to open every socket before the first is closed.
CAP_TEST_DEADLINE = 4.0


# More than the sockets' buffers take: its write waits for the reader.
BIG = 64 * 1024 * 1024


async def _hello(request: Request) -> Response:
    body = b"x" * BIG if request.path == "/big" else b"hello"
    return Response(200, body, "text/plain; charset=utf-8")


@pytest.fixture
def authority() -> Authority:
    return Authority()


Serve = Callable[[float], Awaitable[HttpServer]]


@pytest.fixture
async def serve(tmp_path: Path, authority: Authority) -> AsyncIterator[Serve]:
    """Starts the console's server over TLS with a deadline of the test's."""
    cert_file, key_file = server_tls_files(tmp_path, authority)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_file, key_file)
    started: list[HttpServer] = []

    async def start(deadline: float) -> HttpServer:
        server = HttpServer(_hello, max_connections=CAP, request_seconds=deadline)
        await server.start("127.0.0.1", 0, tls=tls)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.stop()


def _trusting(authority: Authority) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=authority.certificate.decode())


async def _idle_sockets(port: int, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``count`` TCP connections that never send a byte (no TLS ClientHello)."""
    return [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    async with asyncio.timeout(10):
        return await reader.read(1) == b""


async def test_sockets_that_never_start_tls_are_closed_at_the_deadline(serve: Serve) -> None:
    console = await serve(DEADLINE)
    idle = await _idle_sockets(console.port, 3)
    await eventually(lambda: console.open_connections == 3, within=5, what="the idle sockets to be counted")
    started = time.monotonic()
    assert all([await _closed_by_server(reader) for reader, _ in idle])
    # Closed by the console's deadline, not asyncio's 60 s handshake timeout.
    assert time.monotonic() - started < DEADLINE + 3
    await eventually(lambda: console.open_connections == 0, within=5, what="the closed sockets to be forgotten")
    for _, writer in idle:
        writer.close()


async def test_a_completed_handshake_without_a_request_is_closed_at_the_same_deadline(
    serve: Serve, authority: Authority
) -> None:
    console = await serve(DEADLINE)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", console.port, ssl=_trusting(authority), server_hostname="localhost"
    )
    started = time.monotonic()
    assert await _closed_by_server(reader)
    assert time.monotonic() - started < DEADLINE + 3
    writer.close()


async def test_a_connection_is_closed_after_its_answer_even_when_the_browser_asks_to_keep_it(
    serve: Serve, authority: Authority
) -> None:
    """No keep-alive: a connection is not left idle after its request, to
    hold a place until the deadline (docs/security.md, "Quotas")."""
    console = await serve(30.0)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", console.port, ssl=_trusting(authority), server_hostname="localhost"
    )
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(3):  # far short of the 30 s deadline
        answer = await reader.read()  # to the end: the server closed it
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nConnection: close\r\n" in answer
    await eventually(lambda: console.open_connections == 0, within=5, what="the connection to be forgotten")
    writer.close()


async def test_sockets_in_their_handshake_count_toward_the_cap(serve: Serve, authority: Authority) -> None:
    console = await serve(CAP_TEST_DEADLINE)
    address = f"127.0.0.1:{console.port}"
    assert (await request(address, "GET", "/", host="localhost", tls=_trusting(authority))).status == 200
    idle = await _idle_sockets(console.port, CAP)
    await eventually(lambda: console.open_connections == CAP, within=5, what="the idle sockets to be counted")
    busy = await request(address, "GET", "/", host="localhost", tls=_trusting(authority))
    assert (busy.status, busy.header("retry-after")) == (503, "5")
    # Past the hard cap a connection is closed at once, unanswered.
    idle += await _idle_sockets(console.port, CAP * HARD_CAP_FACTOR - CAP)
    await eventually(
        lambda: console.open_connections == CAP * HARD_CAP_FACTOR, within=5, what="every idle socket to be counted"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", console.port)
    started = time.monotonic()
    assert await _closed_by_server(reader)
    assert time.monotonic() - started < CAP_TEST_DEADLINE / 2  # not at the deadline: at once
    writer.close()
    # The deadline frees them all, and the console answers again.
    await eventually(lambda: console.open_connections == 0, within=5, what="the idle sockets to be closed")
    assert (await request(address, "GET", "/", host="localhost", tls=_trusting(authority))).status == 200
    for _, idle_writer in idle:
        idle_writer.close()


async def test_a_browser_that_stops_reading_the_answer_is_dropped_at_the_deadline(
    serve: Serve, authority: Authority
) -> None:
    console = await serve(DEADLINE)
    _, writer = await asyncio.open_connection(
        "127.0.0.1", console.port, ssl=_trusting(authority), server_hostname="localhost"
    )
    writer.write(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    await eventually(lambda: console.open_connections == 1, within=5, what="the request to be taken")
    # Nothing read: the answer's write waits, then the deadline drops the connection.
    await eventually(lambda: console.open_connections == 0, within=DEADLINE + 5, what="the connection to be dropped")
    writer.close()
