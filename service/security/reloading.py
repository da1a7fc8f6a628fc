"""The API-key file, the JWT key, the policy and the master-key file, read
again when they change: a leaked key revoked, a signing key rotated or a
grant taken away takes effect on every replica within seconds, without a
restart.

Each file is looked at every ``interval`` seconds (its modification time,
size, inode and mode: a Kubernetes secret or config map swaps a symbolic link,
an editor writes a new file). A changed file is loaded and checked exactly
as at start-up; a good one is used from the next call on, a broken one is
logged and the one before is kept (a typo must not lock every caller out),
until the file changes again. A file's ``use`` may check what was read
against more than the file (master keys against the store's data keys),
asynchronously: its ConfigurationError is a broken file too. After a file was read again, the
``on_change`` callbacks run: the gate ends the streams whose credentials or
grants no longer hold (``service.api.live_streams``)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.errors import ConfigurationError
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Signature = tuple[int, int, int, int]


def signature(path: str) -> Signature | None:
    """What tells a changed file apart (None: it cannot be looked at). The
    mode too: a key file refused because others may read it is fixed by
    ``chmod 600``, which changes nothing else."""
    try:
        seen = os.stat(path)
    except OSError:
        return None
    return (seen.st_mtime_ns, seen.st_size, seen.st_ino, seen.st_mode)


@dataclass(slots=True)
class WatchedFile:
    """One file: ``load`` reads and checks it (raising ConfigurationError
    for a broken one), ``use`` puts what it read to work (or, a coroutine
    function, checks it further and raises ConfigurationError to refuse it,
    leaving what was in use)."""

    path: str
    what: str
    load: Callable[[], Any]
    use: Callable[[Any], Awaitable[None] | None]
    seen: Signature | None = field(default=None)

    def __post_init__(self) -> None:
        self.seen = signature(self.path)  # as loaded at start-up

    async def check(self) -> bool:
        """Whether the file changed and what it holds now is in use."""
        now = signature(self.path)
        if now == self.seen:
            return False
        self.seen = now  # a broken file is reported once, not every interval
        try:
            used = self.use(self.load())
            if inspect.isawaitable(used):
                await used
        except ConfigurationError as error:
            log.error(
                "%s %s changed but cannot be used (%s: %s); the previous one stays in use",
                self.what,
                self.path,
                error.reason,
                error.message,
            )
            return False
        log.info("%s %s read again; new calls use it", self.what, self.path)
        return True


class SecurityReloader:
    """Looks at ``files`` every ``interval`` seconds."""

    def __init__(self, files: Sequence[WatchedFile], *, interval: float) -> None:
        self.files = list(files)
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        # Called after one or more files were read again and put in use.
        self.on_change: list[Callable[[], object]] = []

    async def check(self) -> None:
        changed = False
        for watched in self.files:
            try:
                changed = await watched.check() or changed
            except Exception:
                # A bug here must not end the watch (or the other files'):
                # revoking a key would silently stop working.
                log.exception("reading %s %s again failed", watched.what, watched.path)
        if not changed:
            return
        for callback in self.on_change:
            try:
                callback()
            except Exception:
                log.exception("acting on the security files read again failed")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="security-reloader")

    async def stop(self) -> None:
        await cancel_and_wait(self._task, "the security files' reloader", log)
