"""The process's limit on open files (``RLIMIT_NOFILE``), raised at start to
the most the system allows it.

Every client connection (gRPC or console), every database connection and
every file takes a descriptor. The soft limit many systems start a process
with is 1024 (systemd's default, a login shell's): a server reachable by
many clients, or by someone opening sockets on purpose, ran out of them
(``EMFILE``) and then accepted nothing, not even health checks. The hard
limit is what an unprivileged process may raise its own soft limit to, so
the server does, as most servers do; the connection caps
(``--max-connections``, the console's) keep what clients take below it.
"""

from __future__ import annotations

import resource

# Descriptors the server needs besides the gRPC server's client
# connections: the console's connections (at most twice its cap of 100),
# the database pool, the store's files, logs, the metrics port, gRPC's own.
RESERVED_DESCRIPTORS = 1024


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard one; returns the soft
    limit before and after. A hard limit of "unlimited" is left alone (no
    system lets a soft limit be unlimited), as is a raise the system refuses."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, hard


def open_files_warnings(limit: int, max_connections: int) -> list[str]:
    """A warning when ``limit`` open files leave no room for
    ``max_connections`` client connections and what the server needs besides."""
    if limit == resource.RLIM_INFINITY or limit >= max_connections + RESERVED_DESCRIPTORS:
        return []
    return [
        f"the process may open {limit} files, fewer than --max-connections ({max_connections}) plus"
        f" {RESERVED_DESCRIPTORS} for the console, the database and its files: clients could take every"
        " descriptor and the server would then accept nothing, health checks included. Raise the hard limit"
        " (ulimit -Hn, systemd's LimitNOFILE, the container runtime's nofile) or lower --max-connections"
    ]
