"""Names under which the server keeps rows of its own beside the plugins'
projections: reactions' starts (``#reaction-starts``, ``#start/NAME``) and
projections' stops at an event (``#failure/NAME``,
``processing/projection_failures.py``). No
projection or reaction can be named so (a plugin's names are letters,
digits, '_' and '.': plugins/projections.py), so these
rows are never a read model: never listed, reported or deleted as one, by
ListProjections, DeleteProjection or ``chronicle plugins --check`` alike."""

from __future__ import annotations

SERVER_OWN_PREFIX = "#"
# Where each reaction started, a row beside its checkpoint
# (service/processing/reaction_starts.py): it also tells a stored checkpoint
# of a reaction from a projection's when no loaded plugin declares the name.
REACTION_START_PREFIX = SERVER_OWN_PREFIX + "start/"
# Where a projection stands still at an event its handler failed on (the
# row's position: processing/projection_failures.py); here so that a restore
# (transfer/read_models.py) can tell a projection that will not move on.
FAILURE_PREFIX = SERVER_OWN_PREFIX + "failure/"


def is_server_own(name: str) -> bool:
    """Whether ``name`` is one of the server's own rows, not a plugin's."""
    return name.startswith(SERVER_OWN_PREFIX)
