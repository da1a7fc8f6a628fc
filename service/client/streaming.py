"""``CommandService.SubmitStreamPages`` (``SubmitStream`` on a server that
predates it) for the client: many commands over one call, their results in
the order sent, and a broken stream resumed without losing or repeating a
command.

Three tasks share one call: a pump takes the caller's commands (at most
``window`` unanswered, so a fast producer waits), a writer sends what the
pump took since its last write as one page (one message for as many
commands as came meanwhile, bounded by bytes), and the caller's iteration
reads the results, a page of them at a time. Each command stays in
``pending`` until its result arrives. When the call breaks with an error the
retry policy retries (a replica shutting down, a dropped connection), a new
call is opened and the pending commands are sent again, first and in order,
with their command ids: the server runs a command id at most once, so a
command that had run comes back as its recorded result (``replayed``) and
nothing is appended twice. The default policy reopens the call for as long
as the stream is iterated (no ``max_attempts``); one that sets it counts
the reopenings in a row, and every result received renews them.
A server that answers the paged call UNIMPLEMENTED gets the same commands
over ``SubmitStream``, one message each, from then on.

grpc.aio can lose a call's status: when the server ends the call (any
status, UNIMPLEMENTED from an older server among them) as the client
writes, the write fails and grpc.aio reports INTERNAL "Internal error from
Core" instead (grpc/grpc#36066; ``errors.status_lost``). The stream then
asks again: the same method on the same server, with the pending commands
held back until the server has answered the new call (its initial
metadata, which the server sends as it starts a stream) or ended it, so
that no write races its status. What the server says then is handled as
above.

A call whose server stops answering while commands wait for their results
(``answer_timeout`` without a message: a server whose process hung, its
connection still answering pings) is treated as broken with
DEADLINE_EXCEEDED, the client's own (no ErrorInfo), and reopened as above;
a routing client moves the lane off that member.

Each call is opened by ``open_call(paged, broken)`` (``OpenCall``), told
which error, if any, broke the call before it: a routing client moves a
lane to another member only when that error says its member is gone or
did not answer (routed_stream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from chronicle.v1 import command_service_pb2
from service.client.commands import Command
from service.client.errors import DeadlineExceeded, RemoteError, command_error, remote_error, status_lost
from service.client.handshake import HandshakeWatch
from service.client.results import StreamResult, Submitted
from service.client.retry import RetryPolicy, log_retry
from service.client.stopping import stop

log = logging.getLogger(__name__)
# Commands sent and not yet answered: what a broken stream sends again. The
# server starts up to 256 of one stream at once; more would only queue.
DEFAULT_WINDOW = 256
# A page of commands is closed before its requests pass this many bytes (a
# larger command goes alone): far below any message limit a server would
# set, and still a window's worth of ordinary commands.
PAGE_BYTES = 64 * 1024
# What a request adds to a page's size besides its own bytes: the field's
# tag and the length, at most.
_FRAMING_BYTES = 6
# Statuses grpc.aio may lose in a row before the stream gives up asking.
_MAX_LOST_STATUSES = 3
# How long a call asked again after a lost status waits for the server's
# answer before its commands are written anyway: a server of this project
# from before it sent initial metadata at the start of a stream answers
# only after the first command.
_ANSWER_WAIT = 1.0


@dataclass(frozen=True, slots=True)
class _Sent:
    command: Command
    request: command_service_pb2.SubmitRequest


class StreamMethod:
    """Which RPC a client's command streams use: SubmitStreamPages, until a
    server answers it UNIMPLEMENTED (one that predates it); SubmitStream
    from then on."""

    def __init__(self, paged: bool = True) -> None:
        self.paged = paged


async def commands_of(commands: Iterable[Command] | AsyncIterable[Command]) -> AsyncIterator[Command]:
    if isinstance(commands, AsyncIterable):
        async for command in commands:
            yield command
    else:
        for command in commands:
            yield command


# ``open_call(paged, broken)``: a new SubmitStreamPages call (``paged``) or
# SubmitStream call. ``broken``: the error that ended the previous call (one
# the retry policy retries), with the status's reason and message; None for
# the first call, for the SubmitStream call that follows a SubmitStreamPages
# the server answered UNIMPLEMENTED (the server is older, not gone), and for
# a call asked again after grpc.aio lost a status (nothing is known to have
# broken).
OpenCall = Callable[[bool, RemoteError | None], Any]


class CommandStream:
    def __init__(
        self,
        open_call: OpenCall,
        commands: AsyncIterator[Command],
        encode: Callable[[Command], command_service_pb2.SubmitRequest],
        *,
        retry: RetryPolicy,
        dry_run: bool,
        window: int = DEFAULT_WINDOW,
        method: StreamMethod | None = None,
        answer_timeout: float | None = None,
    ) -> None:
        """``open_call(paged, broken)`` opens each call (``OpenCall``);
        ``answer_timeout``: the longest wait for a message while commands
        written on the call are unanswered (None: no bound)."""
        if window < 1:
            raise ValueError("a stream's window is at least one command")
        if answer_timeout is not None and not answer_timeout > 0:
            raise ValueError("a stream's answer timeout is positive (None: no bound)")
        self._answer_timeout = answer_timeout
        # Since when the stream has waited for a message with commands
        # written and unanswered (time.monotonic): the last message, or the
        # write that ended a time with none outstanding.
        self._waiting_since = 0.0
        self._open_call = open_call
        self._commands = commands
        self._encode = encode
        self._retry = retry
        self._dry_run = dry_run
        self._window = window
        self._method = method or StreamMethod()
        self._paged = self._method.paged  # what the current call is
        self._pending: deque[_Sent] = deque()
        self._unsent = 0  # the last this many of ``pending`` were not written yet
        self._space = asyncio.Event()  # set when a result frees a place in the window
        self._taken = asyncio.Event()  # set when the pump took a command, or took the last
        self._writing = asyncio.Lock()  # one writer on the call; no write while the call is replaced
        self._exhausted = False  # every command was taken from the caller
        self._call: Any = None
        self._opened_at = 0.0  # when the current call was opened (time.monotonic)
        self._handshakes = HandshakeWatch(
            "command stream", retry.retry_for, probe=retry.probe_tls, probe_certificate=retry.probe_client_certificate
        )

    async def results(self) -> AsyncGenerator[StreamResult, None]:
        """The results, in the order the commands were taken."""
        pump = asyncio.create_task(self._pump())
        writer = asyncio.create_task(self._writer())
        attempt = 1
        lost = 0  # statuses grpc.aio lost in a row
        try:
            await self._reopen(None)
            while True:
                try:
                    message = await self._next_message(pump, writer)
                except _Unanswered as stalled:
                    # Never a fresh start, however long the call was open: a
                    # server that never answers spends the attempts.
                    attempt = await self._reopen_after(attempt, stalled.error, None)
                    continue
                except grpc.aio.AioRpcError as failed:
                    if status_lost(failed) and lost < _MAX_LOST_STATUSES:
                        lost += 1
                        log.info("grpc.aio lost the command stream's status; asking the server again")
                        await self._reopen(None, answered_first=True)  # nothing is known to have broken
                        continue
                    if failed.code() == grpc.StatusCode.UNIMPLEMENTED and self._paged:
                        log.info("the server has no SubmitStreamPages; using SubmitStream")
                        self._method.paged = False
                        await self._reopen(None)  # the same server, only older: nothing broke
                        continue
                    if time.monotonic() - self._opened_at >= self._retry.renew_after:
                        attempt = 1  # the call lived (a token's expiry, a connection's age): start afresh
                    attempt = await self._reopen_after(attempt, remote_error(failed), failed)
                    continue
                if message is grpc.aio.EOF:
                    if self._pending:
                        raise _protocol_error(f"the stream ended with {len(self._pending)} commands unanswered")
                    return
                attempt, lost = 1, 0
                self._handshakes.received()
                if self._paged:
                    for response in message.results:
                        yield self._result(response)
                else:
                    yield self._result(message)
        finally:
            try:
                await stop(pump, writer)
            finally:
                if self._call is not None:
                    self._call.cancel()

    async def _reopen_after(self, attempt: int, error: RemoteError, cause: BaseException | None) -> int:
        """After ``error`` broke attempt ``attempt``: wait the retry
        policy's delay and open the call again, its pending commands sent
        again; the next attempt's number. Raise ``error`` once the policy
        gives up."""
        refused = await self._handshakes.failed(error)  # warns of a TLS failure; one that lasts is raised
        if refused is not None:
            raise refused from cause
        wait = self._retry.delay(attempt, error)  # a stream: no bound in time, only max_attempts if set
        if wait is None:
            raise error from cause
        log_retry(
            attempt,
            "command stream broke with %s (retry %d); %d commands to send again in %.3fs",
            error,
            attempt,
            self._outstanding(),
            wait,
        )
        await asyncio.sleep(wait)
        await self._reopen(error)
        return attempt + 1

    def _result(self, response: command_service_pb2.SubmitStreamResponse) -> StreamResult:
        if len(self._pending) <= self._unsent:
            raise _protocol_error(f"a result for {response.command_id!r}, which was not sent")
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

    async def _next_message(self, *tasks: asyncio.Task[None]) -> Any:
        """The next message of the current call (or EOF); instead, the
        error of taking the caller's next command (or of the writer), or
        ``_Unanswered`` once the call kept commands waiting for
        ``answer_timeout`` without a message."""
        read = asyncio.ensure_future(self._call.read())
        running = {task for task in tasks if not task.done()}
        while not read.done():
            _raise_failure(tasks, read)
            timeout = self._answer_timeout
            if timeout is not None and self._outstanding():
                waited = time.monotonic() - self._waiting_since
                if waited >= timeout:
                    read.cancel()
                    raise _Unanswered(timeout, self._outstanding())
                timeout -= waited
            # With nothing outstanding the wait is looked at again after a
            # timeout: a command written meanwhile starts its own clock.
            await asyncio.wait({read, *running}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            running = {task for task in running if not task.done()}
        _raise_failure(tasks, read)
        message = await read
        self._waiting_since = time.monotonic()
        return message

    def _outstanding(self) -> int:
        """Commands written on the current call and not answered."""
        return len(self._pending) - self._unsent

    async def _pump(self) -> None:
        while True:
            # Room first: no command is taken from the caller that could not
            # be sent (a generator waiting for results is not asked early).
            while len(self._pending) >= self._window:
                self._space.clear()
                await self._space.wait()
            try:
                command = await anext(self._commands)
            except StopAsyncIteration:
                break
            self._pending.append(_Sent(command, self._encode(command)))
            self._unsent += 1
            self._taken.set()
        self._exhausted = True
        self._taken.set()

    async def _writer(self) -> None:
        """Write what the pump took, as it comes: everything taken while the
        last write went out leaves together."""
        while True:
            await self._taken.wait()
            self._taken.clear()
            async with self._writing:
                while self._unsent:  # the pump may take more while this writes
                    await self._write_unsent()
                if self._exhausted:
                    await self._done_writing()
                    return

    async def _reopen(self, broken: RemoteError | None, *, answered_first: bool = False) -> None:
        """Open the next call (``broken``: see ``OpenCall``) and send it
        every pending command; with ``answered_first``, only once the server
        has answered the call (or after ``_ANSWER_WAIT``), and nothing if it
        has ended it."""
        if self._call is not None:
            self._call.cancel()  # first: a write waiting on the broken call returns
        async with self._writing:
            self._paged = self._method.paged
            self._call = self._open_call(self._paged, broken)
            self._opened_at = self._waiting_since = time.monotonic()
            if answered_first:
                with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
                    async with asyncio.timeout(_ANSWER_WAIT):
                        await self._call.initial_metadata()  # also returns when the call ends
                if self._call.done():
                    return  # the reader sees how it ended
            self._unsent = len(self._pending)
            while self._unsent:
                await self._write_unsent()
            if self._exhausted:
                await self._done_writing()

    async def _write_unsent(self) -> None:
        """Write the commands taken and not yet written (under ``writing``)."""
        if not self._unsent:
            return
        unsent = list(itertools.islice(self._pending, len(self._pending) - self._unsent, None))
        if not self._outstanding():
            self._waiting_since = time.monotonic()  # the first outstanding: its clock starts
        self._unsent = 0
        if not self._paged:
            for sent in unsent:
                await self._write(sent.request)
            return
        page, size = command_service_pb2.SubmitPage(), 0
        for sent in unsent:
            request_size = sent.request.ByteSize() + _FRAMING_BYTES
            if page.requests and size + request_size > PAGE_BYTES:
                await self._write(page)
                page, size = command_service_pb2.SubmitPage(), 0
            page.requests.append(sent.request)
            size += request_size
        await self._write(page)

    # A write to a call that failed raises; the reader sees the call's status
    # and reopens, sending every pending command again.
    async def _write(self, message: Any) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._call.write(message)

    async def _done_writing(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._call.done_writing()


def _raise_failure(tasks: tuple[asyncio.Task[None], ...], read: asyncio.Future[Any]) -> None:
    """Raise the error of a task that failed (the read is not wanted then)."""
    for task in tasks:
        if task.done() and not task.cancelled() and (failure := task.exception()) is not None:
            read.cancel()
            raise failure


class _Unanswered(Exception):
    """The call kept commands waiting ``seconds`` without a message."""

    def __init__(self, seconds: float, waiting: int) -> None:
        super().__init__(seconds, waiting)
        # DEADLINE_EXCEEDED with no ErrorInfo, as gRPC reports a deadline
        # the client set: the client's own, not a member's answer.
        self.error = DeadlineExceeded(
            f"no answer on the command stream for {seconds:g}s with {waiting} commands waiting",
            code=grpc.StatusCode.DEADLINE_EXCEEDED,
            reason=grpc.StatusCode.DEADLINE_EXCEEDED.name,
        )


def _protocol_error(message: str) -> RemoteError:
    return RemoteError(message, code=grpc.StatusCode.INTERNAL, reason="STREAM_PROTOCOL_ERROR")
