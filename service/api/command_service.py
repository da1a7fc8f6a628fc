"""``chronicle.v1.CommandService``: decode, hand to the pipeline, encode. No
business logic. Refusals before the pipeline (malformed input, and through
``audit_refused_rpc`` authentication and limits) are audited here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc

from chronicle.v1 import command_pb2
from chronicle.v1 import command_service_pb2 as pb
from chronicle.v1 import command_service_pb2_grpc as pb_grpc
from service.api import guard
from service.api.codec import MAX_BATCH_COMMANDS, decode_batch, decode_command, encode_event, type_name
from service.api.interceptors import OnRefused
from service.api.status import command_error
from service.audit import AuditLog, refusal
from service.errors import ChronicleError, InvalidInput
from service.plugins.registry import Registry
from service.processing.commands import CommandBatch, CommandRequest, CommandResult
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
    def __init__(self, registry: Registry, pipeline: Pipeline, audit: AuditLog) -> None:
        self._registry = registry
        self._pipeline = pipeline
        self._audit = audit

    async def _run(self, request: pb.SubmitRequest, principal: Principal) -> pb.SubmitResponse:
        """One Submit, as a unary call or one message of a stream."""
        try:
            if not request.HasField("command"):
                raise InvalidInput.for_field("command", "is required", reason="MISSING_COMMAND")
            command = decode_command(request.command, self._registry, principal=principal.name)
        except ChronicleError as error:
            await self._audit.refused(_refusal(request, principal, error))
            raise
        if request.dry_run:
            batch = await self._pipeline.submit_batch(CommandBatch((command,), dry_run=True), principal)
            return _response(batch.results[0])
        return _response(await self._pipeline.submit(command, principal))

    @guard.unary
    async def Submit(self, request: pb.SubmitRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.SubmitResponse:
        return await self._run(request, current_principal.get())

    @guard.streaming
    async def SubmitStream(
        self, requests: AsyncIterator[pb.SubmitRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SubmitStreamResponse]:
        principal = current_principal.get()
        # Started in arrival order, answered in arrival order; at most
        # STREAM_IN_FLIGHT started and unanswered, so a fast sender waits.
        started: asyncio.Queue[asyncio.Future[pb.SubmitStreamResponse] | None] = asyncio.Queue(STREAM_IN_FLIGHT)

        async def read() -> None:
            try:
                async for request in requests:
                    await started.put(asyncio.ensure_future(self._stream_one(request, principal)))
            finally:
                await started.put(None)

        reader = asyncio.create_task(read())
        try:
            while (result := await started.get()) is not None:
                yield await result
            await reader  # the client's half ended: surface a read error, if any
        finally:
            reader.cancel()
            while not started.empty():
                leftover = started.get_nowait()
                if leftover is not None:
                    leftover.cancel()

    async def _stream_one(self, request: pb.SubmitRequest, principal: Principal) -> pb.SubmitStreamResponse:
        command_id = request.command.command_id
        try:
            return pb.SubmitStreamResponse(command_id=command_id, ok=await self._run(request, principal))
        except ChronicleError as error:
            return pb.SubmitStreamResponse(command_id=command_id, error=command_error(error))
        except Exception:
            log.exception("command %s of a stream failed", command_id)
            internal = ChronicleError("internal error", reason="INTERNAL")
            return pb.SubmitStreamResponse(command_id=command_id, error=command_error(internal))

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
        return pb.SubmitBatchResponse(
            results=[_response(r) for r in result.results], version=result.version, replayed=result.replayed
        )


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
