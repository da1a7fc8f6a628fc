"""Read models an import that replaces events leaves unlike a rebuild.

A projection applies each event once, in log order, from its checkpoint. An
import that replaces an aggregate's events (``--overwrite``, a restore's
``restore_deleted``) removes events a projection may have applied and
appends others at new positions, which it applies too:

- a **live** aggregate replaced: a projection whose checkpoint reached the
  first event removed applied some of them, and no event tells it to take
  them back (no tombstone comes): it would count both histories;
- a **deleted** aggregate (its tombstone replaced by its archived events): a
  projection whose checkpoint is below the tombstone (lagging, or stopped
  on an event it fails on) may have applied the aggregate's events before
  the deletion, and never sees the tombstone that lets it drop them, which
  is removed: it would count them twice once the restored ones come.

Every stored projection is looked at, loaded here or not: a stored
checkpoint is where a projection resumes, on another replica whose plugins
declare it (a rolling deployment) or once its plugin is deployed again.
Reactions are not: they never act on imported events
(``service.store.imported``), so the replacement never reaches them. A
projection a loaded plugin declares counts only if it reads the
aggregate's type (its ``aggregate_types``, the event types it handles): one
that never sees its events derives nothing from them. What ``Importer``
does with the names: a restore first waits a few seconds for those below a
tombstone to pass it (``after_waiting``: a projection lagging by milliseconds,
as one is right after a delete, is no reason to refuse), then refuses while
any is still behind (``READ_MODELS_BEHIND``) unless told to go on, and
reports them in its summary to be rebuilt. A **retired** projection (a
stored checkpoint no loaded plugin declares: ``retired``) never moves on
here, so it does not refuse a restore (it would, until someone deletes its
row); it is named to be rebuilt, should it ever be deployed again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from service.errors import ImportConflict
from service.plugins.registry import Registry
from service.store.base import AggregateQuery, EventRecorder, ProjectionStore
from service.store.records import TOMBSTONE_EVENT_TYPE, is_tombstone
from service.store.server_names import FAILURE_PREFIX, REACTION_START_PREFIX, is_server_own

READ_MODELS_BEHIND = "READ_MODELS_BEHIND"
# How long a restore waits for projections below a tombstone to pass it
# before refusing (ImportOptions.read_models_wait): a running projection
# applies a tombstone within milliseconds of its commit; one that takes
# longer is far behind, or stopped.
DEFAULT_READ_MODELS_WAIT = 5.0
# The longest a restore may be told to wait (ImportOptions.read_models_wait_ms).
MAX_READ_MODELS_WAIT = 60.0
# Between reads of the checkpoints while waiting (doubling from the first to
# the last): a projection may run on another replica, or in a server this
# process (a command-line import) cannot hear, so its stored row is read.
_FIRST_LOOK = 0.005
_LAST_LOOK = 0.1


@dataclass(frozen=True, slots=True)
class Replaced:
    """What replacing an aggregate removes from the target: the position of
    the first event removed, and of its tombstone if it was deleted."""

    aggregate_id: str
    aggregate_type: str
    first_removed: int
    tombstone: int | None


async def replaced_in(events: EventRecorder, aggregate_id: str, *, kept: int = 0) -> Replaced | None:
    """What replacing ``aggregate_id`` removes when its first ``kept``
    versions are written back (a history that parts from the stream's
    there); None if it removes nothing."""
    removed = await events.read_aggregate(aggregate_id, AggregateQuery(from_version=kept + 1, limit=1))
    if not removed:
        return None
    last = await events.read_aggregate(aggregate_id, AggregateQuery(backwards=True, limit=1))
    tombstone = last[0].position if last and is_tombstone(last[0]) else None
    return Replaced(aggregate_id, removed[0].aggregate_type, removed[0].position, tombstone)


async def checkpoints(projections: ProjectionStore, registry: Registry | None) -> dict[str, int]:
    """Every stored projection's checkpoint, by name, loaded here or not;
    no reaction's (a loaded one, or one whose start row is stored)."""
    stored = await projections.stored_projections()
    names = {name for name, _ in stored}
    return {
        name: position
        for name, position in stored
        if not is_server_own(name)
        and REACTION_START_PREFIX + name not in names
        and (registry is None or registry.reaction(name) is None)
    }


def stale(replaced: Replaced, read_models: Mapping[str, int], registry: Registry | None) -> dict[str, int]:
    """Those of ``read_models`` (name: checkpoint) that replacing
    ``replaced`` leaves unlike a rebuild (see the module)."""
    found: dict[str, int] = {}
    for name, position in read_models.items():
        if not _reads(registry, name, replaced.aggregate_type):
            continue
        if replaced.tombstone is not None:
            stale_here = position < replaced.tombstone  # may have applied its events, and never sees it
        else:
            stale_here = position >= replaced.first_removed  # applied one of the events removed
        if stale_here:
            found[name] = position
    return found


def retired(read_models: Mapping[str, int], registry: Registry | None) -> dict[str, int]:
    """Those of ``read_models`` no loaded plugin declares (none when no
    registry is given: then nothing is known to be retired)."""
    if registry is None:
        return {}
    return {name: position for name, position in read_models.items() if registry.projection(name) is None}


