"""The command pipeline: hook order, refusals, and failing hooks."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import HandlerFailed, PermissionDenied, ValidationError
from service.plugins.middleware import CommandCall, Middleware
from service.plugins.registry import Registry
from service.principal import Principal
from service.processing.commands import BatchResult, CommandBatch, CommandRequest, CommandResult
from service.processing.middleware import Pipeline

REGISTRY = Registry([bank_account.plugin])
ALICE = Principal("alice", "jwt")


def request() -> CommandRequest:
    spec = REGISTRY.command("bank.v1.Deposit")
    assert spec is not None
    return CommandRequest(command_id=str(uuid.uuid4()), aggregate_id="acc-1", spec=spec, message=bank.Deposit(amount=1))


class Recorder(Middleware):
    def __init__(self, name: str, log: list[str], *, refuse: bool = False, fail_after: bool = False) -> None:
        self.name = name
        self.log = log
        self.calls: list[CommandCall] = []
        self._refuse = refuse
        self._fail_after = fail_after

    async def before(self, call: CommandCall) -> None:
        self.log.append(f"{self.name}.before")
        if self._refuse:
            raise PermissionDenied("no", reason="NOPE")

    async def after(self, call: CommandCall) -> None:
        self.log.append(f"{self.name}.after")
        self.calls.append(call)
        if self._fail_after:
            raise RuntimeError("a bug in a hook")

    async def on_error(self, call: CommandCall) -> None:
        self.log.append(f"{self.name}.on_error")
        self.calls.append(call)


async def succeed(request: CommandRequest) -> CommandResult:
    return CommandResult((), 7)


async def fail(request: CommandRequest) -> CommandResult:
    raise ValidationError("refused", reason="RULE")


async def test_before_hooks_run_in_order_and_after_hooks_in_reverse() -> None:
    log: list[str] = []
    pipeline = Pipeline(succeed, [Recorder("outer", log), Recorder("inner", log)])
    await pipeline.submit(request(), ALICE)
    assert log == ["outer.before", "inner.before", "inner.after", "outer.after"]


async def test_after_hooks_see_the_result_principal_and_elapsed_time() -> None:
    recorder = Recorder("m", [])
    sent = request()
    await Pipeline(succeed, [recorder]).submit(sent, ALICE)
    (call,) = recorder.calls
    assert call.result == CommandResult((), 7)
    assert (call.command_id, call.command_type, call.aggregate_type) == (sent.command_id, "bank.v1.Deposit", "Account")
    assert call.principal == ALICE
    assert call.elapsed >= 0
    assert call.error is None


async def test_a_failed_command_reaches_every_on_error_hook_with_the_error() -> None:
    log: list[str] = []
    outer, inner = Recorder("outer", log), Recorder("inner", log)
    with pytest.raises(ValidationError):
        await Pipeline(fail, [outer, inner]).submit(request(), ALICE)
    assert log == ["outer.before", "inner.before", "inner.on_error", "outer.on_error"]
    assert isinstance(outer.calls[0].error, ValidationError)
    assert outer.calls[0].refused_by == ""


async def test_a_before_hook_refuses_and_only_outer_middleware_sees_it() -> None:
    log: list[str] = []
    processed: list[CommandRequest] = []

    async def process(request: CommandRequest) -> CommandResult:
        processed.append(request)
        return CommandResult((), 1)

    outer = Recorder("outer", log)
    pipeline = Pipeline(process, [outer, Recorder("gate", log, refuse=True), Recorder("inner", log)])
    with pytest.raises(PermissionDenied):
        await pipeline.submit(request(), ALICE)
    assert processed == []
    assert log == ["outer.before", "gate.before", "outer.on_error"]
    assert outer.calls[0].refused_by == "gate"


async def test_a_failing_after_hook_does_not_change_the_outcome() -> None:
    log: list[str] = []
    pipeline = Pipeline(succeed, [Recorder("outer", log), Recorder("buggy", log, fail_after=True)])
    assert await pipeline.submit(request(), ALICE) == CommandResult((), 7)
    assert log[-1] == "outer.after"


async def succeed_batch(batch: CommandBatch) -> BatchResult:
    return BatchResult(tuple(CommandResult((), i + 1) for i in range(len(batch.commands))), len(batch.commands))


async def test_a_batch_passes_each_hook_once_per_command_and_each_after_hook_sees_its_result() -> None:
    log: list[str] = []
    recorder = Recorder("outer", log)
    pipeline = Pipeline(succeed, [recorder, Recorder("inner", log)], submit_batch=succeed_batch)
    batch = CommandBatch((request(), request()), dry_run=True)
    await pipeline.submit_batch(batch, ALICE)
    assert log == ["outer.before"] * 2 + ["inner.before"] * 2 + ["inner.after"] * 2 + ["outer.after"] * 2
    assert {(c.command_id, c.result) for c in recorder.calls} == {
        (batch.commands[0].command_id, CommandResult((), 1)),
        (batch.commands[1].command_id, CommandResult((), 2)),
    }
    assert all(c.dry_run for c in recorder.calls)


async def test_a_refused_command_refuses_its_batch_naming_the_command() -> None:
    class RefuseSecond(Middleware):
        name = "gate"

        async def before(self, call: CommandCall) -> None:
            if call.command_id == batch.commands[1].command_id:
                raise PermissionDenied("no", reason="NOPE")

    log: list[str] = []
    outer = Recorder("outer", log)
    batch = CommandBatch((request(), request()))
    pipeline = Pipeline(succeed, [outer, RefuseSecond()], submit_batch=succeed_batch)
    with pytest.raises(PermissionDenied) as raised:
        await pipeline.submit_batch(batch, ALICE)
    assert raised.value.metadata["batch_index"] == "1"
    assert log == ["outer.before", "outer.before", "outer.on_error", "outer.on_error"]
    assert {c.refused_by for c in outer.calls} == {"gate"}


class Buggy(Middleware):
    """A ``before`` hook with a bug of its own (a plain function, so the
    pipeline may also start commands inline)."""

    name = "buggy"

    def before(self, call: CommandCall) -> None:
        raise KeyError("a bug in a hook")


class Outer(Middleware):
    name = "outer"

    def __init__(self) -> None:
        self.failed: list[CommandCall] = []

    def on_error(self, call: CommandCall) -> None:
        self.failed.append(call)


def started_inline(batch: CommandBatch, *, finish: object = None) -> asyncio.Future[BatchResult]:
    raise AssertionError("a refused command never reaches its worker")


@pytest.mark.parametrize("path", ["submit", "start", "submit_batch"])
async def test_a_before_hook_that_fails_refuses_the_command_naming_the_middleware(path: str) -> None:
    outer = Outer()
    pipeline = Pipeline(succeed, [outer, Buggy()], submit_batch=succeed_batch, start=started_inline)

    async def send() -> object:
        if path == "submit":
            return await pipeline.submit(request(), ALICE)
        if path == "submit_batch":
            return await pipeline.submit_batch(CommandBatch((request(),)), ALICE)
        started = pipeline.start(request(), ALICE)
        assert started is not None
        return await started

    with pytest.raises(HandlerFailed) as raised:
        await send()
    assert raised.value.reason == "MIDDLEWARE_FAILED"
    assert raised.value.metadata["middleware"] == "buggy"
    assert isinstance(raised.value.__cause__, KeyError)
    # The outer middleware's on_error sees what the client does.
    assert [(type(call.error), call.refused_by) for call in outer.failed] == [(HandlerFailed, "buggy")]
