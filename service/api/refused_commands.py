"""The audit entries of calls refused before they reached the pipeline, in
one place.

A Submit or SubmitBatch can be refused at three points: by the gate (too
many calls, no or bad credentials, bytes that do not parse), by decoding (a
malformed command, an unknown type, a batch that breaks the batch rules),
and inside the pipeline (the policy, the handler, a conflict). The last is
audited by the audit middleware or recorded with the command
(``service.audit``); the first two come here, as the gate's ``on_refused``
hook and from the command service, so that every such refusal is one entry
per command, built the same way. Any other RPC refused for want of valid
credentials is recorded here too (one entry naming the RPC), and so are
reads and subscriptions the policy denied (the gate's ``on_denied`` hook).

Every entry carries the caller's network address (``peer``). A user id the
caller claimed is recorded only with a principal that claim was made by:
a caller that was not authenticated is recorded with neither. Refusals of
callers that were not authenticated (no or bad credentials, or
authentication off) are recorded through ``SampledRefusals``: a flood of
them cannot grow the audit log faster than its rate.
"""

from __future__ import annotations

from chronicle.v1 import command_pb2
from chronicle.v1 import command_service_pb2 as pb
from service.api.codec import MAX_BATCH_COMMANDS, canonical_command_id, type_name
from service.audit import AuditLog, SampledRefusals, refusal
from service.errors import ChronicleError, CredentialsChanged, Unauthenticated
from service.principal import Principal
from service.store.records import AuditEntry

SUBMIT_METHOD = "/chronicle.v1.CommandService/Submit"
SUBMIT_STREAM_METHOD = "/chronicle.v1.CommandService/SubmitStream"
SUBMIT_STREAM_PAGES_METHOD = "/chronicle.v1.CommandService/SubmitStreamPages"
SUBMIT_BATCH_METHOD = "/chronicle.v1.CommandService/SubmitBatch"
COMMAND_METHODS = frozenset({SUBMIT_METHOD, SUBMIT_STREAM_METHOD, SUBMIT_STREAM_PAGES_METHOD, SUBMIT_BATCH_METHOD})
# Where a denial the servicer raised is audited here (the command service's
# are audited by the pipeline, the admin service's by itself).
READ_SERVICES = (
    "/chronicle.v1.EventService/",
    "/chronicle.v1.ProjectionService/",
    "/chronicle.v1.ReactionService/",
    "/chronicle.v1.SubscriptionGroupService/",
)
# Administrators' actions (and reads of process states) in those services,
# audited by their servicers (done or refused): recorded here too, a refusal
# would be recorded twice (test_authorization_audit counts one per call).
SELF_AUDITED = frozenset(
    {
        "/chronicle.v1.ProjectionService/RebuildProjection",
        "/chronicle.v1.ProjectionService/DeleteProjection",
        "/chronicle.v1.ProjectionService/SkipEvent",
        "/chronicle.v1.ReactionService/ReplayParkedCommand",
        "/chronicle.v1.ReactionService/DismissParkedCommand",
        "/chronicle.v1.ReactionService/ReplayAllParkedCommands",
        "/chronicle.v1.ReactionService/DismissAllParkedCommands",
        "/chronicle.v1.ReactionService/GetProcessState",
        "/chronicle.v1.ReactionService/ListProcessStates",
        "/chronicle.v1.ReactionService/DropProcessState",
        "/chronicle.v1.ReactionService/ResetReaction",
        "/chronicle.v1.SubscriptionGroupService/CreateGroup",
        "/chronicle.v1.SubscriptionGroupService/UpdateGroup",
        "/chronicle.v1.SubscriptionGroupService/DeleteGroup",
        "/chronicle.v1.SubscriptionGroupService/ReplayParked",
        "/chronicle.v1.SubscriptionGroupService/DismissParked",
    }
)
# The command type of the console's refusals, before the page's path.
CONSOLE = "console"
# What the client sent, cut to a bounded size: a refused request may be
# malformed in any way.
AUDITED_LENGTH = 200


