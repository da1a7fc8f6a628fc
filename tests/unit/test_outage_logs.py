"""A store outage is an outage, not a bug: callers hear STORE_UNAVAILABLE,
and the log says so once, without a traceback for every command it refuses
and without asyncio's "exception was never retrieved"."""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from collections.abc import Awaitable, Sequence
from typing import Any

import pytest
from google.protobuf.message import Message

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.audit import AuditLog
from service.errors import StoreUnavailable
from service.plugins.registry import Registry
from service.processing.commands import BatchResult, CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.middleware import _relay
from service.processing.router import Router
from service.store.base import Store
from service.store.memory import MemoryStore
from service.store.records import REFUSED, AuditEntry, NewEvent, RecordedEvent

REGISTRY = Registry([bank_account.plugin])


def request(message: Message) -> CommandRequest:
    spec = REGISTRY.command(message.DESCRIPTOR.full_name)
    assert spec is not None
    return CommandRequest(command_id=str(uuid.uuid4()), aggregate_id="acc-1", spec=spec, message=message)


class Down(MemoryStore):
    """A store whose appends and audit writes fail as an outage does, after a
    round trip (so that commands queue behind the first); ``down`` off: up."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def append(self, aggregate_id: str, events: Sequence[NewEvent], expected_version: int, **rest: Any) -> Any:
        if not self.down:
            return super().append(aggregate_id, events, expected_version, **rest)
        return asyncio.ensure_future(self._fail())

    async def _fail(self) -> list[RecordedEvent]:
        await asyncio.sleep(0.01)
        raise StoreUnavailable("the database is gone", reason="STORE_UNAVAILABLE")

    async def record_audit_entry(self, entry: AuditEntry) -> None:
        if self.down:
            await self._fail()
        await super().record_audit_entry(entry)


async def test_commands_queued_behind_an_outage_fail_unavailable_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Down()
    router = Router(CommandExecutor(Store.of(store), REGISTRY))
    await router.submit(request(bank.OpenAccount(owner="ann")))
    store.down = True
    with caplog.at_level(logging.INFO):
        outcomes = await asyncio.gather(
            *(router.submit(request(bank.Deposit(amount=1))) for _ in range(5)), return_exceptions=True
        )
    await router.close()
    assert [type(outcome) for outcome in outcomes] == [StoreUnavailable] * 5
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []


def test_an_error_relayed_to_a_caller_that_left_is_retrieved() -> None:
    unheard: list[dict[str, Any]] = []
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _, context: unheard.append(context))
    try:
        source: asyncio.Future[BatchResult] = loop.create_future()
        source.set_exception(StoreUnavailable("gone"))
        reply: asyncio.Future[BatchResult] = loop.create_future()
        reply.cancel()  # the caller gave up
        _relay(reply, source)
        del source
        gc.collect()
    finally:
        loop.close()
    assert unheard == []


async def test_audit_entries_lost_in_an_outage_are_said_once_and_counted_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Down()
    audit = AuditLog(store)

    def entry() -> AuditEntry:
        return AuditEntry(
            recorded_at_us=1,
            command_id=str(uuid.uuid4()),
            command_type="bank.v1.Deposit",
            aggregate_id="acc-1",
            principal="ann",
            user_id="ann",
            origin="test",
            outcome=REFUSED,
        )

    with caplog.at_level(logging.INFO, logger="service.audit"):
        store.down = True
        await gather(audit.record(entry()) for _ in range(4))
        store.down = False
        await audit.record(entry())
    said = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert [level for level, _ in said] == ["WARNING", "WARNING"]
    assert "lost until the store takes them again" in said[0][1]
    assert "4 could not be recorded" in said[1][1]


async def gather(calls: Any) -> None:
    awaitables: list[Awaitable[None]] = list(calls)
    await asyncio.gather(*awaitables)
