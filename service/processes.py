"""Several server processes on one port, for more cores than one event loop.

``chronicle serve --processes N`` starts N server processes that all bind
the same address with SO_REUSEPORT; the kernel spreads new connections over
them. Each is a full server (its own workers, caches, store connections):
they coordinate only through the database, exactly like replicas on
different machines, so every guarantee between replicas holds between them.

Affinity: the kernel spreads connections, not aggregates, so a plain client
on the shared port reaches any process. Each process therefore also listens
on a port of its own (``--process-listen HOST:0``: any free port) and
advertises that one as a member of the cluster: it holds its share of the
partitions like any replica, and a routing client sends each command
straight to the process that owns its aggregate (docs/scaling.md).

The parent only supervises: it forwards SIGTERM and SIGINT, and exits when
they have, with the worst exit status.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence

from service.errors import ConfigurationError
from service.settings import Settings
from service.store.factory import check_shared_by_processes, open_store


def serve_processes(settings: Settings, argv: Sequence[str]) -> int:
    if settings.listen.rpartition(":")[2] == "0":
        raise ConfigurationError(
            "several processes need a fixed port to share (--listen host:port, not port 0)", reason="BAD_SETTING"
        )
    # Said once here, rather than by every process as it starts.
    check_shared_by_processes(open_store(settings.database_url), settings.database_url)
    host = settings.listen.rpartition(":")[0]
    command = [
        sys.executable, "-m", "service", *argv,
        "--processes", "1", "--reuse-port", "--process-listen", f"{host}:0",
    ]  # fmt: skip
    children = [subprocess.Popen(command) for _ in range(settings.processes)]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)
