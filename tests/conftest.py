"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.store.base import EventStore
from tests.support.stores import STORES


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    """Each store adapter in turn: the contract suite runs once per store."""
    async with STORES[request.param](tmp_path) as opened:
        yield opened
