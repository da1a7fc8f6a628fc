"""The database file is the owner's alone, as key files are.

It holds every event's envelope in the clear (ids, types, principals, user
ids, times) and, without a master key, every payload; the write-ahead log
(``-wal``) and its index (``-shm``) hold the same. SQLite creates a new
file with the process's umask (commonly 0644: readable by every account on
the machine) and its ``-wal`` and ``-shm`` with the main file's mode, so the
main file is made here first, mode 0600, and the two follow it. A file that
is there already is left as it is (its owner may have chosen its mode: a
group that backs it up), with a WARNING when its group or others may
access it, as ``service.security.key_files`` does for key files (which it
refuses: a database is no key, and a server refusing to start over its own
data after an upgrade would be worse than the warning). POSIX only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat

log = logging.getLogger("chronicle")

OWNER_ONLY = 0o600
GROUP_OR_OTHERS = 0o077
COMPANIONS = ("", "-wal", "-shm")


def create_private(path: str) -> None:
    """Make ``path`` (a SQLite database about to be opened) empty and
    0600 if it does not exist; warn about it, and its ``-wal`` and
    ``-shm``, if they exist and their group or others may access them."""
    if os.name != "posix":
        return
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, OWNER_ONLY))
        return
    for suffix in COMPANIONS:
        try:
            mode = stat.S_IMODE(os.stat(path + suffix).st_mode)
        except OSError:
            continue
        if mode & GROUP_OR_OTHERS:
            log.warning(
                "the SQLite database file %s is open to its group or to others (mode %04o): another account on"
                " this machine could read its events (payloads too, without --master-key-file); run chmod 600 %s",
                path + suffix,
                mode,
                path + suffix,
            )
