"""Read models of boxes, for the clients' projection tests
(clients/node/test/projections.test.js, tests/integration/test_client_projections.py),
served beside the example plugins (``box``):
``labels.boxes`` keeps a ``box:<id>`` document (a ``box.v1.Box``) per box
with its latest name, and parks an event naming a box ``unlabelable…``
(its handler fails on it, once is enough); ``labels.strict`` keeps the same
documents but stops at such an event, so that a read past it is refused
PROJECTION_FAILED."""

from __future__ import annotations

from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.plugins import Documents, Plugin, ProjectedEvent

UNLABELABLE = "unlabelable"

plugin = Plugin("labels")
boxes = plugin.projection(
    "labels.boxes", aggregate_types=["Box"], on_failure="park", max_attempts=1, retry_seconds=0.05
)
strict = plugin.projection("labels.strict", aggregate_types=["Box"], retry_seconds=0.05)


def label(name: str, envelope: ProjectedEvent, documents: Documents) -> None:
    if name.startswith(UNLABELABLE):
        raise ValueError(f"cannot label {name!r} (a test's failure)")
    documents.put(f"box:{envelope.aggregate_id}", box.Box(name=name))


for projection in (boxes, strict):

    @projection.on(box.BoxCreated)
    def _created(event: box.BoxCreated, envelope: ProjectedEvent, documents: Documents) -> None:
        label(event.name, envelope, documents)

    @projection.on(box.BoxRenamed)
    def _renamed(event: box.BoxRenamed, envelope: ProjectedEvent, documents: Documents) -> None:
        label(event.name, envelope, documents)
