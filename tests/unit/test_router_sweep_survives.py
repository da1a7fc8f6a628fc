"""The router's sweeper outlives an unexpected error in one sweep."""

from __future__ import annotations

import uuid

import pytest

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.router import Router
from service.store.base import Store
from service.store.memory import MemoryStore
from tests.support.waiting import eventually

REGISTRY = Registry([bank_account.plugin])


async def test_a_sweep_that_fails_does_not_end_the_sweeper(monkeypatch: pytest.MonkeyPatch) -> None:
    # One failed sweep must not stop the sweeping for good: idle workers
    # would then pile up until the router refuses new aggregates.
    router = Router(CommandExecutor(Store.of(MemoryStore()), REGISTRY), idle_timeout=0.2)
    original = router.drop_idle
    calls = 0

    def failing_once(idle_before: float) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a sweep failed")
        return original(idle_before)

    monkeypatch.setattr(router, "drop_idle", failing_once)
    spec = REGISTRY.command(bank.OpenAccount.DESCRIPTOR.full_name)
    assert spec is not None
    opened = CommandRequest(
        command_id=str(uuid.uuid4()), aggregate_id="acc-1", spec=spec, message=bank.OpenAccount(owner="ann")
    )
    try:
        await router.submit(opened)  # the first worker starts the sweeper
        sweeper = router._sweeper
        assert sweeper is not None
        await eventually(lambda: calls >= 2 and router.live_workers == 0, what="the idle worker dropped")
        assert calls >= 2  # the first sweep failed, a later one dropped the worker
        assert not sweeper.done()
    finally:
        await router.close()
