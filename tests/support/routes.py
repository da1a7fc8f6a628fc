"""Watching what a routing client (``service.client.routing.Routes``) decides."""

from __future__ import annotations

import pytest

from service.client.routing import Routes


def record_marks(routes: Routes | None, monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The members ``routes`` is told are unreachable, in order, from now on."""
    assert routes is not None
    marked: list[str | None] = []
    unreachable = routes.unreachable

    def recorded(address: str | None, sent: float | None = None) -> None:
        marked.append(address)
        unreachable(address, sent)

    monkeypatch.setattr(routes, "unreachable", recorded)
    return marked
