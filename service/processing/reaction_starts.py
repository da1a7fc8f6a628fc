"""Where a reaction starts: fixed when a server that declares it starts,
before that server takes a command.

A reaction's checkpoint is the position it has handled up to. One new to the
store has none; ``Reaction.start_from`` says where it goes: ``"end"``, the
log's head when its first server starts (it reacts only to events committed
from then on, as a subscription group made ``from_end``), or
``"beginning"``, 0 (it reacts to every event in the log, and sends the
commands of all of history). The position is written as its checkpoint with
an insert-if-absent (``ProjectionStore.start_projection``) while the server
starts, before it serves: were it fixed when the runner first gets its lease,
the commands accepted in between would make events before it, never reacted
to. Of several replicas that start at once the first one's insert stands, and
the others, and every later start, find it: a reaction's start is fixed once.
A checkpoint that exists (however it came: a commit, an earlier start) is
never moved.

Older versions had no ``start_from``: a reaction started at 0 whenever it
had no checkpoint, and a checkpoint's row was made by its first commit,
which may not have come yet (a reaction whose first batch keeps failing
stays at 0, without a row, some of its commands perhaps sent). So a reaction
that does not say ``start_from`` starts at the beginning, as it did, on the
first start of this version on a store that has events (no ``MARKER`` there
yet): it may be one that ran before, and the end would skip what it had not
done. The marker is written after the reactions' starts, so a replica that
finds it finds their starts too. An import into a store without events
writes it too (``service.store.imported``): a log that came by import is not
one that older versions served.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from service.errors import ChronicleError
from service.plugins.reactions import Reaction
from service.processing.reactions import ReactionRunner
from service.store.base import LogReader, ProjectionStore
from service.store.imported import REACTION_STARTS
from service.store.server_names import REACTION_START_PREFIX

log = logging.getLogger(__name__)

# The checkpoint row that says this version has fixed reactions' starts on
# the store. Its position is the log head then, at least 1, so that 0 (no
# row) means "not yet".
MARKER = REACTION_STARTS
# Where each reaction started, kept beside its checkpoint (which moves on) in
# a row of its own, written after the checkpoint's: the position it was
# fixed at, or, for a reaction older than start positions, its checkpoint
# when this version first started it. GetReaction shows it.
START_PREFIX = REACTION_START_PREFIX


async def fix_starts(
    documents: ProjectionStore, log_reader: LogReader, reactions: Iterable[Reaction[Any]]
) -> dict[str, int]:
    """Fix the start of each of ``reactions`` that has no checkpoint; where
    each started, by name."""
    head = await log_reader.log_head()
    upgraded = head > 0 and await documents.projection_position(MARKER) == 0
    found: dict[str, int] = {}
    for reaction in reactions:
        found[reaction.name] = await fix_start(documents, reaction, head=head, upgraded=upgraded)
    if await documents.projection_position(MARKER) == 0:
        await documents.start_projection(MARKER, max(head, 1))
    return found


async def fix_start(documents: ProjectionStore, reaction: Reaction[Any], *, head: int, upgraded: bool = False) -> int:
    """Fix ``reaction``'s start (see the module) unless it has a checkpoint;
    where it started."""
    start_from = reaction.start_from or ("beginning" if upgraded else "end")
    wanted = head if start_from == "end" else 0
    had = await documents.start_projection(reaction.name, wanted)
    started = await documents.start_projection(START_PREFIX + reaction.name, wanted if had is None else had)
    if had is not None:
        return had if started is None else started
    if reaction.start_from is None and upgraded:
        log.warning(
            "reaction %s has no checkpoint on a store older versions served: it starts at the beginning of the"
            " log, as it did then (it may have run there without committing a checkpoint). Declare"
            " start_from='end' for a reaction that is new, or start_from='beginning' to say so",
            reaction.name,
            extra={"reaction": reaction.name, "position": 0},
        )
    else:
        # Worth an operator's eye when there was history to skip or replay;
        # on an empty log (a new deployment) every start is the same.
        log.log(
            logging.INFO if head else logging.DEBUG,
            "reaction %s is new: it starts at position %d (start_from=%s, log head %d)",
            reaction.name,
            wanted,
            start_from,
            head,
            extra={"reaction": reaction.name, "position": wanted},
        )
    return wanted


async def fix_start_of(
    documents: ProjectionStore, log_reader: LogReader, reactions: Sequence[Reaction[Any]], name: str
) -> int:
    """``name``'s checkpoint, its start fixed first if the server's start
    could not (the store away then): every reaction's at once, so that the
    marker is written only with all of them (as ``fix_starts``); where it
    started."""
    return (await fix_starts(documents, log_reader, reactions))[name]


async def fix_starts_safely(
    documents: ProjectionStore, log_reader: LogReader, runners: Iterable[ReactionRunner]
) -> None:
    """``fix_starts`` for the runners' reactions while the server starts,
    each runner told where its reaction stands. A store that cannot be
    reached does not stop the start: the runners fix their starts when they
    first reach it (commands this server accepted before then, once the
    store was back, may come before a start at the end)."""
    runners = list(runners)
    if not runners:
        return
    try:
        found = await fix_starts(documents, log_reader, [runner.reaction for runner in runners])
    except ChronicleError as error:
        log.warning(
            "could not fix where new reactions start (%s: %s): each does when it first reaches the store",
            error.reason,
            error.message,
        )
        return
    for runner in runners:
        runner.started_at(found[runner.reaction.name])
