"""A projection stopped at an event, as every replica learns it.

Only the replica that runs a projection (holds its lease) meets its
handler's failure; the others read the projection's state from the store.
So when a projection stops at an event (``on_failure="stop"``: a plugin
must be fixed), its runner writes the failure beside the checkpoint, in a
row of the server's own (``#failure/NAME``, one document), under its lease's
fencing token (a replica that lost the lease writes nothing); and deletes it
once a step of the projection goes through again. Every replica then
answers a read waiting past that event with PROJECTION_FAILED at once, and
shows the error in GetProjection, as the runner's replica does.

The document names the aggregate whose event the handler failed on as its
subject: its text may quote that event's payload, and forgetting the
aggregate deletes it (as it withdraws the runner's own copy).
A failure that the stored checkpoint has passed (a runner that got past it
before it could delete the row) is no failure any more, and is not said.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from service.errors import ChronicleError
from service.store.base import ProjectionStore
from service.store.leasing import Fencing
from service.store.records import DocumentWrite
from service.store.server_names import SERVER_OWN_PREFIX

log = logging.getLogger(__name__)

FAILURE_PREFIX = f"{SERVER_OWN_PREFIX}failure/"
_KEY = "failure"
_TYPE = "chronicle.server.ProjectionFailure"


@dataclass(frozen=True, slots=True)
class StoredFailure:
    """Where a projection stands still and why."""

    failed_at: int
    error: str
    aggregate_id: str = ""


async def record_failure(store: ProjectionStore, name: str, failure: StoredFailure, fencing: Fencing | None) -> bool:
    """Write ``failure`` as projection ``name``'s; whether it was written (a
    store away, a lease lost or the aggregate forgotten meanwhile: not, and
    the runner tries again at its next failure)."""
    data = json.dumps({"failed_at": failure.failed_at, "error": failure.error}).encode()
    subjects = (failure.aggregate_id,) if failure.aggregate_id else ()
    return await _commit(store, name, DocumentWrite(_KEY, _TYPE, data, subjects), fencing)


async def clear_failure(store: ProjectionStore, name: str, fencing: Fencing | None) -> bool:
    """Delete projection ``name``'s stored failure, if any; whether it is gone."""
    return await _commit(store, name, DocumentWrite(_KEY), fencing)


async def _commit(store: ProjectionStore, name: str, write: DocumentWrite, fencing: Fencing | None) -> bool:
    try:
        # The row's checkpoint stays at 0: only its one document matters.
        await store.commit_projection(
            FAILURE_PREFIX + name, expected_position=0, new_position=0, writes=[write], fencing=fencing
        )
    except ChronicleError as error:  # SubjectsForgotten among them
        log.debug("projection %s: its failure as stored is not updated: %s", name, error)
        return False
    return True


async def has_failure(store: ProjectionStore, name: str) -> bool:
    """Whether a failure of projection ``name`` is stored (passed or not);
    True when the store cannot say (the delete that follows fails too, and
    is tried again after the next step)."""
    try:
        return await store.load_document(FAILURE_PREFIX + name, _KEY) is not None
    except ChronicleError:
        return True


async def stored_failure(store: ProjectionStore, name: str, checkpoint: int) -> StoredFailure | None:
    """Projection ``name``'s stored failure while it stands still at it
    (``checkpoint``, the stored one, before the failing event), else None."""
    stored = await store.load_document(FAILURE_PREFIX + name, _KEY)
    if stored is None or stored.type_name != _TYPE:
        return None
    try:
        found = json.loads(stored.data)
        failure = StoredFailure(int(found["failed_at"]), str(found["error"]))
    except (ValueError, KeyError, TypeError):
        return None
    return failure if checkpoint < failure.failed_at else None
