"""A bank log written straight through the executor, for tests of what
reads it (subscriptions, read-ahead, group sessions): no server."""

from __future__ import annotations

import uuid
from typing import Any

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.upcasting import EventReader
from service.store.base import Store
from service.store.grouping import GroupSpec
from service.store.memory import MemoryStore

REGISTRY = Registry([bank_account.plugin])
READER = EventReader(REGISTRY)


async def deposits(store: MemoryStore, count: int) -> None:
    """Account acc-1 opened, then ``count`` deposits of 1."""
    executor = CommandExecutor(Store.of(store), REGISTRY)

    async def run(message: Any) -> None:
        spec = REGISTRY.command(message.DESCRIPTOR.full_name)
        assert spec is not None
        request = CommandRequest(command_id=str(uuid.uuid4()), aggregate_id="acc-1", spec=spec, message=message)
        await executor.execute(request, None)

    await run(bank.OpenAccount(owner="ann"))
    for _ in range(count):
        await run(bank.Deposit(amount=1))


async def created_group(store: MemoryStore, spec: GroupSpec) -> GroupSpec:
    """Create group ``spec`` in ``store``: its settings as the store keeps
    them, incarnation included (what a session is opened with)."""
    await store.create_group(spec)
    state = await store.load_group(spec.name)
    assert state is not None
    return state.spec
