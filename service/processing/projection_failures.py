"""A projection stopped at an event, as every replica learns it.

Only the replica that runs a projection (holds its lease) meets its
handler's failure; the others read the projection's state from the store.
So when a projection stops at an event (``on_failure="stop"``: a plugin
must be fixed), its runner writes the failure beside the checkpoint, in a
row of the server's own (``#failure/NAME``: its checkpoint the failing
event's position, one document the error's text), under its lease's
fencing token (a replica that lost the lease writes nothing); and deletes it
(the checkpoint back to 0) once a step of the projection goes through
again. Readers look at the position first: the text is read only when a
failure is stored, so that under encryption at rest no data key is made
for a projection that never failed. Every replica then
answers a read waiting past that event with PROJECTION_FAILED at once, and
shows the error in GetProjection, as the runner's replica does.

The document names the aggregate whose event the handler failed on as its
subject: its text may quote that event's payload, and forgetting the
aggregate deletes it (as it withdraws the runner's own copy); the position
stays, said with a withdrawn text.
A failure that the stored checkpoint has passed (a runner that got past it
before it could delete the row) is no failure any more, and is not said.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass

from service.errors import ChronicleError
from service.store.base import ProjectionStore
from service.store.leasing import Fencing
from service.store.records import DocumentWrite
from service.store.server_names import FAILURE_PREFIX

log = logging.getLogger(__name__)

_KEY = "failure"
_TYPE = "chronicle.server.ProjectionFailure"
# Its text once the aggregate whose event it was met on is forgotten.
WITHDRAWN = "withdrawn: it was met on an event of an aggregate since forgotten"


@dataclass(frozen=True, slots=True)
class StoredFailure:
    """Where a projection stands still and why."""

    failed_at: int
    error: str
    aggregate_id: str = ""


async def record_failure(store: ProjectionStore, name: str, failure: StoredFailure, fencing: Fencing | None) -> bool:
    """Write ``failure`` as projection ``name``'s; whether it was written (a
    store away, a lease lost, another writer in between or the aggregate
    forgotten meanwhile: not, and the runner tries again at its next
    failure). The row's checkpoint is the failing event's position: read
    alone (``failed_at``), it says whether a failure is stored without
    opening the document, which under encryption at rest would make the
    row a data key."""
    data = json.dumps({"error": failure.error}).encode()
    subjects = (failure.aggregate_id,) if failure.aggregate_id else ()
    return await _commit(store, name, DocumentWrite(_KEY, _TYPE, data, subjects), failure.failed_at, fencing)


async def clear_failure(store: ProjectionStore, name: str, fencing: Fencing | None) -> bool:
    """Delete projection ``name``'s stored failure, if any; whether it is gone."""
    return await _commit(store, name, DocumentWrite(_KEY), 0, fencing)


async def _commit(
    store: ProjectionStore, name: str, write: DocumentWrite, failed_at: int, fencing: Fencing | None
) -> bool:
    try:
        row = FAILURE_PREFIX + name
        current = await store.projection_position(row)
        if current == failed_at == 0:
            return True  # nothing stored: nothing to delete
        await store.commit_projection(
            row, expected_position=current, new_position=failed_at, writes=[write], fencing=fencing
        )
    except ChronicleError as error:  # SubjectsForgotten and ConcurrencyConflict among them
        log.debug("projection %s: its failure as stored is not updated: %s", name, error)
        return False
    return True


async def failed_at(store: ProjectionStore, name: str) -> int:
    """The position of the event projection ``name`` was stored as stopped
    at (0: none stored)."""
    return await store.projection_position(FAILURE_PREFIX + name)


async def has_failure(store: ProjectionStore, name: str) -> bool:
    """Whether a failure of projection ``name`` is stored (passed or not);
    True when the store cannot say (the delete that follows fails too, and
    is tried again after the next step)."""
    try:
        return await failed_at(store, name) > 0
    except ChronicleError:
        return True


async def stored_failure(store: ProjectionStore, name: str, checkpoint: int) -> StoredFailure | None:
    """Projection ``name``'s stored failure while it stands still at it
    (``checkpoint``, the stored one, before the failing event), else None.
    Its text withdrawn when the aggregate it was met on has been forgotten
    since (the document went with it; where it stands still did not)."""
    position = await failed_at(store, name)
    if not position or checkpoint >= position:
        return None
    stored = await store.load_document(FAILURE_PREFIX + name, _KEY)
    error = WITHDRAWN
    if stored is not None and stored.type_name == _TYPE:
        with contextlib.suppress(ValueError, KeyError, TypeError):  # not this server's: said withdrawn
            error = str(json.loads(stored.data)["error"])
    return StoredFailure(position, error)
