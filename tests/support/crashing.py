"""A memory store whose process dies before a runner's commit: for the
projection and reaction runners' crash tests."""

from __future__ import annotations

from collections.abc import Sequence

from service.store.leasing import Fencing
from service.store.memory import MemoryStore
from service.store.records import DocumentWrite, ParkedEvent


class CrashingStore(MemoryStore):
    """The process dies between a batch's work (a projection's documents
    applied, a reaction's commands sent) and its commit: the commit never
    happens (the first ``crashes`` times)."""

    def __init__(self, crashes: int) -> None:
        super().__init__()
        self.crashes = crashes

    async def commit_projection(
        self,
        name: str,
        *,
        expected_position: int,
        new_position: int,
        writes: Sequence[DocumentWrite],
        fencing: Fencing | None = None,
        parked: Sequence[ParkedEvent] = (),
    ) -> None:
        if self.crashes:
            self.crashes -= 1
            raise RuntimeError("killed before commit")
        await super().commit_projection(
            name,
            expected_position=expected_position,
            new_position=new_position,
            writes=writes,
            fencing=fencing,
            parked=parked,
        )
