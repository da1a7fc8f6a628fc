"""Where a subscriber keeps its place in the log.

A checkpoint is the last position whose events the subscriber all finished
processing (or a server checkpoint's): not simply the last event's, since
an upcaster may split one stored event into several at one position
(``Subscription``). The subscription saves it after each event and, on
start and after a broken stream, resumes right after it: delivery is
at least once across restarts of the subscriber (an event whose processing
was interrupted before its checkpoint was saved comes again), exactly once
within a stream. Keep the checkpoint in the same transaction as what the
event produced (a read model's table, say) and it is exactly once overall.

Beside the position, a checkpoint keeps the id of the event the subscriber
saw there (``ResumePoint``): resuming sends it, and the server refuses
(``LogRewound``) when the log no longer holds that event at that position
(restored from an older copy, failed over to a standby that lost commits),
instead of going on after a position whose events may now be others. A
store that keeps only positions (``CheckpointStore``'s ``load`` and
``save``, every store written before ids were kept) still works: its
resumes are checked only against the log's end (docs/subscriptions.md).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where to resume: after ``position``, where the subscriber saw the
    event ``event_id`` ("" when it does not know it: not checked)."""

    position: int
    event_id: str = ""


class CheckpointStore(Protocol):
    async def load(self) -> int | None:
        """The saved position, or None when the subscriber never saved one."""

    async def save(self, position: int) -> None:
        """Remember ``position``; called with increasing positions."""


@runtime_checkable
class ResumePointStore(Protocol):
    """A ``CheckpointStore`` that keeps the event id too: the subscription
    uses these two in place of ``load`` and ``save`` when a store has them."""

    async def load_point(self) -> ResumePoint | None:
        """The saved resume point, or None when none was saved."""

    async def save_point(self, point: ResumePoint) -> None:
        """Remember ``point``; called with increasing positions."""


class MemoryCheckpoints:
    """Checkpoints that live as long as the object: resume after a broken
    stream, start over after a restart.

    ``load_point`` and ``save_point`` go through ``load`` and ``save`` (the
    id kept beside), so a subclass that overrides those two still sees
    every checkpoint."""

    def __init__(self, position: int | None = None, event_id: str = "") -> None:
        self.position = position
        self.event_id = event_id
        self._next_id = ""  # the id ``save_point`` is saving with its position

    async def load(self) -> int | None:
        return self.position

    async def save(self, position: int) -> None:
        self.position, self.event_id = position, self._next_id

    async def load_point(self) -> ResumePoint | None:
        position = await self.load()
        if position is None:
            return None
        return ResumePoint(position, self.event_id if position == self.position else "")

    async def save_point(self, point: ResumePoint) -> None:
        self._next_id = point.event_id
        try:
            await self.save(point.position)
        finally:
            self._next_id = ""


class FileCheckpoints:
    """Checkpoints in a small text file, replaced atomically (write a
    temporary file, fsync, rename), so a crash leaves the old position or the
    new one, never a torn one. The file work runs in a thread: an fsync must
    not stall the event loop.

    The file holds ``POSITION EVENT_ID`` on one line; a file of an older
    client holds the position alone, and is read as a resume point without
    an id (its first resume is not checked against the event). Older
    clients cannot read a file with an id. As ``MemoryCheckpoints``,
    ``load_point`` and ``save_point`` go through ``load`` and ``save``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._next_id = ""  # the id ``save_point`` is saving with its position
        self._loaded: ResumePoint | None = None  # what ``load`` read last

    async def load(self) -> int | None:
        self._loaded = await asyncio.to_thread(self._read)
        return None if self._loaded is None else self._loaded.position

    async def save(self, position: int) -> None:
        await asyncio.to_thread(self._write, ResumePoint(position, self._next_id))

    async def load_point(self) -> ResumePoint | None:
        position = await self.load()
        if position is None:
            return None
        loaded = self._loaded
        return ResumePoint(position, loaded.event_id if loaded is not None and loaded.position == position else "")

    async def save_point(self, point: ResumePoint) -> None:
        self._next_id = point.event_id
        try:
            await self.save(point.position)
        finally:
            self._next_id = ""

    def _read(self) -> ResumePoint | None:
        try:
            position, _, event_id = self.path.read_text().strip().partition(" ")
        except FileNotFoundError:
            return None
        return ResumePoint(int(position), event_id.strip())

    def _write(self, point: ResumePoint) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        line = f"{point.position} {point.event_id}" if point.event_id else str(point.position)
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(f"{line}\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
