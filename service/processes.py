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

The parent only supervises. Settings every process would refuse are
refused once, by it, before any starts. It forwards SIGTERM and SIGINT, and
exits when they have, with the worst exit status. A process that ends on
its own is replaced, as a replica that dies would be by its orchestrator
(its partitions are taken over meanwhile, docs/scaling.md); one that ends
within ``START_SECONDS`` of its start failed to start, and the parent stops
the others and exits with its status rather than start it again and again.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from service.security.exposure import check_exposure
from service.settings import Settings, bad_setting
from service.store.factory import check_shared_by_processes, open_store

log = logging.getLogger("chronicle.processes")

# A process that ends sooner than this after its start failed to start.
START_SECONDS = 10.0
# How often the parent looks at its processes.
WATCH_SECONDS = 0.2


def serve_processes(settings: Settings, argv: Sequence[str]) -> int:
    if settings.listen.rpartition(":")[2] == "0":
        raise bad_setting("listen", "port 0 cannot be shared", "a fixed port, which --processes share")
    # Said once here, rather than by every process as it starts.
    check_shared_by_processes(open_store(settings.database_url), settings.database_url)
    check_exposure(
        listen=settings.listen,
        auth=settings.auth,
        tls=bool(settings.tls_cert_file),
        insecure=settings.insecure,
        anonymous_admin=settings.anonymous_admin,
    )
    host = settings.listen.rpartition(":")[0]
    command = [
        sys.executable, "-m", "service", *argv,
        "--processes", "1", "--reuse-port", "--process-listen", f"{host}:0",
    ]  # fmt: skip
    return _Supervisor(command, settings.processes).run()


class _Supervisor:
    def __init__(self, command: list[str], count: int) -> None:
        self._command = command
        self._children = [subprocess.Popen(command) for _ in range(count)]
        self._started = [time.monotonic()] * count
        self._stopping = False
        self._failed = 0  # the status of a process that failed to start

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        while any(child.poll() is None for child in self._children):
            if not self._stopping:
                self._replace_ended()
            time.sleep(WATCH_SECONDS)
        if not self._stopping:
            self._replace_ended()  # every process ended at once: the first one decides
        codes = [child.returncode for child in self._children]
        return self._failed or max(codes, default=0)

    def _forward(self, signum: int, _frame: object) -> None:
        self._stopping = True
        self._signal_all(signum)

    def _signal_all(self, signum: int) -> None:
        for child in self._children:
            if child.poll() is None:
                child.send_signal(signum)

    def _replace_ended(self) -> None:
        for index, child in enumerate(self._children):
            code = child.poll()
            if code is None:
                continue
            lived = time.monotonic() - self._started[index]
            if lived < START_SECONDS:
                log.error(
                    "server process %d ended with status %d %.1f s after its start: stopping the others",
                    child.pid,
                    code,
                    lived,
                )
                self._stopping = True
                self._failed = code if code > 0 else 1  # killed by a signal: 1
                self._signal_all(signal.SIGTERM)
                return
            log.error("server process %d ended with status %d; starting another in its place", child.pid, code)
            self._children[index] = subprocess.Popen(self._command)
            self._started[index] = time.monotonic()
