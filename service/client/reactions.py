"""Reactions from the client's side (``ChronicleClient.reactions``): where
each reaction (a plugin's process manager) stands, and what an operator does
with the commands it parked and the process states it keeps::

    async with ChronicleClient.connect(address) as client:
        status = await client.reactions.get("bank.transfers")
        async for parked in client.reactions.parked("bank.transfers"):
            print(parked.command_id, parked.reason)
        outcome = await client.reactions.replay_all("bank.transfers", reason="ACCOUNT_CLOSED")
        stuck = await client.reactions.state("bank.transfers", "transfer-42")
        print(stuck.state_type, stuck.state_json)

Every call is a unary call retried as one is (``retry.call_with_retries``),
and takes ``timeout=``: seconds for the whole call, retries included (a
listing: from its first page to its last), then ``DeadlineExceeded``;
refusals are :class:`~service.client.errors.RemoteError` subclasses with the
server's reason. Reading a process state takes the admin grant (any server
answers). Replaying, dismissing, dropping states and resetting (``reset``:
moving its checkpoint) take the admin grant and the server that runs the reaction (elsewhere ``FailedPrecondition``
REACTION_RUNS_ELSEWHERE, that server's address in the metadata's
``runner`` when known). They are not idempotent: a retry after an answer
lost once the server acted meets ``NotFound`` (PARKED_COMMAND_NOT_FOUND,
PROCESS_STATE_NOT_FOUND) for what the first attempt did.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence
from typing import Literal

from chronicle.v1 import reaction_service_pb2 as pb
from chronicle.v1 import reaction_service_pb2_grpc as pb_grpc
from service.client.unary import UnaryCalls

ReactionStatus = pb.ReactionStatus
ParkedCommand = pb.ParkedCommand
ReplayedCommand = pb.ReplayParkedCommandResponse
ReplayedAll = pb.ReplayAllParkedCommandsResponse
ProcessState = pb.StoredProcessState
Reset = pb.ResetReactionResponse


class Reactions(UnaryCalls[pb_grpc.ReactionServiceStub]):
    """``ReactionService`` (``ChronicleClient.reactions``)."""

    async def list(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> builtins.list[ReactionStatus]:
        """Every loaded reaction the caller may read, by name."""
        response: pb.ListReactionsResponse = await self._call(
            "list reactions", self._stub.ListReactions, pb.ListReactionsRequest(), timeout
        )
        return builtins.list(response.reactions)

    async def get(
        self,
        name: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> ReactionStatus:
        """One reaction's status. ``NotFound`` (REACTION_NOT_FOUND) for one
        no loaded plugin declares."""
        status: ReactionStatus = await self._call(
            f"get reaction {name!r}", self._stub.GetReaction, pb.GetReactionRequest(name=name), timeout
        )
        return status

    async def parked(
        self,
        reaction: str,
        *,
        page_size: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> AsyncIterator[ParkedCommand]:
        """The commands ``reaction`` parked, oldest first, a page at a time
        (each page retried as a unary call): parked commands carry their
        metadata, so all of them may not fit in one message. ``page_size``
        (0: the server's, 1,000) bounds a page; more than 1,000 is
        ``InvalidArgument`` (PAGE_SIZE_TOO_LARGE)."""
        pages = self._pages(
            f"list the parked commands of {reaction!r}",
            self._stub.ListParkedCommands,
            lambda token: pb.ListParkedCommandsRequest(reaction=reaction, page_size=page_size, page_token=token),
            timeout,
        )
        async for page in pages:
            for parked in page.commands:
                yield parked

    async def replay(
        self,
        reaction: str,
        command_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> ReplayedCommand:
        """Send a parked command again, under a new id: ``accepted``, or
        refused again (still parked) with its ``reason`` and ``message``.
        ``NotFound`` (PARKED_COMMAND_NOT_FOUND) for an id not parked."""
        request = pb.ReplayParkedCommandRequest(reaction=reaction, command_id=command_id)
        replayed: ReplayedCommand = await self._call(
            f"replay parked command {command_id} of {reaction!r}", self._stub.ReplayParkedCommand, request, timeout
        )
        return replayed

    async def dismiss(
        self,
        reaction: str,
        command_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> None:
        """Remove a parked command without sending it; as ``replay`` for a
        missing id."""
        request = pb.DismissParkedCommandRequest(reaction=reaction, command_id=command_id)
        what = f"dismiss parked command {command_id} of {reaction!r}"
        await self._call(what, self._stub.DismissParkedCommand, request, timeout)

    async def replay_all(
        self,
        reaction: str,
        *,
        reason: str = "",
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> ReplayedAll:
        """Send every parked command (or those refused with ``reason``)
        again, oldest first, each once: how many were ``accepted`` and how
        many ``refused`` again (still parked)."""
        request = pb.ReplayAllParkedCommandsRequest(reaction=reaction, reason=reason)
        replayed: ReplayedAll = await self._call(
            f"replay the parked commands of {reaction!r}", self._stub.ReplayAllParkedCommands, request, timeout
        )
        return replayed

    async def dismiss_all(
        self,
        reaction: str,
        *,
        reason: str = "",
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> int:
        """Remove every parked command (or those refused with ``reason``)
        without sending them, in one transaction; how many."""
        request = pb.DismissAllParkedCommandsRequest(reaction=reaction, reason=reason)
        response: pb.DismissAllParkedCommandsResponse = await self._call(
            f"dismiss the parked commands of {reaction!r}", self._stub.DismissAllParkedCommands, request, timeout
        )
        return response.dismissed

    async def state(
        self,
        reaction: str,
        state_key: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> ProcessState:
        """The state ``reaction`` keeps under ``state_key``: its stored
        message (``state``, an Any), its type's name (``state_type``), the
        message as JSON through the server's plugins (``state_json``; empty
        for a type the reaction no longer knows), the aggregates it was
        derived from (``subjects``), its pending deadlines (``deadlines``:
        ``name`` and ``due``, soonest first) and when the process began and
        last changed (``started``, ``updated``: commit times; unset from an
        older server). Takes the admin grant (a process state
        may hold personal data; each read is audited). ``NotFound``
        (PROCESS_STATE_NOT_FOUND) if it keeps none there, (REACTION_NOT_FOUND)
        for a reaction no loaded plugin declares."""
        request = pb.GetProcessStateRequest(reaction=reaction, state_key=state_key)
        response: pb.GetProcessStateResponse = await self._call(
            f"read state {state_key!r} of {reaction!r}", self._stub.GetProcessState, request, timeout
        )
        return response.state

    async def states(
        self,
        reaction: str,
        *,
        prefix: str = "",
        page_size: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> AsyncIterator[ProcessState]:
        """The states ``reaction`` keeps whose key starts with ``prefix``, by
        key, a page at a time (each page retried as a unary call), as
        ``state`` shows each. ``FailedPrecondition`` (DOCUMENT_KEYS_HIDDEN)
        on a server with encryption at rest, which cannot list them."""
        pages = self._pages(
            f"list the states of {reaction!r}",
            self._stub.ListProcessStates,
            lambda token: pb.ListProcessStatesRequest(
                reaction=reaction, key_prefix=prefix, page_size=page_size, page_token=token
            ),
            timeout,
        )
        async for page in pages:
            for state in page.states:
                yield state

    async def drop_states(
        self,
        reaction: str,
        state_keys: Sequence[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> int:
        """Delete the states ``reaction`` keeps under each of ``state_keys``
        (distinct, at most 1,000), in one transaction: all, or none when it
        keeps no state under one of them (``NotFound``
        PROCESS_STATE_NOT_FOUND, its metadata's ``state_key`` the first such
        key and ``missing`` how many); how many were dropped."""
        keys = builtins.list(state_keys)
        # The first in state_key, the field every server reads (an empty list: refused INVALID_STATE_KEY).
        request = pb.DropProcessStateRequest(reaction=reaction, state_key=keys[0] if keys else "", state_keys=keys[1:])
        response: pb.DropProcessStateResponse = await self._call(
            f"drop {len(keys)} states of {reaction!r}", self._stub.DropProcessState, request, timeout
        )
        return response.dropped

    async def drop_state(
        self,
        reaction: str,
        state_key: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> None:
        """Delete the state ``reaction`` keeps under ``state_key`` (one
        process's; one it cannot load: DOCUMENT_TYPE_MISMATCH, the key in
        the error's metadata ``state_key``): the process goes on from an
        empty state. ``NotFound`` (PROCESS_STATE_NOT_FOUND) if it keeps none
        there; ``InvalidArgument`` (INVALID_STATE_KEY) for a key that is no
        identifier."""
        request = pb.DropProcessStateRequest(reaction=reaction, state_key=state_key)
        await self._call(f"drop state {state_key!r} of {reaction!r}", self._stub.DropProcessState, request, timeout)

    async def reset(
        self,
        reaction: str,
        to: int | Literal["start", "end"],
        *,
        even_if_records_pruned: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> Reset:
        """Move ``reaction``'s checkpoint to ``to``: a log position, "start"
        (0) or "end" (the log's head): back, it handles the events after it
        again (their commands under the same ids, answered from their
        records where the store has them; imported events stay history).
        Admin grant, on the server that runs it (``FailedPrecondition``
        REACTION_RUNS_ELSEWHERE elsewhere); ``InvalidArgument``
        POSITION_BEYOND_HEAD for a position past the log's head;
        ``FailedPrecondition`` COMMAND_RECORDS_PRUNED back past the server's
        command retention, unless ``even_if_records_pruned``. Where it was
        and is now, and the log's head then."""
        request = pb.ResetReactionRequest(name=reaction, even_if_records_pruned=even_if_records_pruned)
        if to == "end":
            request.to_end = True
        elif to != "start":
            request.position = to
        response: Reset = await self._call(f"reset {reaction!r} to {to}", self._stub.ResetReaction, request, timeout)
        return response


__all__ = ["ParkedCommand", "ProcessState", "ReactionStatus", "Reactions", "ReplayedAll", "ReplayedCommand", "Reset"]
