"""Prometheus metrics over HTTP, scraped while a real server works."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.store.memory import MemoryStore
from tests.support.blocking import ConflictOnce
from tests.support.grpc_client import Client, command, connect, running_server


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


async def scrape(app: Application) -> str:
    assert app.metrics_server is not None
    return await asyncio.to_thread(_get, f"http://{app.metrics_server.address}/metrics")


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when it has not appeared yet)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


@pytest.fixture
async def served() -> AsyncIterator[tuple[Application, Client, Any]]:
    store = ConflictOnce(MemoryStore())
    async with running_server(store, metrics_listen="127.0.0.1:0") as (app, client):
        yield app, client, store


async def test_command_counters_move_with_each_outcome(served: tuple[Application, Client, Any]) -> None:
    app, client, _ = served
    before = await scrape(app)
    await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    with pytest.raises(grpc.aio.AioRpcError):
        await client.submit(command("acc-1", bank.Withdraw(amount=5)))
    after = await scrape(app)
    opened = {"command_type": "bank.v1.OpenAccount", "outcome": "ok"}
    refused = {"command_type": "bank.v1.Withdraw", "outcome": "failed_precondition"}
    assert (
        sample(after, "chronicle_commands_total", **opened) == sample(before, "chronicle_commands_total", **opened) + 1
    )
    assert sample(after, "chronicle_commands_total", **refused) == 1
    assert sample(after, "chronicle_command_duration_seconds_count", command_type="bank.v1.OpenAccount") == 1


async def test_a_conflict_is_counted_and_retried(served: tuple[Application, Client, Any]) -> None:
    app, client, store = served
    response = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    text = await scrape(app)
    assert store.conflicted
    assert response.version == 1  # retried and won
    assert sample(text, "chronicle_concurrency_conflicts_total") == 1
    assert sample(text, "chronicle_store_operation_duration_seconds_count", operation="append") == 2


async def test_workers_and_store_latency_are_reported(served: tuple[Application, Client, Any]) -> None:
    app, client, _ = served
    await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    text = await scrape(app)
    assert sample(text, "chronicle_live_workers") == 1
    assert sample(text, "chronicle_queued_commands") == 0
    assert sample(text, "chronicle_store_operation_duration_seconds_count", operation="read_aggregate") >= 1


async def test_no_aggregate_id_becomes_a_label(served: tuple[Application, Client, Any]) -> None:
    app, client, _ = served
    await client.submit(command("acc-unique-7f3e", bank.OpenAccount(owner="ann")))
    assert "acc-unique-7f3e" not in await scrape(app)


async def test_refusals_before_a_command_is_read_are_counted(tmp_path: Any) -> None:
    from tests.support.security import POLICY, api_key_file, write

    async with running_server(
        MemoryStore(),
        metrics_listen="127.0.0.1:0",
        auth=True,
        policy_file=write(tmp_path / "policy.toml", POLICY),
        api_keys_file=api_key_file(tmp_path / "keys.toml", []),
    ) as (app, _):
        async with connect(app.address) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError):
                await anonymous.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        text = await scrape(app)
    assert sample(text, "chronicle_rpc_refusals_total", reason="NO_CREDENTIALS") == 1
