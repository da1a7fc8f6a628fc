"""Blocking plugin code is reported, not silently endured: a handler slower
than the threshold logs a warning with its command type, and a blocked event
loop is noticed by the watchdog."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import CommandContext, Plugin
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.watchdog import LoopLagWatchdog
from service.store.base import Store
from service.store.memory import MemoryStore
from tests.support.grpc_client import command, running_server

BLOCK_SECONDS = 0.05
TINY_THRESHOLD = 0.001

sleepy = Plugin("sleepy")
piggy_bank = sleepy.aggregate("PiggyBank", state=bank.Account)


@piggy_bank.command(bank.Deposit)
def deposit_slowly(command: bank.Deposit, state: bank.Account, context: CommandContext) -> bank.MoneyDeposited:
    time.sleep(BLOCK_SECONDS)  # the mistake under test: a blocking call in a handler
    return bank.MoneyDeposited(amount=command.amount)


@piggy_bank.apply(bank.MoneyDeposited)
def deposited(state: bank.Account, event: bank.MoneyDeposited) -> None:
    state.balance += event.amount


REGISTRY = Registry([sleepy])


def deposit(aggregate_id: str) -> CommandRequest:
    spec = REGISTRY.command("bank.v1.Deposit")
    assert spec is not None
    return CommandRequest(
        command_id=str(uuid.uuid4()), aggregate_id=aggregate_id, spec=spec, message=bank.Deposit(amount=1)
    )


def warnings_from(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and r.levelno == logging.WARNING]


async def test_a_handler_slower_than_the_threshold_is_reported_with_its_command_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    executor = CommandExecutor(Store.of(MemoryStore()), REGISTRY, slow_handler_seconds=TINY_THRESHOLD)
    with caplog.at_level(logging.WARNING, logger="service.processing.watchdog"):
        result, _ = await executor.execute(deposit("pig-1"), None)
    assert result.version == 1  # reported, not refused
    (warning,) = warnings_from(caplog, "service.processing.watchdog")
    assert re.fullmatch(
        r"slow handler: bank\.v1\.Deposit on 'pig-1' took \d+\.\d{3}s \(threshold \d+\.\d{3}s\); it blocked the event"
        r" loop, and every aggregate with it: keep handlers free of I/O and heavy work",
        warning.getMessage(),
    ), warning.getMessage()
    assert warning.command_type == "bank.v1.Deposit"  # type: ignore[attr-defined]
    assert warning.aggregate_id == "pig-1"  # type: ignore[attr-defined]
    assert warning.elapsed_seconds > TINY_THRESHOLD  # type: ignore[attr-defined]


async def test_a_zero_threshold_turns_the_handler_alarm_off(caplog: pytest.LogCaptureFixture) -> None:
    executor = CommandExecutor(Store.of(MemoryStore()), REGISTRY, slow_handler_seconds=0)
    with caplog.at_level(logging.WARNING, logger="service.processing.watchdog"):
        await executor.execute(deposit("pig-1"), None)
    assert warnings_from(caplog, "service.processing.watchdog") == []


async def test_the_server_reports_a_slow_handler_at_the_configured_threshold(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="service.processing.watchdog"):
        async with running_server(
            MemoryStore(), registry=REGISTRY, slow_handler_seconds=TINY_THRESHOLD, loop_lag_seconds=0
        ) as (_, client):
            response = await client.submit(command("pig-2", bank.Deposit(amount=3)))
    assert response.version == 1
    messages = [r.getMessage() for r in warnings_from(caplog, "service.processing.watchdog")]
    assert any(m.startswith("slow handler: bank.v1.Deposit on 'pig-2'") for m in messages), messages


async def test_the_watchdog_reports_a_blocked_event_loop(caplog: pytest.LogCaptureFixture) -> None:
    watchdog = LoopLagWatchdog(threshold=0.01)
    with caplog.at_level(logging.WARNING, logger="service.processing.watchdog"):
        watchdog.start()
        await asyncio.sleep(0)  # let it take its first timestamp
        time.sleep(0.1)  # noqa: ASYNC251  (the point: block the loop for ten times the threshold)
        # The watchdog's timer expired during the block, so the loop runs it
        # before this later one.
        await asyncio.sleep(0.05)
        await watchdog.stop()
    assert "event loop blocked for about" in warnings_from(caplog, "service.processing.watchdog")[0].getMessage()
