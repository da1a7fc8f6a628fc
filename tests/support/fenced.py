"""A lease the test hands out and takes back, and a memory store that
records the fencing token of every projection commit: for the runners'
lease tests (projections and reactions alike)."""

from __future__ import annotations

from collections.abc import Sequence

from service.store.leasing import Fencing
from service.store.memory import MemoryStore
from service.store.records import DocumentWrite, ParkedEvent


class HandLease:
    """A projection's or reaction's lease, held while ``token`` is set."""

    def __init__(self) -> None:
        self.token: Fencing | None = None

    def fencing(self) -> Fencing | None:
        return self.token

    def holder(self) -> str:
        return "" if self.token is None else "here"

    def step_aside(self) -> None:
        self.token = None


class FencedCommits(MemoryStore):
    """Records the fencing token of every commit."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[Fencing | None] = []

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
        self.tokens.append(fencing)
        await super().commit_projection(
            name,
            expected_position=expected_position,
            new_position=new_position,
            writes=writes,
            fencing=fencing,
            parked=parked,
        )
