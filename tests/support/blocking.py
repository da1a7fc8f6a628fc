"""Stores that hold or disturb appends, so that tests can fill queues and
RPC slots deterministically, without timing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from service.errors import ConcurrencyConflict
from service.store.base import StoreAdapter
from service.store.records import NewEvent, RecordedEvent


class GatedStore:
    """Delegates to ``inner``; every append waits until ``gate`` is set, and
    ``entered`` is set once an append is waiting."""

    def __init__(self, inner: StoreAdapter) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append(self, aggregate_id: str, events: Sequence[NewEvent], expected_version: int, **kw: Any) -> Any:
        self.entered.set()
        await self.gate.wait()
        return await self.inner.append(aggregate_id, events, expected_version, **kw)


class ConflictOnce:
    """Delegates to ``inner``; the first append that writes events loses a
    version race (as if another replica had written first)."""

    def __init__(self, inner: StoreAdapter) -> None:
        self.inner = inner
        self.conflicted = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append(
        self, aggregate_id: str, events: Sequence[NewEvent], expected_version: int, **kw: Any
    ) -> list[RecordedEvent]:
        if events and not self.conflicted:
            self.conflicted = True
            raise ConcurrencyConflict(aggregate_id, expected_version)
        return await self.inner.append(aggregate_id, events, expected_version, **kw)
