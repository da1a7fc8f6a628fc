"""``chronicle.v1.CommandService``: decode, hand to the pipeline, encode. No
business logic. Refusals before the pipeline (malformed input, and through
``audit_refused_rpc`` authentication and limits) are audited here."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from typing import Any

import grpc

from chronicle.v1 import command_pb2
from chronicle.v1 import command_service_pb2 as pb
from chronicle.v1 import command_service_pb2_grpc as pb_grpc
from service.api import guard
from service.api.cluster_service import not_owner_hint
from service.api.codec import MAX_BATCH_COMMANDS, decode_batch, decode_command, encode_event, type_name
from service.api.gate import OnRefused
from service.api.status import command_error
from service.audit import AuditLog, refusal
from service.cluster.ownership import Ownership
from service.errors import ChronicleError, InvalidInput
from service.plugins.registry import Registry
from service.processing.commands import BatchResult, CommandBatch, CommandRequest, CommandResult
from service.processing.middleware import Pipeline
from service.security.principal import Principal, current_principal
from service.store.records import AuditEntry

log = logging.getLogger(__name__)
SUBMIT_METHOD = "/chronicle.v1.CommandService/Submit"
# Commands of one SubmitStream started and not yet answered.
STREAM_IN_FLIGHT = 256
SUBMIT_BATCH_METHOD = "/chronicle.v1.CommandService/SubmitBatch"
# Audit entries keep what the client sent, cut to a bounded size: a refused
# request may be malformed in any way.
_AUDITED_LENGTH = 200


class CommandService(pb_grpc.CommandServiceServicer):
    def __init__(
        self, registry: Registry, pipeline: Pipeline, audit: AuditLog, *, ownership: Ownership | None = None
    ) -> None:
        self._registry = registry
        self._pipeline = pipeline
        self._audit = audit
        self._ownership = ownership

    def _hint(self, context: grpc.aio.ServicerContext[Any, Any], aggregate_id: str) -> None:
        """Tell a routing client when this member does not own the
        aggregate's partition (service/api/cluster_service.py)."""
        if self._ownership is not None:
            hint = not_owner_hint(self._ownership, aggregate_id)
            if hint is not None:
                context.set_trailing_metadata(hint)

    def _start(self, request: pb.SubmitRequest, principal: Principal) -> Awaitable[BatchResult]:
        """One Submit, as a unary call or one message of a stream, under way.

        A well-formed command on a warm aggregate is decided before this
        returns (the pipeline's ``start``, the worker's inline path): the
        result is a future, and no coroutine or task is made for it. Anything
        else (a refusal to audit, a dry run, middleware with coroutine hooks)
        is an awaitable of the same result."""
        try:
            if not request.HasField("command"):
                raise InvalidInput.for_field("command", "is required", reason="MISSING_COMMAND")
            command = decode_command(request.command, self._registry, principal=principal.name)
        except ChronicleError as error:
            return self._refuse(request, principal, error)
        started = self._pipeline.start(command, principal, dry_run=request.dry_run)
        if started is not None:
            return started
        if request.dry_run:
            return self._pipeline.submit_batch(CommandBatch((command,), dry_run=True), principal)
        return self._submitted(command, principal)

    async def _refuse(self, request: pb.SubmitRequest, principal: Principal, error: ChronicleError) -> BatchResult:
        await self._audit.refused(_refusal(request, principal, error))
        raise error

    async def _submitted(self, command: CommandRequest, principal: Principal) -> BatchResult:
        result = await self._pipeline.submit(command, principal)
        return BatchResult((result,), result.version, replayed=result.replayed)

    @guard.unary
    async def Submit(self, request: pb.SubmitRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.SubmitResponse:
        response = _response((await self._start(request, current_principal.get())).results[0])
        self._hint(context, request.command.aggregate_id)
        return response

    @guard.streaming
    async def SubmitStream(
        self, requests: AsyncIterator[pb.SubmitRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SubmitStreamResponse]:
        principal = current_principal.get()
        # Started in arrival order, answered in arrival order; at most
        # STREAM_IN_FLIGHT started and unanswered, so a fast sender waits.
        window = _Window(STREAM_IN_FLIGHT)

        async def read() -> None:
            try:
                async for request in requests:
                    if window.full:
                        await window.room()
                    # Started now, whatever path it takes: commands for one
                    # aggregate reach its worker in the order they came.
                    window.put((request.command.command_id, asyncio.ensure_future(self._start(request, principal))))
            finally:
                window.close()

        reader = asyncio.ensure_future(read())
        try:
            while (item := await window.next()) is not None:
                command_id, outcome = item
                yield await _stream_response(command_id, outcome)
            await reader  # the client's half ended: surface a read error, if any
        finally:
            reader.cancel()
            window.abandon()

    @guard.unary
    async def SubmitBatch(
        self, request: pb.SubmitBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SubmitBatchResponse:
        principal = current_principal.get()
        try:
            batch = decode_batch(request.commands, self._registry, dry_run=request.dry_run)
        except ChronicleError as error:
            for entry in _batch_refusals(request, principal, error):
                await self._audit.refused(entry)
            raise
        batch = replace(batch, commands=tuple(_as_principal(c, principal) for c in batch.commands))
        result = await self._pipeline.submit_batch(batch, principal)
        self._hint(context, batch.aggregate_id)
        return pb.SubmitBatchResponse(
            results=[_response(r) for r in result.results], version=result.version, replayed=result.replayed
        )


Started = tuple[str, "asyncio.Future[BatchResult]"]


class _Window:
    """The commands of one stream that were started and not yet answered, in
    arrival order: the reader puts, the writer takes; a full window makes
    the reader wait, an empty one the writer. (An ``asyncio.Queue`` would do
    the same with more machinery per command.)"""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: deque[Started] = deque()
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._reader_waits: asyncio.Future[None] | None = None
        self._writer_waits: asyncio.Future[None] | None = None

    @property
    def full(self) -> bool:
        return len(self._items) >= self._size

    async def room(self) -> None:
        while self.full:
            self._reader_waits = self._loop.create_future()
            await self._reader_waits

    def put(self, item: Started) -> None:
        self._items.append(item)
        _wake(self._writer_waits)

    def close(self) -> None:
        self._closed = True
        _wake(self._writer_waits)

    async def next(self) -> Started | None:
        while not self._items:
            if self._closed:
                return None
            self._writer_waits = self._loop.create_future()
            await self._writer_waits
        item = self._items.popleft()
        _wake(self._reader_waits)
        return item

    def abandon(self) -> None:
        """The stream ended early: nobody will hear these answers."""
        while self._items:
            _, outcome = self._items.popleft()
            outcome.cancel()


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


async def _stream_response(command_id: str, outcome: Awaitable[BatchResult]) -> pb.SubmitStreamResponse:
    try:
        return pb.SubmitStreamResponse(command_id=command_id, ok=_response((await outcome).results[0]))
    except ChronicleError as error:
        return pb.SubmitStreamResponse(command_id=command_id, error=command_error(error))
    except Exception:
        log.exception("command %s of a stream failed", command_id)
        internal = ChronicleError("internal error", reason="INTERNAL")
        return pb.SubmitStreamResponse(command_id=command_id, error=command_error(internal))


def _as_principal(command: CommandRequest, principal: Principal) -> CommandRequest:
    # The caller acts as itself unless it names another user (which the
    # authorization middleware allows only with an impersonation grant).
    return replace(command, principal=principal.name, user_id=command.user_id or principal.name)


def _response(result: CommandResult) -> pb.SubmitResponse:
    return pb.SubmitResponse(
        events=[encode_event(e) for e in result.events], version=result.version, replayed=result.replayed
    )


def _batch_refusals(request: object, principal: Principal | None, error: ChronicleError) -> list[AuditEntry]:
    """One audit entry per command of a refused batch (one in all when the
    batch is too large to list)."""
    commands = list(request.commands) if isinstance(request, pb.SubmitBatchRequest) else []
    if not commands or len(commands) > MAX_BATCH_COMMANDS:
        commands = [command_pb2.Command()]
    return [_refusal(pb.SubmitRequest(command=command), principal, error) for command in commands]


def _refusal(request: object, principal: Principal | None, error: ChronicleError) -> AuditEntry:
    command = request.command if isinstance(request, pb.SubmitRequest) else command_pb2.Command()

    def cut(text: str) -> str:
        return text[:_AUDITED_LENGTH]

    return refusal(
        error,
        command_id=cut(command.command_id),
        command_type=cut(type_name(command.payload)),
        aggregate_id=cut(command.aggregate_id),
        principal=principal.name if principal is not None else "",
        user_id=cut(command.user_id),
        origin=cut(command.origin),
    )


def audit_refused_rpc(audit: AuditLog) -> OnRefused:
    """The interceptors' ``on_refused`` hook: a Submit refused before the
    servicer ran (no or bad credentials, too many calls) is audited."""

    async def on_refused(method: str, request: object, error: ChronicleError) -> None:
        if method == SUBMIT_METHOD:
            await audit.refused(_refusal(request, None, error))
        elif method == SUBMIT_BATCH_METHOD:
            for entry in _batch_refusals(request, None, error):
                await audit.refused(entry)

    return on_refused
