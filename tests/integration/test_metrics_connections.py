"""The metrics port (--metrics-listen) holds a connection that sends nothing
no longer than its read timeout, and serves at most a few at once: sockets
opened and left silent each held a thread and a file descriptor for as
long as their client kept them, without a cap (docs/observability.md)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import replace

from prometheus_client import CollectorRegistry, Counter

from service.app import start
from service.observability.scrape_server import CONNECTION_THREAD, MAX_CONNECTIONS, start_scrape_server
from service.store.memory import MemoryStore
from tests.support.grpc_client import TEST_SETTINGS
from tests.support.waiting import eventually

TIMEOUT = 0.5


@contextmanager
def scrape_server(*, max_connections: int = 4) -> Iterator[int]:
    registry = CollectorRegistry()
    Counter("scraped_things", "a counter to find in the answer", registry=registry).inc()
    server, thread = start_scrape_server(
        "127.0.0.1", 0, registry, request_seconds=TIMEOUT, max_connections=max_connections
    )
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _silent(port: int) -> socket.socket:
    """A connection that never sends a byte."""
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _seconds_until_closed(connection: socket.socket) -> float:
    started = time.monotonic()
    with closing(connection):
        assert connection.recv(4096) == b""  # closed, nothing answered
    return time.monotonic() - started


def _scraped(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        body: bytes = answer.read()
    return body


def test_a_connection_that_sends_nothing_is_closed_at_the_timeout() -> None:
    with scrape_server() as port:
        assert _seconds_until_closed(_silent(port)) < TIMEOUT + 3  # before: held for ever
        assert b"scraped_things_total 1.0" in _scraped(port)


async def test_connections_beyond_the_cap_are_closed_at_once_and_scrapes_work_again_when_the_held_ones_go() -> None:
    with scrape_server(max_connections=2) as port:
        held = [_silent(port) for _ in range(2)]
        await asyncio.sleep(0.1)  # the server took both
        assert _seconds_until_closed(_silent(port)) < TIMEOUT  # at once, not at the timeout
        for connection in held:
            connection.close()
        await eventually(lambda: _scrapes(port), within=5, what="a scrape answered")


def _scrapes(port: int) -> bool:
    try:
        return b"scraped_things_total 1.0" in _scraped(port)
    except OSError:  # closed at once: the held ones not gone yet
        return False


async def test_silent_sockets_on_the_servers_metrics_port_hold_at_most_the_cap_of_threads() -> None:
    app = await start(replace(TEST_SETTINGS, metrics_listen="127.0.0.1:0"), store=MemoryStore())
    try:
        assert app.metrics_server is not None
        _, _, port = app.metrics_server.address.rpartition(":")
        silent = [_silent(int(port)) for _ in range(MAX_CONNECTIONS * 3)]
        try:
            # Each connection beyond the cap is closed as it is accepted.
            await eventually(
                lambda: sum(_closed_by_server(s) for s in silent) >= MAX_CONNECTIONS * 2,
                within=10,
                what="the connections beyond the cap closed",
            )
            serving = [thread for thread in threading.enumerate() if thread.name == CONNECTION_THREAD]
            assert len(serving) == MAX_CONNECTIONS  # before: a thread for each of the 96, held for ever
        finally:
            for connection in silent:
                connection.close()
    finally:
        await app.stop(grace=0.5, drain=0)


def _closed_by_server(connection: socket.socket) -> bool:
    """Whether the server closed ``connection`` (without waiting)."""
    connection.setblocking(False)
    try:
        return connection.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True
