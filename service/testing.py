"""Test helpers for plugin authors: given past events, when a command, then
these events (or this error), one line each, on the memory store::

    from service.testing import Scenario

    def test_withdraw_more_than_balance_is_refused():
        (Scenario(bank_account.plugin, "acc-1")
            .given(bank.AccountOpened(owner="ann"), bank.MoneyDeposited(amount=10))
            .when(bank.Withdraw(amount=11))
            .then_fails(ValidationError, reason="INSUFFICIENT_FUNDS"))

The command runs through the real executor (the same decode-free path the
server uses after decoding), so idempotency, expected versions and the
event registration checks all apply.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

from google.protobuf.message import Message

from service.errors import ChronicleError
from service.plugins.api import Plugin
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest, CommandResult
from service.processing.executor import CommandExecutor
from service.store.memory import MemoryStore
from service.store.records import NewEvent


class ScenarioFailed(AssertionError):
    pass


class Scenario:
    def __init__(self, *plugins: Plugin, aggregate_id: str = "aggregate-1") -> None:
        self.registry = Registry(plugins)
        self.aggregate_id = aggregate_id
        self._given: list[Message] = []
        self._command: Message | None = None
        self._expected_version: int | None = None

    def given(self, *events: Message) -> Scenario:
        self._given.extend(events)
        return self

    def when(self, command: Message, *, expected_version: int | None = None) -> Scenario:
        self._command = command
        self._expected_version = expected_version
        return self

    async def _run(self) -> CommandResult:
        if self._command is None:
            raise ScenarioFailed("call .when(command) before .then…")
        store = MemoryStore()
        for version, event in enumerate(self._given):
            spec = self.registry.event(event.DESCRIPTOR.full_name)
            if spec is None:
                raise ScenarioFailed(f"given: {event.DESCRIPTOR.full_name} is not an event of these plugins")
            new = NewEvent(
                event_id=str(uuid.uuid4()),
                aggregate_type=spec.aggregate.name,
                event_type=spec.name,
                schema_version=spec.schema_version,
                payload=event.SerializeToString(),
                timestamp_us=time.time_ns() // 1000,
            )
            await store.append(self.aggregate_id, [new], version)
        command_spec = self.registry.command(self._command.DESCRIPTOR.full_name)
        if command_spec is None:
            raise ScenarioFailed(f"when: no handler for {self._command.DESCRIPTOR.full_name}")
        request = CommandRequest(
            command_id=str(uuid.uuid4()),
            aggregate_id=self.aggregate_id,
            spec=command_spec,
            message=self._command,
            expected_version=self._expected_version,
        )
        result, _ = await CommandExecutor(store, self.registry).execute(request, None)
        return result

    def _decode(self, result: CommandResult) -> list[Message]:
        decoded = []
        for event in result.events:
            spec = self.registry.event(event.event_type)
            assert spec is not None
            decoded.append(spec.message_type.FromString(event.payload))
        return decoded

    def then(self, *expected: Message) -> list[Message]:
        """Assert the command appends exactly ``expected``; return them."""
        events = self._decode(asyncio.run(self._run()))
        if events != list(expected):
            raise ScenarioFailed(f"expected events {_show(expected)}, got {_show(events)}")
        return events

    def then_fails(self, error: type[ChronicleError], *, reason: str | None = None) -> ChronicleError:
        """Assert the command is refused with ``error`` (and ``reason``)."""
        try:
            result = asyncio.run(self._run())
        except error as raised:
            if reason is not None and raised.reason != reason:
                raise ScenarioFailed(f"expected reason {reason}, got {raised.reason}: {raised.message}") from raised
            return raised
        raise ScenarioFailed(f"expected {error.__name__}, the command appended {_show(self._decode(result))}")


def _show(events: Sequence[Message]) -> str:
    return "[" + ", ".join(f"{e.DESCRIPTOR.name}({str(e).strip()!s})" for e in events) + "]"