class RefusedCommands:
    """Audits calls refused before they reached the pipeline."""

    def __init__(self, audit: AuditLog, *, sampled: SampledRefusals | None = None) -> None:
        self._sampled = sampled or SampledRefusals(audit)

    async def __call__(
        self,
        method: str,
        request: object,
        error: ChronicleError,
        principal: Principal | None = None,
        peer: str = "",
    ) -> None:
        """Record ``error`` for each command of ``request`` (a SubmitRequest
        or SubmitBatchRequest; None when its bytes did not parse), or for
        any other RPC refused for want of credentials or ended because they
        or their grants changed, as the caller
        ``principal`` (None: not authenticated) at ``peer``."""
        if method in COMMAND_METHODS:
            entries = refused_entries(request, principal, error, peer)
        elif isinstance(error, Unauthenticated | CredentialsChanged):
            # Calls refused for want of credentials, and streams ended
            # because their credentials or grants changed (live_streams.py).
            entries = [call_entry(method, request, error, principal, peer)]
        else:
            return
        accountable = principal is not None and principal.authenticated
        for entry in entries:
            await self._sampled.refused(entry, accountable=accountable)

    async def denied(
        self, method: str, request: object, error: ChronicleError, principal: Principal | None, peer: str
    ) -> None:
        """Record a read or a subscription the policy denied (READ_DENIED,
        SUBSCRIBE_DENIED, …): the gate's ``on_denied`` hook."""
        if not method.startswith(READ_SERVICES) or method in SELF_AUDITED:
            return
        entry = call_entry(method, request, error, principal, peer)
        # Anonymous callers (denied a projection only administrators may
        # read) are sampled.
        await self._sampled.refused(entry, accountable=principal is not None and principal.authenticated)

    async def console(
        self, path: str, error: ChronicleError, principal: Principal | None, peer: str, aggregate_id: str = ""
    ) -> None:
        """Record what the console refused: a login with a bad credential
        (``/login``, sampled as the API's unauthenticated calls are), or a
        page the policy denied its session's principal. The entry's command
        type is ``console`` and the page's path (its actions, rebuilding a
        projection and replaying a parked event, are audited as their RPCs)."""
        entry = refusal(
            error,
            command_type=_cut(CONSOLE + path),
            aggregate_id=_cut(aggregate_id),
            principal=principal.name if principal is not None else "",
            user_id=principal.name if principal is not None else "",
            peer=peer,
        )
        await self._sampled.refused(entry, accountable=principal is not None and principal.authenticated)

    async def close(self) -> None:
        """Record the refusals counted and not yet recorded."""
        await self._sampled.close()


def _cut(text: str) -> str:
    return text[:AUDITED_LENGTH]


def refused_commands(request: object) -> list[command_pb2.Command]:
    """The commands a refusal of ``request`` (a SubmitRequest or
    SubmitBatchRequest; None when its bytes did not parse) stands for: each
    of a batch, or one in all (an empty one, naming nothing, when there is
    none to name or the batch is too large to list). The audit writes an
    entry for each, and the metrics count each."""
    if isinstance(request, pb.SubmitBatchRequest) and 0 < len(request.commands) <= MAX_BATCH_COMMANDS:
        return list(request.commands)
    if isinstance(request, pb.SubmitRequest):
        return [request.command]
    return [command_pb2.Command()]


def refused_entries(
    request: object, principal: Principal | None, error: ChronicleError, peer: str = ""
) -> list[AuditEntry]:
    """One entry per command of ``request`` (``refused_commands``)."""
    dry_run = isinstance(request, pb.SubmitRequest | pb.SubmitBatchRequest) and request.dry_run
    return [_entry(command, principal, error, peer, dry_run) for command in refused_commands(request)]


def _entry(
    command: command_pb2.Command, principal: Principal | None, error: ChronicleError, peer: str, dry_run: bool
) -> AuditEntry:
    return refusal(
        error,
        command_id=canonical_command_id(_cut(command.command_id)),
        command_type=_cut(type_name(command.payload)),
        aggregate_id=_cut(command.aggregate_id),
        principal=principal.name if principal is not None else "",
        # A claim is recorded only beside the principal that made it; a
        # command that names no user acts as its principal (decode_command),
        # and is recorded so, as the pipeline records its refusals.
        user_id=_cut(command.user_id or principal.name) if principal is not None else "",
        origin=_cut(command.origin),
        dry_run=dry_run,
        peer=peer,
    )


def call_entry(
    method: str, request: object, error: ChronicleError, principal: Principal | None, peer: str
) -> AuditEntry:
    """The entry of an RPC other than a command's: its full name as the
    command type (as administrators' actions are), the aggregate it named,
    if any."""
    aggregate_id = getattr(request, "aggregate_id", "")
    name = principal.name if principal is not None else ""
    return refusal(
        error,
        command_type=method.lstrip("/"),
        aggregate_id=_cut(aggregate_id) if isinstance(aggregate_id, str) else "",
        principal=name,
        user_id=name,
        peer=peer,
    )
