"""The gRPC port holds a connection that never finishes its handshake no
longer than --handshake-timeout-seconds, and at most --max-connections at
once; the server raises its limit on open files to the hard limit at start
(docs/deployment.md, "Connections and file descriptors"). Sockets that
never send a byte used to be held 120 s each, uncapped, until the process
ran out of descriptors."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api.server import MAX_MILLISECONDS, milliseconds
from service.app import Application, start
from service.settings import Settings
from service.store.memory import MemoryStore
from tests.support.grpc_client import TEST_SETTINGS
from tests.support.processes import free_port, wait_until_serving
from tests.support.security import Authority, server_tls_files

HANDSHAKE = 0.5


async def _served(settings: Settings) -> Application:
    return await start(settings, store=MemoryStore())


async def _idle_socket(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection that never sends a byte (no TLS ClientHello, no HTTP/2 preface)."""
    host, _, port = address.rpartition(":")
    return await asyncio.open_connection(host, int(port))


async def _seconds_until_closed(reader: asyncio.StreamReader) -> float:
    """How long until the server closes the connection (what it sends first, its
    HTTP/2 settings and a GOAWAY, read and dropped)."""
    started = time.monotonic()
    async with asyncio.timeout(15):
        while await reader.read(4096):
            pass
    return time.monotonic() - started


async def _healthy(address: str, credentials: grpc.ChannelCredentials | None = None) -> bool:
    channel = (
        grpc.aio.secure_channel(address, credentials) if credentials is not None else grpc.aio.insecure_channel(address)
    )
    async with channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


async def test_a_plaintext_connection_that_sends_nothing_is_closed_at_the_handshake_timeout() -> None:
    app = await _served(replace(TEST_SETTINGS, handshake_timeout_seconds=HANDSHAKE))
    try:
        reader, writer = await _idle_socket(app.address)
        assert await _seconds_until_closed(reader) < HANDSHAKE + 3  # gRPC's own default: 120 s
        writer.close()
    finally:
        await app.stop(grace=0.5, drain=0)


async def test_a_connection_that_never_starts_tls_is_closed_at_the_handshake_timeout(tmp_path: Path) -> None:
    authority = Authority()
    cert_file, key_file = server_tls_files(tmp_path, authority)
    settings = replace(
        TEST_SETTINGS, handshake_timeout_seconds=HANDSHAKE, tls_cert_file=cert_file, tls_key_file=key_file
    )
    app = await _served(settings)
    try:
        reader, writer = await _idle_socket(app.address)
        assert await _seconds_until_closed(reader) < HANDSHAKE + 3
        writer.close()
        trusting = grpc.ssl_channel_credentials(root_certificates=authority.certificate)
        assert await _healthy(app.address.replace("127.0.0.1", "localhost"), trusting)
    finally:
        await app.stop(grace=0.5, drain=0)


async def test_connections_beyond_the_cap_are_closed_at_once_until_the_held_ones_go() -> None:
    app = await _served(replace(TEST_SETTINGS, max_connections=2, handshake_timeout_seconds=3.0))
    try:
        held = [await _idle_socket(app.address) for _ in range(2)]
        reader, writer = await _idle_socket(app.address)
        assert await reader.read(4096) == b""  # closed at once: not even HTTP/2's settings
        writer.close()
        assert not await _healthy(app.address)  # the cap counts connections still in their handshake
        for _, held_writer in held:
            held_writer.close()
        await asyncio.sleep(0.5)  # the server notices they closed
        assert await _healthy(app.address)
    finally:
        await app.stop(grace=0.5, drain=0)


SOFT = 512


HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]


@pytest.mark.skipif(
    HARD == resource.RLIM_INFINITY or HARD <= SOFT, reason="needs a finite hard limit on open files above 512"
)
def test_the_server_raises_its_open_files_limit_to_the_hard_limit_and_says_so(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        serve = ["serve", "--listen", address, "--database-url", "memory://", "--max-connections", str(HARD)]
        process = subprocess.Popen(
            [sys.executable, "-m", "service", *serve],
            stdout=log,
            stderr=subprocess.STDOUT,
            # As a shell with `ulimit -Sn 512` would start it.
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD)),
            env=os.environ.copy(),
            text=True,
        )
    try:
        wait_until_serving(address, process=process)
        limits = Path(f"/proc/{process.pid}/limits").read_text()
    finally:
        process.kill()
        process.wait(10)
    (open_files,) = [line.split() for line in limits.splitlines() if line.startswith("Max open files")]
    assert open_files[3:5] == [str(HARD), str(HARD)]
    shown = log_path.read_text()
    assert f"raised the limit on open files (RLIMIT_NOFILE) from {SOFT} to {HARD}, the hard limit" in shown
    # No room for HARD connections and the server's own descriptors: said too.
    assert f"the process may open {HARD} files, fewer than --max-connections ({HARD}) plus 1024" in shown


async def test_connection_durations_longer_than_grpc_takes_are_cut_to_its_longest() -> None:
    """gRPC's channel arguments are C ints of milliseconds (24.8 days at
    most): 30 days was an OverflowError that stopped the server at start
    with a traceback (README, "Settings")."""
    month = 30 * 86_400.0
    settings = replace(
        TEST_SETTINGS,
        keepalive_seconds=month,
        keepalive_timeout_seconds=month,
        min_client_ping_seconds=month,
        max_connection_age_seconds=month,
        max_connection_age_grace_seconds=month,
        max_connection_idle_seconds=month,
        handshake_timeout_seconds=month,
    )
    app = await _served(settings)
    try:
        assert await _healthy(app.address)
    finally:
        await app.stop(grace=0.5, drain=0)
    assert milliseconds(month) == MAX_MILLISECONDS == 2**31 - 1
    assert milliseconds(0.5) == 500
