"""The console with an upcaster's split events, whose pieces share the
stored event's position and version.

An aggregate's page of events ends after a whole version: cut inside one,
the next page (from the version after) never showed the rest of its pieces.
The servicer is scripted here (pages ending inside split events, as the RPC
sends them): what matters is what the console makes of them. (The live
tail's resume points: tests/integration/test_console_tail_split_events.py.)"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from chronicle.v1 import event_pb2
from chronicle.v1 import event_service_pb2 as ev
from service.console import views
from service.console.html import Html


class _ScriptedAggregate:
    """ReadAggregate of versions 1, 2, 2, 3, 4 (version 2 split in two) as
    the server pages it: at least ``limit`` events, and never a page ending
    between two of one version."""

    VERSIONS = (1, 2, 2, 3, 4)

    async def ReadAggregate(self, request: ev.ReadAggregateRequest, context: Any) -> AsyncIterator[event_pb2.Event]:
        wanted = [v for v in self.VERSIONS if v >= max(request.from_version, 1)]
        if request.limit and len(wanted) > request.limit:
            wanted = [v for v in wanted if v <= wanted[request.limit - 1]]
        for number, version in enumerate(wanted):
            yield event_pb2.Event(version=version, position=version, aggregate_id="book-1", event_type=f"e{number}")

    async def GetAggregate(self, request: ev.GetAggregateRequest, context: Any) -> ev.GetAggregateResponse:
        return ev.GetAggregateResponse(aggregate_type="Book", version=4)


async def test_an_aggregates_page_of_events_ends_after_a_whole_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(views, "EVENTS_PER_PAGE", 2)
    parts = cast(views.Parts, SimpleNamespace(events=_ScriptedAggregate()))
    shown: list[int] = []
    query: dict[str, str] = {}
    for _ in range(4):
        _, content = await views.aggregate_page(parts, "book-1", query)
        page = "".join(str(part) for part in content if isinstance(part, Html))
        shown += [int(v) for v in re.findall(r"<tr><td>(\d+)</td>", page)]
        following = re.search(r'href="/aggregates/book-1\?from=(\d+)" class="next"', page)
        if following is None:
            break
        query = {"from": following.group(1)}
    assert shown == [1, 2, 2, 3, 4]  # the second piece of version 2 too, each once
