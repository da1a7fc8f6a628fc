"""Read models of boxes, for the clients' projection tests
(clients/node/test/projections.test.js, tests/integration/test_client_projections.py),
served beside the example plugins (``box``):
``labels.boxes`` keeps a ``box:<id>`` document (a ``box.v1.Box``) per box
with its latest name, and parks an event naming a box ``unlabelable…``
(its handler fails on it, once is enough); ``labels.strict`` keeps the same
documents but stops at such an event, so that a read past it is refused
PROJECTION_FAILED; ``labels.late`` keeps them too, but fails the first time
it meets a name starting ``late`` in this server process and tries again a
second later: a read model behind the log for that second, for a client's
read of its own write to wait for."""

from __future__ import annotations

from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.plugins import Documents, Plugin, ProjectedEvent

UNLABELABLE = "unlabelable"
LATE = "late"

plugin = Plugin("labels")
boxes = plugin.projection(
    "labels.boxes", aggregate_types=["Box"], on_failure="park", max_attempts=1, retry_seconds=0.05
)
strict = plugin.projection("labels.strict", aggregate_types=["Box"], retry_seconds=0.05)
# Parks only at a second failure: until then it is only behind (PROJECTION_BEHIND).
late = plugin.projection("labels.late", aggregate_types=["Box"], on_failure="park", max_attempts=2, retry_seconds=1.0)
_late_seen: set[str] = set()  # the late names it failed on so far, in this process


def label(name: str, envelope: ProjectedEvent, documents: Documents) -> None:
    if name.startswith(UNLABELABLE):
        raise ValueError(f"cannot label {name!r} (a test's failure)")
    documents.put(f"box:{envelope.aggregate_id}", box.Box(name=name))


def label_late(name: str, envelope: ProjectedEvent, documents: Documents) -> None:
    if name.startswith(LATE) and name not in _late_seen:
        _late_seen.add(name)
        raise RuntimeError(f"{name!r} fails the first time (a test's delay)")
    documents.put(f"box:{envelope.aggregate_id}", box.Box(name=name))


@late.on(box.BoxCreated)
def _late_created(event: box.BoxCreated, envelope: ProjectedEvent, documents: Documents) -> None:
    label_late(event.name, envelope, documents)


for projection in (boxes, strict):

    @projection.on(box.BoxCreated)
    def _created(event: box.BoxCreated, envelope: ProjectedEvent, documents: Documents) -> None:
        label(event.name, envelope, documents)

    @projection.on(box.BoxRenamed)
    def _renamed(event: box.BoxRenamed, envelope: ProjectedEvent, documents: Documents) -> None:
        label(event.name, envelope, documents)
