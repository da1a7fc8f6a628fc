"""What an import leaves in a store for the reactions that come after it.

An imported event is history: the system it came from (another store, a
legacy application, this store before an archive) already had the side
effects a reaction would cause for it, so a reaction never sends commands for
one (``service.processing.reactions``); projections and subscribers still
see it, as read models are rebuilt from history. The import marks each event
it writes with ``IMPORTED_KEY`` in its metadata: the mark is stored with the
event, on every store, however the import came (``ImportLog`` through a
server, or ``chronicle import --database-url`` straight into the database),
and moves with the event if it is exported again. Its value is always
``"true"``, so that an event imported twice (exported from one store into
another and on again) stays the same event, and two stores imported from one
export hold the same records. A command cannot carry the
key: the API refuses it from a client (``service.api.codec``) and a
reaction's commands leave it out, or a command could make its events pass
unseen by every reaction.

An import into a store that holds no events writes ``REACTION_STARTS``, the
row a server writes once it has fixed where its reactions start
(``service.processing.reaction_starts``): without it, the first server with
reactions would take the imported log for one that older versions served,
and start reactions that do not say where at its beginning.
"""

from __future__ import annotations

from dataclasses import replace

from service.store.base import ProjectionStore
from service.store.records import RecordedEvent

IMPORTED_KEY = "chronicle.imported"
IMPORTED = "true"
# The checkpoint row that says reactions' starts are fixed on the store (a
# name no projection or reaction can take: '#').
REACTION_STARTS = "#reaction-starts"


def is_imported(event: RecordedEvent) -> bool:
    return IMPORTED_KEY in event.metadata


def marked_imported(event: RecordedEvent) -> RecordedEvent:
    """``event`` as an import writes it: marked as imported."""
    if event.metadata.get(IMPORTED_KEY) == IMPORTED:
        return event
    return replace(event, metadata={**event.metadata, IMPORTED_KEY: IMPORTED})


async def mark_reaction_starts(documents: ProjectionStore) -> None:
    """Write ``REACTION_STARTS`` (unless there) on a store whose log holds no
    event yet, as a server with reactions does on a new store."""
    await documents.start_projection(REACTION_STARTS, 1)
