"""``chronicle.v1.ReactionService``: where plugins' reactions stand, and
the commands they parked."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc

from chronicle.v1 import reaction_service_pb2 as pb
from chronicle.v1 import reaction_service_pb2_grpc as pb_grpc
from service.api import process_states
from service.api.codec import MAX_VERSION, check_id, duration, timestamp
from service.api.page_tokens import checked_key_prefix, checked_page_size, fingerprint, make_token, read_token
from service.audit import AuditLog
from service.errors import (
    ChronicleError,
    InvalidInput,
    NotAvailableHere,
    PermissionDenied,
    ResourceNotFound,
    ValidationError,
)
from service.plugins.reactions import Reaction
from service.plugins.registry import Registry
from service.principal import current_principal
from service.processing.projections import withdraw_if_forgotten
from service.processing.reaction_documents import MAX_PARKED, STATE_PREFIX, ParkedAt, list_parked_page
from service.processing.reactions import ReactionRunner, Reactions
from service.security.policy import Authorizer
from service.store.base import KeyStore, LogReader, ProjectionStore
from service.store.records import DocumentRange, LogFilter
from service.values import MAX_ID_LENGTH

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["ReactionService"].full_name
# A page of parked commands: as many as a reaction may park unless asked for
# fewer (a caller that does not page gets them all, as before paging, while
# they fit in the page's bytes).
MAX_PAGE_SIZE = MAX_PARKED


class RecordsMayBePruned(ValidationError):
    """A reset back past the command retention: the commands sent for the
    events it would hand the reaction again may have no record left, and
    would be carried out again (FAILED_PRECONDITION)."""

    default_reason = "COMMAND_RECORDS_PRUNED"
    recorded = False


@dataclass
class _Outcome:
    """What came of an administrator's action, for its audit entry."""

    message: str = ""