# By aggregate restored: its tombstone's position, and the projections
# below it (name: checkpoint).
BelowTombstones = dict[str, tuple[int, dict[str, int]]]


def below_tombstones(
    deleted: Sequence[Replaced], read_models: Mapping[str, int], registry: Registry | None
) -> BelowTombstones:
    """Those of ``read_models`` below the tombstone of each of ``deleted``
    that reads its type (``stale``), the aggregates with none left out."""
    found = {d.aggregate_id: (d.tombstone or 0, stale(d, read_models, registry)) for d in deleted}
    return {aggregate_id: (at, below) for aggregate_id, (at, below) in found.items() if below}


def named_in(behind: BelowTombstones) -> dict[str, int]:
    """Every projection of ``behind``, with its checkpoint."""
    return {name: position for _, below in behind.values() for name, position in below.items()}


def without(behind: BelowTombstones, names: Iterable[str]) -> BelowTombstones:
    """``behind`` but for the projections ``names``."""
    left_out = set(names)
    kept = {a: (at, {n: p for n, p in below.items() if n not in left_out}) for a, (at, below) in behind.items()}
    return {aggregate_id: (at, below) for aggregate_id, (at, below) in kept.items() if below}


async def after_waiting(
    projections: ProjectionStore, behind: BelowTombstones, *, max_wait: float
) -> tuple[BelowTombstones, dict[str, int]]:
    """``behind`` as it stands once its projections have passed the
    tombstones they are below, or ``max_wait`` seconds are over (their
    checkpoints read again), and those of it stopped at an event at or
    before the tombstone by a handler's failure (name: the event's
    position), which are not waited for: only a fixed plugin moves them on."""
    targets: dict[str, int] = {}
    for tombstone, below in behind.values():
        for name in below:
            targets[name] = max(targets.get(name, 0), tombstone)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait
    pause = _FIRST_LOOK
    while True:
        now: dict[str, int] = {}
        stopped: dict[str, int] = {}
        for name, target in targets.items():
            now[name] = checkpoint = await projections.projection_position(name)
            if checkpoint < target:
                failed_at = await projections.projection_position(FAILURE_PREFIX + name)
                if checkpoint < failed_at <= target:
                    stopped[name] = failed_at
        left = {a: (at, {n: now[n] for n in below if now[n] < at}) for a, (at, below) in behind.items()}
        left = {aggregate_id: (at, below) for aggregate_id, (at, below) in left.items() if below}
        remaining = deadline - loop.time()
        if not left or remaining <= 0 or set(named_in(left)) <= set(stopped):
            return left, {name: at for name, at in stopped.items() if name in named_in(left)}
        await asyncio.sleep(min(pause, remaining))
        pause = min(pause * 2, _LAST_LOOK)


def _reads(registry: Registry | None, name: str, aggregate_type: str) -> bool:
    """Whether projection ``name`` may apply events of ``aggregate_type``:
    unknown (so yes) unless a loaded plugin declares it."""
    projection = registry.projection(name) if registry is not None else None
    if registry is None or projection is None:
        return True
    if projection.aggregate_types and aggregate_type not in projection.aggregate_types:
        return False
    for event_type in projection.event_types | registry.upcast_types:
        if event_type == TOMBSTONE_EVENT_TYPE:
            continue  # a tombstone's handler drops what events derived: it derives nothing itself
        spec = registry.event(event_type)
        if spec is None or spec.aggregate.name == aggregate_type:
            return True  # (an upcast type may become any event: perhaps one of this type's)
    return False


def behind_refusal(behind: BelowTombstones, stopped: Mapping[str, int], *, waited: float) -> ImportConflict:
    """READ_MODELS_BEHIND for a restore of the aggregates of ``behind``
    (aggregate: its tombstone's position and the projections below it,
    name: checkpoint), after ``waited`` seconds; ``stopped``: those stopped
    at an event by a handler's failure (name: its position)."""
    projections = named_in(behind)
    named = ", ".join(
        f"{name} (at {position}" + (f", stopped by a failure at {stopped[name]})" if name in stopped else ")")
        for name, position in sorted(projections.items())
    )
    tombstones = ", ".join(f"{aggregate_id!r} at {position}" for aggregate_id, (position, _) in sorted(behind.items()))
    return ImportConflict(
        f"read models have not reached the tombstone of what would be restored ({tombstones}) after {waited:g} s:"
        f" {named}. Restored,"
        " the aggregate's events would be applied again on top of what they derived from them before the deletion,"
        " whose tombstone they would never see. Nothing was restored: let them catch up (fix one stopped on an"
        " event: chronicle projection NAME says where) and restore again, or restore with"
        " --even-if-read-models-behind (ImportOptions.even_if_read_models_behind) and rebuild them after"
        " (chronicle projection rebuild NAME)",
        reason=READ_MODELS_BEHIND,
        metadata={
            "projections": json.dumps(dict(sorted(projections.items()))),
            "tombstones": json.dumps(
                {aggregate_id: tombstone for aggregate_id, (tombstone, _) in sorted(behind.items())}
            ),
            "stopped": json.dumps(dict(sorted(stopped.items()))),
            "waited_seconds": f"{waited:g}",
        },
    )
