"""Deadlines (timers) of a reaction's processes: what the runner
(``processing/reactions.py``) needs beside its events to fire them.

A function's ``Schedule(name, after)`` makes a deadline of its process
(state key), due at the event's commit time plus ``after`` (the deadline's
due time plus ``after`` for one a deadline's function schedules): the same
on every replay, as no clock is read. It is kept twice, in the reaction's
batch transaction like the state (``reaction_documents.ProcessState``): in
the process's state, with the envelope of the event that scheduled it (what
fires), and as a document ``deadline:<state key>:<name>`` with its due time,
which the store indexes (``ProjectionStore.due_documents``: what is due).

Firing: only the runner that holds the reaction's lease fires, and only a
deadline whose due time the reaction has caught up with: when it has
handled every event of the log it reads (it is at the head), or when the
next event it has to handle was committed after the deadline was due. A
deadline due at T therefore never fires before the reaction has handled the
events committed before T (a payment captured before its timeout cancels
the timeout, however far behind the reaction was). Each fires in a
transaction (a batch of them at a time, committed without moving the
checkpoint, under the lease's fencing): the state loaded, the
``@on_deadline`` function called, its commands sent (ids derived from the
reaction, state key, name, due time and index: a crash before the commit
sends them again under the same ids, answered from their records), the
deadline deleted and the state written.

A deadline whose function fails stops the reaction there, tried again
after its pause; in a reaction with ``on_failure="park"`` its failures are
counted in its document (``Deadline.failures``), and at ``max_attempts`` it
is parked (``ParkedCommand.deadline``) instead: the state no longer lists
it, the reaction goes on, and an operator's replay calls its function again
(counted fired when it fires). A command the function returned that fails
for a plugin's bug is counted in the document too (``command_failures``),
and at ``max_attempts`` parked as an event's command is, the deadline fired.

Punctuality: the runner knows the soonest due time (read once when it takes
the lease, lowered by every commit that schedules one, read again after a
firing) and waits for events only until then: a caught-up reaction fires a
deadline at its due time, give or take its step (within its poll interval,
1 s, in any case), and reads nothing for deadlines while none is due.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from chronicle.v1 import reaction_service_pb2 as reaction_pb
from service.errors import ReactionFailed
from service.plugins.projections import ProjectedEvent
from service.plugins.reactions import REACTION_NAMESPACE, Cancel, Deadline, Reaction, Schedule, Send
from service.processing.reaction_documents import ProcessState
from service.store.base import ProjectionStore
from service.store.records import DocumentWrite

# Microseconds since the Unix epoch, now.
Clock = Callable[[], int]
# What a reaction runner's ``Outcomes`` hook is told for each deadline that
# fired (beside its commands' outcomes).
DEADLINE_FIRED = "deadline_fired"


def wall_clock_us() -> int:
    return time.time_ns() // 1000


def deadline_envelope(entry: reaction_pb.ScheduledDeadline) -> ProjectedEvent:
    """The envelope of the event that scheduled ``entry``, as it was."""
    return ProjectedEvent(
        entry.event_id,
        entry.aggregate_id,
        entry.aggregate_type,
        entry.version,
        entry.position,
        entry.event_type,
        entry.timestamp_us,
        entry.user_id,
        entry.origin,
        entry.correlation_id,
        dict(entry.metadata),
    )


def deadline_of(state_key: str, entry: reaction_pb.ScheduledDeadline) -> Deadline:
    """What the ``@on_deadline`` function is given for ``entry``."""
    return Deadline(entry.name, state_key, entry.due_us, deadline_envelope(entry))


def command_seed(reaction: str, state_key: str, name: str, due_us: int) -> str:
    """What a deadline's command ids derive from (``command_id_for``): the
    same at every firing of that deadline, another for a deadline of the
    same name due at another time (a retry the function scheduled)."""
    return f"{reaction}/deadline/{state_key}/{name}/{due_us}"


def parked_deadline_id(reaction: str, state_key: str, name: str, due_us: int) -> str:
    """The id a deadline parked in place of firing is listed under (as a
    parked command's: replayed and dismissed by it)."""
    return str(uuid.uuid5(REACTION_NAMESPACE, f"{command_seed(reaction, state_key, name, due_us)}/parked"))


def set_timers(
    reaction: Reaction[Any],
    acted: Sequence[Send | Schedule | Cancel],
    envelope: ProjectedEvent,
    state: ProcessState,
    who: str,
    now_us: int,
    *,
    later: bool = False,
) -> None:
    """Apply the ``Schedule`` and ``Cancel`` values of ``acted`` (what the
    function ``who`` names returned; its commands are the runner's) to the
    process's deadlines, in order, each due ``now_us`` plus its ``after``
    and scheduled by ``envelope``'s event. A deadline belongs to a process:
    one with no state (no key), or whose state the function left empty
    (over, and its deadlines with it), cannot have one; and its name must be
    one an ``@on_deadline`` function handles; with ``later`` (a deadline's
    functions), its ``after`` must be more than 0. Else ``ReactionFailed``,
    naming the reaction, the function and the deadline."""
    name = reaction.name
    for action in acted:
        if isinstance(action, Send):
            continue
        said = f"{type(action).__name__}({action.name!r})"
        metadata = {"reaction": name, "deadline": action.name, "function": who}
        if action.name not in reaction.deadline_handlers:
            raise ReactionFailed(
                f"reaction {name}: {who} returned {said}, but no @on_deadline({action.name!r}) function is"
                " declared for it",
                reason="UNKNOWN_DEADLINE",
                metadata=metadata,
            )
        if not state.state_key:
            raise ReactionFailed(
                f"reaction {name}: {who} returned {said} for an event of no process (its state key is empty): a"
                " deadline belongs to a process's state",
                reason="DEADLINE_WITHOUT_PROCESS",
                metadata=metadata,
            )
        if isinstance(action, Schedule):
            if later and action.after <= timedelta(0):
                raise ReactionFailed(
                    f"reaction {name}: {who} returned {said} with no delay: a deadline's functions schedule"
                    " only later deadlines (after > 0), or they could fire one another for ever",
                    reason="DEADLINE_NOT_LATER",
                    metadata=metadata,
                )
            state.schedule(action.name, action.due_us(now_us), envelope)
        else:
            state.cancel(action.name)
    assert state.message is not None
    if state.scheduled and state.message == type(state.message)():
        raise ReactionFailed(
            f"reaction {name}: {who} scheduled a deadline but left the process's state empty: a process whose"
            " state is empty is over, and its deadlines go with it; keep something in the state (its stage)"
            " while a deadline is pending",
            reason="DEADLINE_WITHOUT_PROCESS",
            metadata={"reaction": name, "function": who, "state_key": state.state_key},
        )


class Soonest:
    """The soonest due time among a reaction's deadlines, as its runner
    knows it: read from the store when unknown (the lease taken, again),
    lowered by each commit that writes one, read again after a firing. It
    may be earlier than the truth (a deadline cancelled, dropped or
    forgotten since): then a read finds nothing due and corrects it. It is
    never later, as only this runner writes the reaction's deadlines while
    it holds the lease."""

    def __init__(self, reaction: str, documents: ProjectionStore) -> None:
        self._reaction = reaction
        self._documents = documents
        self._known = False
        self.due_us: int | None = None

    def forget(self) -> None:
        self._known = False

    async def get(self) -> int | None:
        if not self._known:
            await self.read()
        return self.due_us

    async def read(self) -> None:
        _, self.due_us = await self._documents.due_summary(self._reaction)
        self._known = True

    def written(self, writes: Sequence[DocumentWrite]) -> None:
        """A commit of the runner's wrote ``writes``."""
        for write in writes:
            due_us = write.due_us if write.data is not None else None
            if due_us is not None and (self.due_us is None or due_us < self.due_us):
                self.due_us = due_us

    def wait(self, now_us: int, poll_interval: float) -> float:
        """How long the runner may wait for events before it must look at
        its deadlines again: its poll interval, or less when one is due
        sooner."""
        if not self._known or self.due_us is None:
            return poll_interval
        return max(0.0, min(poll_interval, (self.due_us - now_us) / 1_000_000))
