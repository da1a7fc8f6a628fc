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
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Protocol


class CheckpointStore(Protocol):
    async def load(self) -> int | None:
        """The saved position, or None when the subscriber never saved one."""

    async def save(self, position: int) -> None:
        """Remember ``position``; called with increasing positions."""


class MemoryCheckpoints:
    """Checkpoints that live as long as the object: resume after a broken
    stream, start over after a restart."""

    def __init__(self, position: int | None = None) -> None:
        self.position = position

    async def load(self) -> int | None:
        return self.position

    async def save(self, position: int) -> None:
        self.position = position


class FileCheckpoints:
    """Checkpoints in a small text file, replaced atomically (write a
    temporary file, fsync, rename), so a crash leaves the old position or the
    new one, never a torn one. The file work runs in a thread: an fsync must
    not stall the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def load(self) -> int | None:
        return await asyncio.to_thread(self._read)

    async def save(self, position: int) -> None:
        await asyncio.to_thread(self._write, position)

    def _read(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except FileNotFoundError:
            return None

    def _write(self, position: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(f"{position}\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
