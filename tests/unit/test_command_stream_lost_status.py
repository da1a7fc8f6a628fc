"""The Python client's command stream when grpc.aio loses a call's status
(grpc/grpc#36066: INTERNAL "Internal error from Core" in place of what the
server sent), against scripted calls: what it writes to the call it opens
to ask again, and when it gives up. The race itself, with a real server, is
in tests/integration/test_python_client_commands.py."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from chronicle.v1 import command_pb2
from chronicle.v1 import command_service_pb2 as pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import streaming
from service.client.commands import Command
from service.client.errors import RemoteError
from service.client.retry import NO_RETRIES
from service.client.streaming import CommandStream, commands_of
from tests.support.broken_calls import lost

LOST = ("Internal error from Core", grpc.StatusCode.INTERNAL)


class ScriptedCall:
    """One call of SubmitStreamPages (or SubmitStream). ``ends_with``: the
    error its first read raises, at once; otherwise it answers every command
    written, and ends once the client has half-closed and all are answered.
    ``accepts``: its initial metadata comes at once (a server that sends it
    when it accepts a stream); otherwise never (one that sends it with its
    first answer only). ``ended``: over before the client could write."""

    def __init__(
        self, paged: bool, *, ends_with: Exception | None = None, accepts: bool = True, ended: bool = False
    ) -> None:
        self.paged = paged
        self.ends_with = ends_with
        self.accepts = accepts
        self.ended = ended
        self.written: list[Any] = []
        self.first_write_at: float | None = None
        self.opened_at = asyncio.get_running_loop().time()
        self._answers: asyncio.Queue[Any] = asyncio.Queue()
        self._half_closed = False
        self._unanswered = 0

    async def initial_metadata(self) -> Any:
        if not self.accepts and not self.ended:
            await asyncio.Event().wait()
        return grpc.aio.Metadata()

    def done(self) -> bool:
        return self.ended

    def cancel(self) -> bool:
        return True

    async def write(self, message: Any) -> None:
        if self.first_write_at is None:
            self.first_write_at = asyncio.get_running_loop().time()
        self.written.append(message)
        requests = list(message.requests) if self.paged else [message]
        self._unanswered += len(requests)
        results = [pb.SubmitStreamResponse(command_id=r.command.command_id, ok=pb.SubmitResponse()) for r in requests]
        if self.paged:
            self._answers.put_nowait(pb.SubmitResultPage(results=results))
        else:
            for result in results:
                self._answers.put_nowait(result)

    async def done_writing(self) -> None:
        self._half_closed = True
        if self._unanswered == 0:
            self._answers.put_nowait(grpc.aio.EOF)

    async def read(self) -> Any:
        if self.ends_with is not None:
            raise self.ends_with
        answer = await self._answers.get()
        if answer is not grpc.aio.EOF:
            self._unanswered -= len(answer.results) if self.paged else 1
            if self._half_closed and self._unanswered == 0:
                self._answers.put_nowait(grpc.aio.EOF)
        return answer


def _encode(command: Command) -> pb.SubmitRequest:
    return pb.SubmitRequest(command=command_pb2.Command(command_id=command.command_id))


async def _run(calls: list[ScriptedCall], commands: list[Command]) -> list[Any]:
    opened: list[bool] = []

    def open_call(paged: bool, broken: grpc.StatusCode | None) -> ScriptedCall:
        assert broken is None  # asked again: nothing is known to have broken
        opened.append(paged)
        call = calls[len(opened) - 1]
        assert call.paged == paged
        return call

    stream = CommandStream(open_call, commands_of(commands), _encode, retry=NO_RETRIES, dry_run=False)
    return [result async for result in stream.results()]


def _commands(count: int) -> list[Command]:
    return [Command(f"acc-{i}", bank.OpenAccount(owner="ann")) for i in range(count)]


async def test_the_call_asked_again_is_written_once_the_server_accepted_it() -> None:
    commands = _commands(3)
    lost_one = ScriptedCall(True, ends_with=lost(*LOST))
    again = ScriptedCall(True)
    results = await _run([lost_one, again], commands)
    assert [r.command_id for r in results] == [c.command_id for c in commands]
    assert all(r.error is None for r in results)
    assert [r.command.command_id for page in again.written for r in page.requests] == [c.command_id for c in commands]


async def test_a_server_that_does_not_say_it_accepted_gets_the_commands_after_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server of this project from before it sent initial metadata at the
    # start of a stream answers only once it has a command.
    monkeypatch.setattr(streaming, "_ANSWER_WAIT", 0.05)
    commands = _commands(2)
    lost_one = ScriptedCall(True, ends_with=lost(*LOST))
    silent = ScriptedCall(True, accepts=False)
    results = await _run([lost_one, silent], commands)
    assert [r.command_id for r in results] == [c.command_id for c in commands]
    assert silent.first_write_at is not None and silent.first_write_at - silent.opened_at >= 0.05


async def test_a_call_that_ended_before_it_was_accepted_is_not_written_to() -> None:
    # Asked again, an older server refuses SubmitStreamPages at once: the
    # client writes nothing to that call, and goes on over SubmitStream.
    commands = _commands(2)
    lost_one = ScriptedCall(True, ends_with=lost(*LOST))
    refused = ScriptedCall(True, ended=True, ends_with=lost("Method not found!", grpc.StatusCode.UNIMPLEMENTED))
    unpaged = ScriptedCall(False)
    results = await _run([lost_one, refused, unpaged], commands)
    assert [r.command_id for r in results] == [c.command_id for c in commands]
    assert refused.written == []
    assert [r.command.command_id for r in unpaged.written] == [c.command_id for c in commands]


async def test_statuses_lost_again_and_again_end_the_stream_with_the_error() -> None:
    calls = [ScriptedCall(True, ends_with=lost(*LOST)) for _ in range(streaming._MAX_LOST_STATUSES + 1)]
    with pytest.raises(RemoteError) as raised:
        await _run(calls, _commands(1))
    assert raised.value.code == grpc.StatusCode.INTERNAL


async def test_a_server_s_own_internal_error_is_not_asked_again() -> None:
    # One call only: a second one opened would fail the test with IndexError.
    calls = [ScriptedCall(True, ends_with=lost("internal error", grpc.StatusCode.INTERNAL))]
    with pytest.raises(RemoteError) as raised:
        await _run(calls, _commands(1))
    assert raised.value.code == grpc.StatusCode.INTERNAL and raised.value.message == "internal error"
