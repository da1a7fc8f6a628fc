"""A projection that writes down every call of its handler, for ``make
scale``: it counts how many times, in the whole cluster, each event was
applied (work done once, or repeated).

Each server process appends the event id of every handler call to a file of
its own in ``CHRONICLE_BENCH_COUNT_DIR`` (one write per call, unbuffered, so
a process killed with SIGKILL leaves every call it made on disk). The
handler reads no document, so the runner never calls it twice for one event
of one batch (it calls a handler again only after loading a document it
asked for).

    chronicle serve --plugin bench.plugin --plugin bench.counted
"""

from __future__ import annotations

import os

from google.protobuf import wrappers_pb2 as wrappers

from service.plugins import Plugin
from service.plugins.projections import Documents, ProjectedEvent

plugin = Plugin("counted", description="Counts each call of its projection's handler, per process.")
applied = plugin.projection("counted.applied", aggregate_types=["Tally"])
_calls: int | None = None  # the file descriptor, opened on first use


def _calls_file() -> int:
    global _calls
    if _calls is None:
        folder = os.environ.get("CHRONICLE_BENCH_COUNT_DIR", ".")
        _calls = os.open(os.path.join(folder, f"calls-{os.getpid()}.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    return _calls


@applied.on(wrappers.Int64Value)
def _applied(event: wrappers.Int64Value, envelope: ProjectedEvent, documents: Documents) -> None:
    os.write(_calls_file(), f"{envelope.event_id}\n".encode())
    documents.put("last", wrappers.StringValue(value=envelope.event_id))
