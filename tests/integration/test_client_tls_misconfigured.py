"""The Python client against a misconfigured TLS, over real sockets: its
TLS against a plaintext server, a CA that did not sign the TLS server's
certificate, a plaintext client at a TLS server (which only closes the
connection: the client asks the address for a TLS handshake), and a TLS
client without a certificate, or with another CA's, at a mutual TLS server
(which closes the connection after the handshake: the client makes one of
its own without a certificate). A unary call (and a read) raises ``Unavailable``
TLS_HANDSHAKE_FAILED at its first attempt instead of retrying for the
policy's 30 s; a subscription and a command stream warn once and raise it
once the policy's ``retry_for`` passed; a server that is away, or a
plaintext one that closes connections at once (at its limit), is still
retried, a TLS client too (service/client/handshake.py; the Node.js
client's clients/node/test/tls_misconfigured.test.js is the same)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.client import ChronicleClient, Command, RemoteError, RetryPolicy, Unavailable
from service.store.memory import MemoryStore
from tests.support.grpc_client import TEST_SETTINGS, running_server
from tests.support.security import Authority, write

# What grpc.ssl_channel_credentials takes for mutual TLS: the CA, the client's key and certificate.
TlsFiles = tuple[bytes, bytes, bytes]


@dataclass
class Servers:
    plain: Application
    secure: Application
    mutual: Application  # TLS, taking clients whose certificate ``ca`` signed
    ca: bytes  # signed the secure server's certificate
    other: bytes  # did not
    stranger: TlsFiles  # the CA, and a client key and certificate ``other`` signed


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[Servers]:
    ca, other = Authority(), Authority()
    issued = ca.issue("localhost", server=True)
    tls = replace(
        TEST_SETTINGS,
        tls_cert_file=write(tmp_path / "server.pem", issued.certificate),
        tls_key_file=write(tmp_path / "server.key", issued.key),
    )
    mutual_tls = replace(tls, tls_client_ca_file=write(tmp_path / "clients-ca.pem", ca.certificate))
    async with (
        running_server(MemoryStore()) as (plain, _),
        running_server(MemoryStore(), settings=tls) as (secure, _),
        running_server(MemoryStore(), settings=mutual_tls) as (mutual, _),
    ):
        stranger = other.issue("mallory")
        yield Servers(
            plain,
            secure,
            mutual,
            ca.certificate,
            other.certificate,
            (ca.certificate, stranger.key, stranger.certificate),
        )


# Each misconfiguration: where it meets which server with which CA (None:
# plaintext; or the CA, a client key and certificate), and what the error
# and the warning say of it.
CASES: dict[str, tuple[Callable[[Servers], tuple[str, bytes | TlsFiles | None]], str]] = {
    "TLS against a plaintext server": (lambda s: (s.plain.address, s.ca), "WRONG_VERSION_NUMBER"),
    "a CA that did not sign the certificate": (lambda s: (s.secure.address, s.other), "certificate"),
    "plaintext against a TLS server": (
        lambda s: (s.secure.address, None),
        "the server speaks TLS and this client plaintext",
    ),
    "no client certificate at a mutual TLS server": (
        lambda s: (s.mutual.address, s.ca),
        "the server requires a client certificate and took none from this client",
    ),
    "another CA's client certificate at a mutual TLS server": (
        lambda s: (s.mutual.address, s.stranger),
        "the server requires a client certificate and took none from this client",
    ),
}


def _connect(address: str, ca: bytes | TlsFiles | None, **options: Any) -> ChronicleClient:
    if ca is None:
        credentials = None
    else:
        credentials = grpc.ssl_channel_credentials(*ca) if isinstance(ca, tuple) else grpc.ssl_channel_credentials(ca)
    return ChronicleClient.connect(address, credentials=credentials, **options)


def _check(error: BaseException, address: str, said: str) -> None:
    assert isinstance(error, Unavailable), repr(error)
    assert error.reason == "TLS_HANDSHAKE_FAILED", error
    assert said in error.message and "credentials" in error.message, error.message
    assert error.metadata["address"] == address
    assert said in error.metadata["tls_error"]
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)  # gRPC's own status, as it came
    assert error.__cause__.code() == grpc.StatusCode.UNAVAILABLE


async def _raised(call: Callable[[], Awaitable[object]]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        await call()
    except Exception as error:  # what it raised is the test's to check
        return error, time.monotonic() - started
    return None, time.monotonic() - started


@pytest.mark.parametrize("case", CASES)
async def test_unary_calls_raise_tls_handshake_failed_at_once(
    servers: Servers, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    target, said = CASES[case]
    address, ca = target(servers)
    caplog.set_level(logging.INFO, logger="service.client")

    async def read() -> None:
        async for _ in client.read("acc-1"):
            pass

    async with _connect(address, ca) as client, _connect(address, ca, routing=True) as routed:  # the 30 s default
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "get_aggregate": lambda: client.get_aggregate("acc-1", bank.Account),
            "submit": lambda: client.submit("acc-1", bank.OpenAccount(owner="ann")),
            "submit_batch": lambda: client.submit_batch([Command("acc-1", bank.OpenAccount(owner="ann"))]),
            "read": read,
            "groups.list": client.groups.list,
            "routed submit": lambda: routed.submit("acc-1", bank.OpenAccount(owner="ann")),
        }
        for what, call in calls.items():
            error, seconds = await _raised(call)
            assert error is not None, what
            _check(error, address.replace("localhost", "127.0.0.1"), said)
            assert seconds < 5, f"{what} took {seconds:.1f} s (the retry window is 30 s)"
    assert [record.message for record in caplog.records if "attempt" in record.message] == []  # none retried


@pytest.mark.parametrize("case", CASES)
async def test_streams_warn_once_then_raise_tls_handshake_failed_after_the_window(
    servers: Servers, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    target, said = CASES[case]
    address, ca = target(servers)
    caplog.set_level(logging.WARNING, logger="service.client")

    async def subscribe() -> None:
        async for _ in client.subscribe(from_end=True):
            pass

    async def stream() -> None:
        async for _ in client.submit_stream([Command("acc-1", bank.OpenAccount(owner="ann"))]):
            pass

    async with _connect(address, ca, retry=RetryPolicy(retry_for=1.0)) as client:
        for what, call in {"subscribe": subscribe, "command stream": stream}.items():
            caplog.clear()
            error, seconds = await _raised(call)
            assert error is not None, what
            _check(error, address.replace("localhost", "127.0.0.1"), said)
            assert 0.9 <= seconds < 10, f"{what} ended after {seconds:.1f} s, the window being 1 s"
            told = [record.message for record in caplog.records if "TLS handshake" in record.message]
            assert len(told) == 1, told  # once for the outage, not once per retry
            assert what in told[0] and said in told[0], told[0]


async def test_a_unary_call_whose_server_is_away_is_retried_and_not_called_a_tls_failure(
    servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.client")
    async with _connect("127.0.0.1:1", servers.ca, retry=RetryPolicy(retry_for=1.0)) as client:
        error, seconds = await _raised(lambda: client.get_aggregate("acc-1", bank.Account))
    assert isinstance(error, RemoteError) and error.reason == "UNAVAILABLE", repr(error)
    assert seconds >= 0.5
    assert len([record for record in caplog.records if "attempt" in record.message]) >= 2
    assert not [record for record in caplog.records if "TLS" in record.message]


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "TLS"])
async def test_a_client_whose_server_closes_connections_at_once_is_retried(
    servers: Servers, tls: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A plaintext server that closes every connection as it accepts it, as
    one at its ``--max-connections`` does: it never completes a TLS
    handshake either, so neither a plaintext client's probe nor a TLS
    client's mistakes it."""

    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # what the client sent first: closed with it unread, the socket would be reset
        writer.close()

    server = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    caplog.set_level(logging.INFO, logger="service.client")
    try:
        async with _connect(
            f"127.0.0.1:{port}", servers.ca if tls else None, retry=RetryPolicy(retry_for=1.0)
        ) as client:
            error, seconds = await _raised(lambda: client.get_aggregate("acc-1", bank.Account))
    finally:
        server.close()
    assert isinstance(error, RemoteError) and error.reason == "UNAVAILABLE", repr(error)
    assert "Socket closed" in error.message
    assert seconds >= 0.5
    assert not [record for record in caplog.records if "TLS" in record.message]