class ReactionService(pb_grpc.ReactionServiceServicer):
    def __init__(
        self,
        *,
        documents: ProjectionStore,
        log: LogReader,
        registry: Registry,
        reactions: Reactions,
        authorizer: Authorizer,
        audit: AuditLog,
        page_bytes: int = 1024 * 1024,
        keys: KeyStore | None = None,
        state_keys_hidden: bool = False,
        command_retention: float = 0.0,
    ) -> None:
        # Seconds command records are kept (0: forever): a reset back past
        # them would send again commands no record answers.
        self._command_retention = command_retention
        # Encryption at rest stores process-state keys as keyed hashes (they
        # may be personal: "transfer-of-ann"): the audit, which is in the
        # clear and filed under the reaction (forgetting an aggregate erases
        # none of it), must not name them either.
        self._state_keys_hidden = state_keys_hidden
        # Tells whether the aggregate a runner's last error came from was forgotten.
        self._keys = keys
        self._documents = documents
        self._page_bytes = page_bytes
        self._log = log
        self._registry = registry
        self._reactions = reactions
        self._authorizer = authorizer
        self._audit = audit

    def _check(self, reaction: Reaction[Any]) -> None:
        # Parked commands hold payloads of the aggregates the reaction reads
        # (and writes): readable by those who may read those; a reaction of
        # every type takes an administrator, like such a projection.
        principal = current_principal.get()
        if not reaction.aggregate_types:
            self._authorizer.check_admin(principal, f"read reaction {reaction.name}")
        for aggregate_type in sorted(reaction.aggregate_types):
            self._authorizer.check_read(principal, aggregate_type)

    def _reaction(self, field: str, name: str) -> Reaction[Any]:
        check_id(field, name, reason="INVALID_REACTION")
        reaction = self._registry.reaction(name)
        if reaction is None:
            raise ResourceNotFound(f"no loaded plugin declares reaction {name!r}", reason="REACTION_NOT_FOUND")
        self._check(reaction)
        return reaction

    async def _status(self, reaction: Reaction[Any], log_head: int) -> pb.ReactionStatus:
        runner = self._reactions.runners.get(reaction.name)
        status = runner.status if runner is not None else None
        if (
            status is not None
            and self._keys is not None
            and await withdraw_if_forgotten(status, self._keys, status.error_command_aggregate_id)
        ):
            status.error_command_aggregate_id = ""
        answer = pb.ReactionStatus(
            name=reaction.name,
            position=await self._documents.projection_position(reaction.name),
            log_head=log_head,
            running=bool(runner and runner.status.running and runner.holds_lease),
            error=runner.error_now if runner is not None else "",
            aggregate_types=sorted(reaction.aggregate_types),
            event_types=sorted(reaction.event_types),
            # Counted by the store, the forgotten left out (deleted), none read.
            parked=await self._documents.count_parked_commands(reaction.name),
            handled=status.handled if status else 0,
            accepted=status.accepted if status else 0,
            refused=status.refused if status else 0,
            replayed=status.replayed if status else 0,
            ignored=status.ignored if status else 0,
            deadlines_fired=status.deadlines_fired if status else 0,
            runner=runner.runs_on if runner is not None else "",
            retry_interval=duration(reaction.retry_seconds),
            start_position=status.start_position if status else 0,
            start_from=reaction.start_from or "",
            on_failure=reaction.on_failure,
            max_attempts=reaction.max_attempts if reaction.on_failure == "park" else 0,
        )
        # Its processes' pending deadlines: counted by the store over their
        # index, none read; and the soonest.
        answer.deadlines, soonest = await self._documents.due_summary(reaction.name)
        if soonest is not None:
            answer.next_deadline.CopyFrom(timestamp(soonest))
        # What it met here before, kept once over (``error`` is what holds it now).
        if status is not None and status.last_error:
            answer.last_error = status.last_error
            answer.last_error_time.CopyFrom(timestamp(round(status.last_error_at * 1_000_000)))
        return answer

    async def ListReactions(
        self, request: pb.ListReactionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListReactionsResponse:
        # Those the caller may read, as ListProjections: one reaction of a
        # type the caller may not read must not hide the others.
        readable = []
        for reaction in sorted(self._registry.reactions, key=lambda r: r.name):
            try:
                self._check(reaction)
            except PermissionDenied:
                continue
            readable.append(reaction)
        log_head = await self._log.log_head()
        return pb.ListReactionsResponse(reactions=[await self._status(r, log_head) for r in readable])

    async def GetReaction(
        self, request: pb.GetReactionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReactionStatus:
        reaction = self._reaction("name", request.name)
        return await self._status(reaction, await self._log.log_head())

    async def ReplayParkedCommand(
        self, request: pb.ReplayParkedCommandRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReplayParkedCommandResponse:
        async with self._audited("ReplayParkedCommand", request.reaction) as outcome:
            runner, command_id = self._parked_command(request.reaction, request.command_id)
            replayed = await runner.replay(command_id)
            what = "accepted" if replayed.accepted else f"refused again: {replayed.reason or 'no reason given'}"
            outcome.message = f"parked command {command_id} replayed as {replayed.command_id}: {what}"
            log.warning(
                "parked command %s of reaction %s replayed by %r as %s: %s",
                command_id,
                runner.reaction.name,
                current_principal.get().name,
                replayed.command_id,
                "accepted" if replayed.accepted else f"refused again ({replayed.reason})",
            )
            return pb.ReplayParkedCommandResponse(
                accepted=replayed.accepted,
                command_id=replayed.command_id,
                reason=replayed.reason,
                message=replayed.message,
            )

    async def DismissParkedCommand(
        self, request: pb.DismissParkedCommandRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DismissParkedCommandResponse:
        async with self._audited("DismissParkedCommand", request.reaction) as outcome:
            runner, command_id = self._parked_command(request.reaction, request.command_id)
            await runner.dismiss(command_id)
            outcome.message = f"parked command {command_id} dismissed"
            log.warning(
                "parked command %s of reaction %s dismissed by %r",
                command_id,
                runner.reaction.name,
                current_principal.get().name,
            )
            return pb.DismissParkedCommandResponse()

    async def ReplayAllParkedCommands(
        self, request: pb.ReplayAllParkedCommandsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReplayAllParkedCommandsResponse:
        async with self._audited("ReplayAllParkedCommands", request.reaction) as outcome:
            runner = self._parked_commands(request.reaction, request.reason)
            replayed = await runner.replay_all(request.reason)
            accepted = sum(1 for r in replayed if r.accepted)
            outcome.message = (
                f"{len(replayed)} parked commands{_with_reason(request.reason)} replayed: {accepted} accepted,"
                f" {len(replayed) - accepted} refused again"
            )
            log.warning("%s of reaction %s, by %r", outcome.message, runner.reaction.name, current_principal.get().name)
            return pb.ReplayAllParkedCommandsResponse(accepted=accepted, refused=len(replayed) - accepted)

    async def DismissAllParkedCommands(
        self, request: pb.DismissAllParkedCommandsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DismissAllParkedCommandsResponse:
        async with self._audited("DismissAllParkedCommands", request.reaction) as outcome:
            runner = self._parked_commands(request.reaction, request.reason)
            if request.command_ids:
                named = _named_command_ids(request)
                dismissed, gone = await runner.dismiss_confirmed(named)
                outcome.message = f"{dismissed} of {len(named)} named parked commands dismissed, {gone} gone"
            else:
                dismissed, gone = await runner.dismiss_all(request.reason), 0
                outcome.message = f"{dismissed} parked commands{_with_reason(request.reason)} dismissed"
            log.warning("%s of reaction %s, by %r", outcome.message, runner.reaction.name, current_principal.get().name)
            return pb.DismissAllParkedCommandsResponse(dismissed=dismissed, gone=gone)

    async def DropProcessState(
        self, request: pb.DropProcessStateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DropProcessStateResponse:
        async with self._audited("DropProcessState", request.reaction, names_state_keys=True) as outcome:
            self._authorizer.check_admin(current_principal.get(), "drop a reaction's process state")
            reaction = self._reaction("reaction", request.reaction)
            state_keys = _state_keys(request)
            runner = self._reactions.runners[reaction.name]
            await runner.drop_states(state_keys)
            # The key may be an aggregate's id or a correlation id: no
            # personal data is quoted but what identifies a process.
            outcome.message = _dropped(state_keys, named=not self._state_keys_hidden)
            log.warning("%s of reaction %s, by %r", outcome.message, reaction.name, current_principal.get().name)
            return pb.DropProcessStateResponse(dropped=len(state_keys))

    async def ResetReaction(
        self, request: pb.ResetReactionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ResetReactionResponse:
        async with self._audited("ResetReaction", request.name) as outcome:
            self._authorizer.check_admin(current_principal.get(), "reset a reaction's checkpoint")
            reaction = self._reaction("name", request.name)
            head = await self._log.log_head()
            to = reset_target(request, head)
            if not request.even_if_records_pruned:
                await self._check_records_kept(reaction.name, to)
            before = await self._reactions.runners[reaction.name].reset(to)
            outcome.message = f"checkpoint moved from {before} to {to} (log head {head})"
            log.warning("reaction %s: %s, by %r", reaction.name, outcome.message, current_principal.get().name)
            return pb.ResetReactionResponse(previous_position=before, position=to, log_head=head)

    async def _check_records_kept(self, name: str, to: int) -> None:
        """Refuse a reset to ``to`` when the events after it include some
        written before the command retention's window: the records of the
        commands the reaction sent for them may be pruned, and those
        commands would run again. The first event after ``to``, whatever its
        type, is the oldest the reaction handles again."""
        if not self._command_retention or to >= await self._documents.projection_position(name):
            return  # forward: nothing is handled again
        page = await self._log.read_log(to, LogFilter(), 1)
        if not page.events:
            return
        written_us = page.events[0].timestamp_us
        if written_us >= (time.time() - self._command_retention) * 1_000_000:
            return
        written = datetime.fromtimestamp(written_us / 1_000_000, UTC).isoformat(timespec="seconds")
        raise RecordsMayBePruned(
            f"reaction {name}: the event after position {to} was written at {written}, before the server's"
            f" command retention ({self._command_retention:g} s): the records of the commands it sent for such"
            " events may be pruned, and those would be carried out again. Reset to a later position, or pass"
            " even_if_records_pruned (--even-if-records-pruned) if it never sent them",
            reason="COMMAND_RECORDS_PRUNED",
            metadata={"reaction": name, "event_time": written, "retention": f"{self._command_retention:g}s"},
        )

    async def GetProcessState(
        self, request: pb.GetProcessStateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetProcessStateResponse:
        # A process's state may hold personal data: an administrator's read,
        # audited as the reads of an export are.
        async with self._audited("GetProcessState", request.reaction, names_state_keys=True) as outcome:
            reaction = self._state_reader(request.reaction)
            state_key = check_id("state_key", request.state_key, reason="INVALID_STATE_KEY")
            # The checkpoint first: the state read next is at least that new.
            position = await self._documents.projection_position(reaction.name)
            document = await self._documents.load_document(reaction.name, STATE_PREFIX + state_key)
            if document is None:
                raise ResourceNotFound(
                    f"reaction {reaction.name} keeps no state under {state_key!r}",
                    reason="PROCESS_STATE_NOT_FOUND",
                    metadata={"reaction": reaction.name, "state_key": state_key},
                )
            outcome.message = (
                f"process state read ({KEYS_NOT_RECORDED})"
                if self._state_keys_hidden
                else f"process state {state_key!r} read"
            )
            return pb.GetProcessStateResponse(state=process_states.shown(reaction, document), position=position)

    async def ListProcessStates(
        self, request: pb.ListProcessStatesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListProcessStatesResponse:
        async with self._audited("ListProcessStates", request.reaction) as outcome:
            reaction = self._state_reader(request.reaction)
            prefix = checked_key_prefix(request.key_prefix)
            page_size = checked_page_size(request.page_size)
            listing = fingerprint("process states", reaction.name, prefix)
            after = None
            if request.page_token:
                after = read_token(request.page_token, listing, bound_to="the reaction and key prefix").get("k")
                if not isinstance(after, str) or not after.startswith(prefix):
                    raise InvalidInput.for_field("page_token", "is damaged", reason="INVALID_PAGE_TOKEN")
            position = await self._documents.projection_position(reaction.name)
            listed = DocumentRange(
                prefix=STATE_PREFIX + prefix,
                after=None if after is None else STATE_PREFIX + after,
                limit=page_size + 1,
            )
            try:
                found = await self._documents.list_documents(reaction.name, listed)
            except NotAvailableHere as hidden:
                raise NotAvailableHere(
                    f"reaction {reaction.name}'s state keys are stored as keyed hashes (encryption at rest):"
                    " they cannot be listed; read a state by its key (GetProcessState)",
                    reason=hidden.reason,
                    metadata={"reaction": reaction.name},
                ) from None
            states = [process_states.shown(reaction, document) for document in found[:page_size]]
            page = process_states.within(states, self._page_bytes)
            more = len(page) < len(found)
            outcome.message = f"{len(page)} process states listed" + (f" (key prefix {prefix!r})" if prefix else "")
            return pb.ListProcessStatesResponse(
                states=page,
                next_page_token=make_token(listing, k=page[-1].state_key) if more and page else "",
                position=position,
            )

    def _state_reader(self, reaction_name: str) -> Reaction[Any]:
        """The reaction, for an administrator reading its process states."""
        self._authorizer.check_admin(current_principal.get(), "read a reaction's process states")
        return self._reaction("reaction", reaction_name)

    def _parked_commands(self, reaction_name: str, reason: str) -> ReactionRunner:
        """The runner of the reaction, for an administrator (``reason``
        checked: a reason is an identifier)."""
        self._authorizer.check_admin(current_principal.get(), "replay or dismiss parked commands")
        reaction = self._reaction("reaction", reaction_name)
        if reason:
            check_id("reason", reason, reason="INVALID_REASON")
        return self._reactions.runners[reaction.name]

    def _parked_command(self, reaction_name: str, command_id: str) -> tuple[ReactionRunner, str]:
        """The runner of the reaction, for an administrator, and the command id."""
        self._authorizer.check_admin(current_principal.get(), "replay or dismiss parked commands")
        reaction = self._reaction("reaction", reaction_name)
        command_id = check_id("command_id", command_id, reason="INVALID_COMMAND_ID")
        return self._reactions.runners[reaction.name], command_id

    @contextlib.asynccontextmanager
    async def _audited(self, rpc: str, reaction: str, *, names_state_keys: bool = False) -> AsyncIterator[_Outcome]:
        """An administrator's action on a reaction's parked command, audited
        under the reaction's name (QueryAudit's aggregate_id
        "reaction:NAME", as a rebuild's is "projection:NAME"): refused (any
        ChronicleError, with its reason and message), or done, with what
        came of it in the message: the command's id, and for a replay the id
        it was sent under and whether it was accepted or refused again (with
        the refusal's reason). A replay refused again was done (the audit
        keeps administrators' actions that were done, and may prune
        refusals): the command was sent, and its refusal, message included,
        is the record of the id it was sent under. The refusal's message
        stays out of this entry, which is kept in the clear: it may quote
        personal data, which forgetting the aggregate must erase. So do the
        process-state keys of a call that ``names_state_keys`` (its message
        and its refusal's) under encryption at rest, which stores them as
        keyed hashes: the refusal is recorded with its reason only."""
        action = f"{SERVICE}/{rpc}"
        principal = current_principal.get().name
        target = f"reaction:{reaction[:MAX_ID_LENGTH]}"
        outcome = _Outcome()
        try:
            yield outcome
        except ChronicleError as error:
            recorded = error
            if names_state_keys and self._state_keys_hidden:
                recorded = ChronicleError(f"refused, {error.reason} ({KEYS_NOT_RECORDED})", reason=error.reason)
            await self._audit.admin_action(action, principal=principal, aggregate_id=target, error=recorded)
            raise
        await self._audit.admin_action(action, principal=principal, aggregate_id=target, message=outcome.message)

    async def ListParkedCommands(
        self, request: pb.ListParkedCommandsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListParkedCommandsResponse:
        reaction = self._reaction("reaction", request.reaction)
        if request.page_size > MAX_PAGE_SIZE:
            raise InvalidInput.for_field("page_size", f"must be at most {MAX_PAGE_SIZE}", reason="PAGE_SIZE_TOO_LARGE")
        listing = fingerprint("parked commands", reaction.name)
        after = _after(request.page_token, listing) if request.page_token else None
        page, more = await list_parked_page(
            self._documents,
            reaction.name,
            after=after,
            limit=request.page_size or MAX_PAGE_SIZE,
            max_bytes=self._page_bytes,
        )
        last = page[-1] if page else None
        return pb.ListParkedCommandsResponse(
            commands=page,
            next_page_token=make_token(
                listing, s=last.sequence, p=last.position, t=last.parked_at_us, c=last.command_id
            )
            if more and last is not None
            else "",
        )


def reset_target(request: pb.ResetReactionRequest, head: int) -> int:
    """Where a ResetReaction moves the checkpoint: its position, or the
    log's ``head`` for ``to_end``; never past the head (the reaction would
    pass over events not yet written)."""
    if request.to_end:
        if request.position:
            raise InvalidInput(
                f"give a position ({request.position}) or to_end, not both",
                reason="RESET_TARGET_AMBIGUOUS",
                metadata={"reaction": request.name, "position": str(request.position)},
            )
        return head
    if request.position > head:
        raise InvalidInput(
            f"position {request.position} is past the log's head ({head}): a reaction can be reset to {head} at most",
            reason="POSITION_BEYOND_HEAD",
            metadata={"reaction": request.name, "position": str(request.position), "log_head": str(head)},
        )
    return request.position


def _state_keys(request: pb.DropProcessStateRequest) -> list[str]:
    """The keys a DropProcessState names (``state_key`` first), each checked."""
    named = [("state_key", request.state_key)] if request.state_key or not request.state_keys else []
    named += [(f"state_keys[{i}]", key) for i, key in enumerate(request.state_keys)]
    if len(named) > process_states.MAX_DROPPED:
        raise InvalidInput.for_field(
            "state_keys",
            f"names {len(named)} keys; at most {process_states.MAX_DROPPED} in one call",
            reason="TOO_MANY_STATE_KEYS",
        )
    keys: list[str] = []
    first: dict[str, int] = {}
    # Positions counted over the keys as named, state_key first: as a
    # person typed them (the CLI sends its first key as state_key).
    for position, (field, key) in enumerate(named, start=1):
        checked = check_id(field, key, reason="INVALID_STATE_KEY")
        if checked in first:
            raise InvalidInput.for_field(
                field,
                f"key {checked!r} is named twice ({_ordinal(position)} and {_ordinal(first[checked])})",
                reason="DUPLICATE_STATE_KEY",
            )
        first[checked] = position
        keys.append(checked)
    return keys


def _ordinal(number: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st."""
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def _dropped(state_keys: list[str], *, named: bool) -> str:
    """What a drop did, for its audit entry and the log: the keys, the first
    few named (``named``: not under encryption at rest)."""
    if not named:
        return f"{len(state_keys)} process state(s) dropped ({KEYS_NOT_RECORDED})"
    if len(state_keys) == 1:
        return f"process state {state_keys[0]!r} dropped"
    first = ", ".join(repr(key) for key in state_keys[:_KEYS_NAMED])
    more = f" and {len(state_keys) - _KEYS_NAMED} more" if len(state_keys) > _KEYS_NAMED else ""
    return f"{len(state_keys)} process states dropped: {first}{more}"


# What an audit entry says in place of process-state keys under encryption at rest.
KEYS_NOT_RECORDED = "keys not recorded: encryption at rest"
# The keys an audit entry of a drop names, at most (the entry's message is bounded).
_KEYS_NAMED = 10


# The most command ids one DismissAllParkedCommands names: one commit, one
# transaction, bounded (a reaction keeps at most MAX_PARKED parked anyway).
MAX_NAMED_COMMANDS = 10_000


def _named_command_ids(request: pb.DismissAllParkedCommandsRequest) -> list[str]:
    """The ids of a DismissAllParkedCommands that names them, checked:
    nothing is dismissed if one is wrong."""
    if request.reason:
        raise InvalidInput(
            "give command_ids or a reason, not both: the named commands are those an operator confirmed",
            reason="REASON_WITH_COMMAND_IDS",
            metadata={"reaction": request.reaction},
        )
    if len(request.command_ids) > MAX_NAMED_COMMANDS:
        raise InvalidInput(
            f"{len(request.command_ids)} command ids named, at most {MAX_NAMED_COMMANDS} in one dismissal",
            reason="TOO_MANY_COMMAND_IDS",
            metadata={"reaction": request.reaction, "limit": str(MAX_NAMED_COMMANDS)},
        )
    return [check_id("command_ids", command_id, reason="INVALID_COMMAND_ID") for command_id in request.command_ids]


def _with_reason(reason: str) -> str:
    return f" refused with {reason}" if reason else ""


def _after(token: str, listing: str) -> ParkedAt:
    """Where the page ``token`` continues: after this parked command."""
    fields = read_token(token, listing, bound_to="the reaction")
    position, parked_at_us, command_id = fields.get("p"), fields.get("t"), fields.get("c")
    # A token of a version before sequences (no "s") goes on where it was:
    # among the commands parked before them, which all sort first.
    sequence = fields.get("s", 0)
    # A tampered token is input like any other (JSON's true is no int here).
    if (
        type(sequence) is not int
        or not 0 <= sequence < 2**64
        or type(position) is not int
        or not 0 <= position <= MAX_VERSION
        or type(parked_at_us) is not int
        or not -(2**63) <= parked_at_us < 2**63
        or not isinstance(command_id, str)
    ):
        raise InvalidInput.for_field("page_token", "is damaged", reason="INVALID_PAGE_TOKEN")
    return sequence, position, parked_at_us, command_id
