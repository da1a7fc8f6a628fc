"""``chronicle.v1.CommandService``: decode, hand to the pipeline, encode. No
business logic. Refusals before the pipeline (malformed input, and through
``audit_refused_rpc`` authentication and limits) are audited here."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import grpc

from chronicle.v1 import command_pb2
from chronicle.v1 import command_service_pb2 as pb
from chronicle.v1 import command_service_pb2_grpc as pb_grpc
from service.api import guard
from service.api.codec import decode_command, encode_event, type_name
from service.api.interceptors import OnRefused
from service.audit import AuditLog, refusal
from service.errors import ChronicleError, InvalidInput
from service.plugins.registry import Registry
from service.processing.middleware import Pipeline
from service.security.principal import Principal, current_principal
from service.store.records import AuditEntry

SUBMIT_METHOD = "/chronicle.v1.CommandService/Submit"
# Audit entries keep what the client sent, cut to a bounded size: a refused
# request may be malformed in any way.
_AUDITED_LENGTH = 200


class CommandService(pb_grpc.CommandServiceServicer):
    def __init__(self, registry: Registry, pipeline: Pipeline, audit: AuditLog) -> None:
        self._registry = registry
        self._pipeline = pipeline
        self._audit = audit

    @guard.unary
    async def Submit(self, request: pb.SubmitRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.SubmitResponse:
        principal = current_principal.get()
        try:
            if not request.HasField("command"):
                raise InvalidInput.for_field("command", "is required", reason="MISSING_COMMAND")
            command = decode_command(request.command, self._registry)
        except ChronicleError as error:
            await self._audit.refused(_refusal(request, principal, error))
            raise
        # The caller acts as itself unless it names another user (which the
        # authorization middleware allows only with an impersonation grant).
        command = replace(command, principal=principal.name, user_id=command.user_id or principal.name)
        result = await self._pipeline.submit(command, principal)
        return pb.SubmitResponse(
            events=[encode_event(e) for e in result.events],
            version=result.version,
            replayed=result.replayed,
        )


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

    return on_refused
