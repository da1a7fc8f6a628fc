"""``CommandService.SubmitStream`` for the client: many commands over one
call, their results in the order sent, and a broken stream resumed without
losing or repeating a command.

Two tasks share one call: a pump takes the caller's commands and writes
them (at most ``window`` unanswered, so a fast producer waits), and the
caller's iteration reads the results. Each command stays in ``pending``
until its result arrives. When the call breaks with an error the retry
policy retries (a replica shutting down, a dropped connection), a new call
is opened and the pending commands are sent again, first and in order, with
their command ids: the server runs a command id at most once, so a command
that had run comes back as its recorded result (``replayed``) and nothing
is appended twice. Every result received renews the retry budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from chronicle.v1 import command_service_pb2
from service.client.commands import Command
from service.client.errors import RemoteError, command_error, remote_error
from service.client.results import StreamResult, Submitted
from service.client.retry import RetryPolicy

log = logging.getLogger(__name__)
# Commands sent and not yet answered: what a broken stream sends again. The
# server starts up to 256 of one stream at once; more would only queue.
DEFAULT_WINDOW = 256


@dataclass(frozen=True, slots=True)
class _Sent:
    command: Command
    request: command_service_pb2.SubmitRequest


async def commands_of(commands: Iterable[Command] | AsyncIterable[Command]) -> AsyncIterator[Command]:
    if isinstance(commands, AsyncIterable):
        async for command in commands:
            yield command
    else:
        for command in commands:
            yield command


class CommandStream:
    def __init__(
        self,
        open_call: Callable[[], Any],
        commands: AsyncIterator[Command],
        encode: Callable[[Command], command_service_pb2.SubmitRequest],
        *,
        retry: RetryPolicy,
        dry_run: bool,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if window < 1:
            raise ValueError("a stream's window is at least one command")
        self._open_call = open_call
        self._commands = commands
        self._encode = encode
        self._retry = retry
        self._dry_run = dry_run
        self._window = window
        self._pending: deque[_Sent] = deque()
        self._space = asyncio.Event()  # set when a result frees a place in the window
        self._writing = asyncio.Lock()  # one writer on the call; no write while the call is replaced
        self._exhausted = False  # every command was taken from the caller
        self._call: Any = None

    async def results(self) -> AsyncGenerator[StreamResult, None]:
        """The results, in the order the commands were taken."""
        pump = asyncio.create_task(self._pump())
        attempt = 1
        try:
            await self._reopen()
            while True:
                try:
                    response = await self._next_response(pump)
                except grpc.aio.AioRpcError as failed:
                    cause, error = failed, remote_error(failed)
                    wait = self._retry.delay(attempt, error)
                    if wait is None:
                        raise error from cause
                    log.info(
                        "command stream broke with %s; %d commands to send again in %.3fs",
                        error,
                        len(self._pending),
                        wait,
                    )
                    await asyncio.sleep(wait)
                    attempt += 1
                    await self._reopen()
                    continue
                if response is grpc.aio.EOF:
                    if self._pending:
                        raise _protocol_error(f"the stream ended with {len(self._pending)} commands unanswered")
                    return
                attempt = 1
                yield self._result(response)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            if self._call is not None:
                self._call.cancel()

    def _result(self, response: command_service_pb2.SubmitStreamResponse) -> StreamResult:
        sent = self._pending.popleft()
        self._space.set()
        if response.command_id != sent.command.command_id:
            raise _protocol_error(
                f"expected the result of command {sent.command.command_id}, got one for {response.command_id!r}"
            )
        if response.HasField("error"):
            return StreamResult(sent.command, None, command_error(response.error))
        return StreamResult(
            sent.command, Submitted.of(sent.command.command_id, response.ok, dry_run=self._dry_run), None
        )

    async def _next_response(self, pump: asyncio.Task[None]) -> Any:
        """The next message of the current call (or EOF); the caller's error
        instead if taking its next command failed."""
        read = asyncio.ensure_future(self._call.read())
        if not pump.done():
            await asyncio.wait({read, pump}, return_when=asyncio.FIRST_COMPLETED)
        if pump.done() and not pump.cancelled() and (failure := pump.exception()) is not None:
            read.cancel()
            raise failure
        return await read

    async def _pump(self) -> None:
        async for command in self._commands:
            while len(self._pending) >= self._window:
                self._space.clear()
                await self._space.wait()
            sent = _Sent(command, self._encode(command))
            async with self._writing:
                self._pending.append(sent)
                await self._write(sent.request)
        async with self._writing:
            self._exhausted = True
            await self._done_writing()

    async def _reopen(self) -> None:
        if self._call is not None:
            self._call.cancel()  # first: a write waiting on the broken call returns
        async with self._writing:
            self._call = self._open_call()
            for sent in self._pending:
                await self._write(sent.request)
            if self._exhausted:
                await self._done_writing()

    # A write to a call that failed raises; the reader sees the call's status
    # and reopens, sending every pending command again.
    async def _write(self, request: command_service_pb2.SubmitRequest) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._call.write(request)

    async def _done_writing(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._call.done_writing()


def _protocol_error(message: str) -> RemoteError:
    return RemoteError(message, code=grpc.StatusCode.INTERNAL, reason="STREAM_PROTOCOL_ERROR")
