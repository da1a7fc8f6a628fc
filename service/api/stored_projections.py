"""Projections the store holds that no loaded plugin declares: a read
model renamed away or removed (an "orphan"), or one this replica's plugins
do not declare yet during a rolling deployment. Found for ListProjections
and GetDocument's refusals, and deleted, a page per transaction, by
DeleteProjection."""

from __future__ import annotations

from service.errors import InvalidInput, ProjectionLoaded, ResourceNotFound
from service.plugins.registry import Registry
from service.store.base import ProjectionStore
from service.store.server_names import FAILURE_PREFIX, SERVER_OWN_PREFIX, is_server_own

# Rows (documents and parked events each) deleted per transaction: small
# enough that a transaction ends in milliseconds and holds few row locks,
# large enough that a million documents take a thousand round trips.
DELETE_PAGE = 1000


def declared(registry: Registry, name: str) -> str | None:
    """What a loaded plugin declares under ``name`` ("projection",
    "reaction"), or None."""
    if registry.projection(name) is not None:
        return "projection"
    if registry.reaction(name) is not None:
        return "reaction"
    return None


async def orphaned(registry: Registry, store: ProjectionStore) -> list[tuple[str, int]]:
    """The stored names no loaded plugin declares, with their checkpoints."""
    return [
        (name, position)
        for name, position in await store.stored_projections()
        if not is_server_own(name) and declared(registry, name) is None
    ]


async def refuse_undeclared(store: ProjectionStore, name: str, *, admin: bool) -> ResourceNotFound:
    """The refusal of a read of ``name``, which no loaded plugin declares:
    PROJECTION_NOT_LOADED when the store holds it (renamed away, or not
    deployed here yet: another replica may serve it), else
    PROJECTION_NOT_FOUND. Only an administrator, who may list orphaned
    projections anyway, learns which: to any other caller a retired
    projection is as unknown as a name nothing holds (reads do not tell
    existence apart, docs/security.md)."""
    if not admin:
        return _not_found(name)
    for stored, position in await store.stored_projections():
        if stored == name and not is_server_own(name):
            return ResourceNotFound(
                f"projection {name!r} is stored (checkpoint at {position}) but no loaded plugin of this server"
                " declares it: deploy a plugin that does, or delete it (DeleteProjection)",
                reason="PROJECTION_NOT_LOADED",
                metadata={"projection": name, "position": str(position)},
            )
    return _not_found(name)


def refuse_reaction(name: str) -> InvalidInput:
    """The refusal of ``name``, a loaded reaction's, given to
    ProjectionService: said to be a reaction, and where it is read."""
    return InvalidInput.for_field(
        "name",
        f"{name!r} is a reaction, not a projection: read it with ReactionService (GetReaction,"
        f" `chronicle reaction {name}`); a reaction is not rebuilt",
        reason="NOT_A_PROJECTION",
    )


def _not_found(name: str) -> ResourceNotFound:
    return ResourceNotFound(f"no loaded plugin declares projection {name!r}", reason="PROJECTION_NOT_FOUND")


async def delete_stored(registry: Registry, store: ProjectionStore, name: str) -> int:
    """Delete everything stored under ``name``, a page per transaction; how
    many documents and parked events went. Refused for a name a loaded
    plugin declares: its runner here would start it again at once."""
    if is_server_own(name):
        raise InvalidInput.for_field(
            "name", f"names starting with {SERVER_OWN_PREFIX!r} are the server's own", reason="INVALID_PROJECTION"
        )
    kind = declared(registry, name)
    if kind is not None:
        # What to do instead: a projection's documents are made again by a
        # rebuild; a reaction's state is ReactionService's to drop.
        instead = (
            "or rebuild it: RebuildProjection"
            if kind == "projection"
            else "a reaction's process states are dropped with ReactionService.DropProcessState"
        )
        raise ProjectionLoaded(
            f"a loaded plugin declares {kind} {name!r}: deploy plugins that no longer declare it on every"
            f" replica first ({instead})",
            metadata={"projection": name, "declared_as": kind},
        )
    deleted = 0
    while page := await store.delete_projection(name, limit=DELETE_PAGE):
        deleted += page
    # The failure it stood still at, stored for every replica: the server's own row, not counted.
    while await store.delete_projection(FAILURE_PREFIX + name, limit=DELETE_PAGE):
        pass
    return deleted
