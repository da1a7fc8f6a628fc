"""While PostgreSQL is away, callers hear UNAVAILABLE STORE_UNAVAILABLE
with a fixed message ("the store is unavailable; retry shortly"), never the
driver's text, which names the database's host and port (what the server
connects to is none of an API caller's business); the server's log keeps
that text. Before, Submit and a live Subscribe ended with "PostgreSQL
unavailable during connect: connection failed: connection to server at
"127.0.0.1", port 5…" to any caller. A PostgreSQL of the test's own, stopped
under a running server, as a database outage is."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from urllib.parse import urlsplit

import grpc
import pytest

from chronicle.v1 import event_service_pb2 as ev
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.api import status
from service.app import start
from service.errors import STORE_UNREACHABLE
from tests.support.grpc_client import TEST_SETTINGS, ErrorDetails, command, connect, details_of
from tests.support.postgres import Cluster


def _leaks(details: ErrorDetails, error: grpc.aio.AioRpcError, host: str, port: str) -> list[str]:
    """What of the database's address, or of the driver's words, the caller was told."""
    told = [details.message, *details.metadata.values(), *(str(v) for _, v in error.trailing_metadata() or ())]
    return [text for text in told for secret in (host, port, "connection", "PostgreSQL") if secret in text]


async def _read_to_the_end(call: grpc.aio.UnaryStreamCall[ev.SubscribeRequest, ev.SubscribeResponse]) -> None:
    while True:  # checkpoints, if any, then the status
        await call.read()


async def test_callers_hear_a_fixed_message_and_the_log_keeps_the_drivers_text(
    private_cluster: Cluster, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status, "STORE_LOG_EVERY", 0.0)  # each failure logged, whatever other tests logged
    url = private_cluster.create_database()
    where = urlsplit(url)
    host, port = where.hostname or "", str(where.port)
    app = await start(replace(TEST_SETTINGS, database_url=url, health_interval=0.1))
    try:
        async with connect(app.address) as client:
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
            live = client.events.Subscribe(ev.SubscribeRequest(from_end=True))
            assert (await asyncio.wait_for(live.read(), 20)).HasField("caught_up")

            caplog.set_level(logging.WARNING, logger="service.api.status")
            private_cluster.stop("immediate")
            with pytest.raises(grpc.aio.AioRpcError) as submitted:
                await client.submit(command("acc-1", bank.Deposit(amount=5)))
            with pytest.raises(grpc.aio.AioRpcError) as subscribed:
                await asyncio.wait_for(_read_to_the_end(live), 30)
            refusals = [(details_of(e.value), e.value) for e in (submitted, subscribed)]
            for details, error in refusals:
                said = (details.code, details.reason, details.message, details.retry)
                assert said == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE", STORE_UNREACHABLE, True)
                assert _leaks(details, error, host, port) == []
            private_cluster.start()
    finally:
        await app.stop(grace=1)
    logged = [r.getMessage() for r in caplog.records if r.name == "service.api.status"]
    assert logged and "STORE_UNAVAILABLE" in logged[0] and port in logged[0], logged
