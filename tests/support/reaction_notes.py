"""A reaction with a state, for the clients' reaction tests
(clients/node/test/reactions.test.js, tests/integration/test_client_reactions.py),
served beside ``plugins.gates``:
``notes.names`` keeps, per gate, the last name it let through, and fails
once, the first time a gate lets "fail-once" through in this server process,
so that GetReaction has a last error (and its time) to show. It declares
every ReactionStatus setting away from its default, so a client that reads
them is seen to read them."""

from __future__ import annotations

from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.plugins import Plugin, ProjectedEvent

FAILS_ONCE = "fail-once"

plugin = Plugin("notes")


def by_gate(envelope: ProjectedEvent) -> str:
    return envelope.aggregate_id


names = plugin.reaction(
    "notes.names",
    aggregate_types=["Gate"],
    state=box.Box,
    state_key=by_gate,
    retry_seconds=0.25,
    on_failure="park",
    max_attempts=2,
    start_from="beginning",
)
_failed: list[str] = []  # the names it failed on so far, in this process


@names.on(box.BoxRenamed)
def note(event: box.BoxRenamed, envelope: ProjectedEvent, state: box.Box) -> None:
    if event.name == FAILS_ONCE and not _failed:
        _failed.append(event.name)
        raise RuntimeError(f"{FAILS_ONCE} fails the first time (a test's failure)")
    state.name = event.name
