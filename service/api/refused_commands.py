"""The audit entries of commands refused before the pipeline, in one place.

A Submit or SubmitBatch can be refused at three points: by the gate (too
many calls, no or bad credentials, bytes that do not parse), by decoding (a
malformed command, an unknown type, a batch that breaks the batch rules),
and inside the pipeline (the policy, the handler, a conflict). The last is
audited by the audit middleware or recorded with the command
(``service.audit``); the first two come here, as the gate's ``on_refused``
hook and from the command service, so that every such refusal is one entry
per command, built the same way.
"""

from __future__ import annotations

from chronicle.v1 import command_pb2
from chronicle.v1 import command_service_pb2 as pb
from service.api.codec import MAX_BATCH_COMMANDS, type_name
from service.audit import AuditLog, refusal
from service.errors import ChronicleError
from service.principal import Principal
from service.store.records import AuditEntry

SUBMIT_METHOD = "/chronicle.v1.CommandService/Submit"
SUBMIT_STREAM_METHOD = "/chronicle.v1.CommandService/SubmitStream"
SUBMIT_BATCH_METHOD = "/chronicle.v1.CommandService/SubmitBatch"
COMMAND_METHODS = frozenset({SUBMIT_METHOD, SUBMIT_STREAM_METHOD, SUBMIT_BATCH_METHOD})
# What the client sent, cut to a bounded size: a refused request may be
# malformed in any way.
AUDITED_LENGTH = 200


class RefusedCommands:
    """Audits commands refused before they reached the pipeline."""

    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit

    async def __call__(
        self, method: str, request: object, error: ChronicleError, principal: Principal | None = None
    ) -> None:
        """Record ``error`` for each command of ``request`` (a SubmitRequest
        or SubmitBatchRequest; None when its bytes did not parse), as the
        caller ``principal`` (None: not known, the gate refused it first)."""
        if method not in COMMAND_METHODS:
            return
        for entry in refused_entries(request, principal, error):
            await self._audit.refused(entry)


def refused_entries(request: object, principal: Principal | None, error: ChronicleError) -> list[AuditEntry]:
    """One entry per command of ``request`` (one in all, naming no command,
    when there is none to name or the batch is too large to list)."""
    if isinstance(request, pb.SubmitBatchRequest) and 0 < len(request.commands) <= MAX_BATCH_COMMANDS:
        commands = list(request.commands)
    elif isinstance(request, pb.SubmitRequest):
        commands = [request.command]
    else:
        commands = [command_pb2.Command()]
    name = principal.name if principal is not None else ""
    return [_entry(command, name, error) for command in commands]


def _entry(command: command_pb2.Command, principal: str, error: ChronicleError) -> AuditEntry:
    def cut(text: str) -> str:
        return text[:AUDITED_LENGTH]

    return refusal(
        error,
        command_id=cut(command.command_id),
        command_type=cut(type_name(command.payload)),
        aggregate_id=cut(command.aggregate_id),
        principal=principal,
        user_id=cut(command.user_id),
        origin=cut(command.origin),
    )
