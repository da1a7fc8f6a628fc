"""Health as the standard gRPC health service reports it: Check, Watch and
List (grpc.health.v1).

``Health`` is the one switch for every service name, NOT_SERVING from the
start until the first store check passes. ``StoreMonitor`` keeps it true to
the store: it pings the store every ``interval`` seconds and
reports NOT_SERVING while the store cannot serve (a database that is gone or
not yet there), SERVING again as soon as it can, with no restart. Load
balancers and orchestrators act on that; clients see UNAVAILABLE meanwhile.
Why it cannot serve shows apart (observability.md): ``store_up`` is whether
the store answered (``chronicle_store_up``), ``schema_compatible`` whether
its schema's compatibility floor is within this replica's code
(``chronicle_schema_compatible``): a replica that ``migrate --force`` left
below the floor reaches its store, and its alert must say so, not that the
database is gone.

``LIVENESS`` is a name apart, for an orchestrator's liveness probe: SERVING
whatever the store, from the start to the stop. Its answer comes from the
event loop that serves every call, so a process that cannot answer it (its
loop blocked, the process stopped) is one to restart, while a database
outage (readiness NOT_SERVING) is not: a restart would not bring the
database back. A TCP probe would pass a hung process (the kernel accepts
its connections).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from grpc_health.v1 import health, health_pb2

from chronicle.v1 import (
    admin_service_pb2,
    cluster_service_pb2,
    command_service_pb2,
    event_service_pb2,
    projection_service_pb2,
    reaction_service_pb2,
    subscription_group_service_pb2,
)
from service.api.status import rich_status
from service.errors import MAX_QUOTED, Overloaded, ResourceNotFound, StoreUnavailable, quoted
from service.store.base import Lifecycle
from service.store.probing import probe, why
from service.store.schema_use import SCHEMA_TOO_NEW
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    command_service_pb2.DESCRIPTOR.services_by_name["CommandService"].full_name,
    event_service_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    projection_service_pb2.DESCRIPTOR.services_by_name["ProjectionService"].full_name,
    reaction_service_pb2.DESCRIPTOR.services_by_name["ReactionService"].full_name,
    cluster_service_pb2.DESCRIPTOR.services_by_name["ClusterService"].full_name,
    subscription_group_service_pb2.DESCRIPTOR.services_by_name["SubscriptionGroupService"].full_name,
)

# The liveness probe's service name: SERVING while the process answers.
LIVENESS = "liveness"


class LimitedWatches(health.aio.HealthServicer):  # type: ignore[misc]
    """The standard health servicer with at most ``max_watches`` Watch
    streams open at once: they need no credentials and live as long as the
    caller wants, so unbounded they let anyone hold the server's memory (a
    stream costs about as much as a subscription). One more is
    RESOURCE_EXHAUSTED, TOO_MANY_HEALTH_WATCHES; Check stays unlimited.

    ``close`` ends every Watch stream (UNAVAILABLE, SHUTTING_DOWN) and
    refuses new ones: an open Watch is an RPC that gRPC's ``stop`` waits for,
    so a load balancer that holds one would hold a stopping server for its
    whole grace period."""

    def __init__(self, *, max_watches: int) -> None:
        super().__init__()
        # Not serving until the first store check has passed (``Health.set``):
        # the library starts with "" SERVING and every other name unknown
        # (NOT_FOUND), so between binding the port and reaching the store a
        # load balancer would send calls to a server that cannot serve them.
        # Set before any Watch can wait on these names: no watcher to tell.
        self._server_status = dict.fromkeys(("", *SERVICE_NAMES), health_pb2.HealthCheckResponse.NOT_SERVING)
        self._server_status[LIVENESS] = health_pb2.HealthCheckResponse.SERVING  # never set again: see LIVENESS
        self.max_watches = max_watches
        self.watches = 0
        self._watching: set[asyncio.Task[Any]] = set()
        self._closed = False

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        if self._closed:
            await context.abort_with_status(rich_status(_shutting_down()))
        if self.watches >= self.max_watches:
            refusal = Overloaded(
                f"the server has {self.max_watches} health Watch streams open; use Check, or retry later",
                reason="TOO_MANY_HEALTH_WATCHES",
                metadata={"max_health_watches": str(self.max_watches)},
            )
            await context.abort_with_status(rich_status(refusal))
        # Each RPC runs in a task of its own: ``close`` ends the stream by
        # cancelling it, and the cancellation becomes the status here.
        task = asyncio.current_task()
        assert task is not None
        self.watches += 1
        self._watching.add(task)
        try:
            await super().Watch(request, context)
        except asyncio.CancelledError:
            if not self._closed:
                raise  # the caller went away, or gRPC is cancelling its calls
            task.uncancel()
            await context.abort_with_status(rich_status(_shutting_down()))
        finally:
            self.watches -= 1
            self._watching.discard(task)

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        """The library's Check, its NOT_FOUND for a name it has no status
        for (the health protocol's answer, which load balancers expect)
        with an ErrorInfo as every other refusal of the server's: grpcio's
        servicer aborts with the bare code."""
        status = self._server_status.get(request.service)  # the library's own map, as List reads it
        if status is None:
            unknown = ResourceNotFound(
                f'no health status for service {quoted(request.service)}: ask for "" (the server),'
                f" {LIVENESS!r} (the process answers) or one of {', '.join(SERVICE_NAMES)}",
                reason="SERVICE_NOT_FOUND",
                metadata={"service": request.service[:MAX_QUOTED]},
            )
            await context.abort_with_status(rich_status(unknown))
        return health_pb2.HealthCheckResponse(status=status)

    async def List(self, request: health_pb2.HealthListRequest, context: Any) -> health_pb2.HealthListResponse:
        """The status of every service name Check answers for ("" the
        server's as a whole), as Check would answer each now. grpcio's
        servicer (1.85) leaves List unimplemented; its statuses are the
        ones its Check reads. Never RESOURCE_EXHAUSTED: the names are the
        server's few services, not open-ended."""
        statuses = self._server_status  # the library's own map, set through ``set``
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=status) for name, status in list(statuses.items())}
        )

    def close(self) -> None:
        self._closed = True
        for task in self._watching:
            task.cancel()

    async def ended(self, *, within: float = 5.0) -> None:
        """Until the Watch streams ``close`` ended have finished (at most
        ``within`` seconds): gRPC counts a call done once its status is sent,
        which can be before its task has run the rest of its handler."""
        running = set(self._watching)
        if running:
            await asyncio.wait(running, timeout=within)


def _shutting_down() -> StoreUnavailable:
    return StoreUnavailable("the server is shutting down; watch another member", reason="SHUTTING_DOWN")


class Health:
    """The health service and the one switch for every name it reports."""

    def __init__(self, *, max_watches: int = 1000) -> None:
        self.servicer = LimitedWatches(max_watches=max_watches)
        self.serving = False

    def close(self) -> None:
        """End every health Watch stream (after they heard NOT_SERVING)."""
        self.servicer.close()

    async def ended(self) -> None:
        """Until the Watch streams ``close`` ended are over."""
        await self.servicer.ended()

    async def set(self, serving: bool) -> None:
        self.serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await self.servicer.set(name, status)


class StoreMonitor:
    def __init__(self, store: Lifecycle, health: Health, *, interval: float) -> None:
        self._store = store
        self._health = health
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._last: bool | None = None
        self._reached = False
        self._schema_compatible = True

    @property
    def store_up(self) -> bool:
        """Whether the store answered the last ping (False before the
        first), healthy or not: it is reachable."""
        return self._reached

    @property
    def schema_compatible(self) -> bool:
        """False while the last ping that reached the store found its
        schema's compatibility floor above this replica's code (SCHEMA_TOO_NEW);
        a store out of reach leaves it as it was (its schema is unknown, not
        changed)."""
        return self._schema_compatible

    async def check(self) -> bool:
        """Ping the store once and report the result; return it."""
        failure = await probe(self._store.ping, within=max(self._interval, 1.0) * 2)
        healthy, reason = failure is None, "" if failure is None else why(failure)
        too_new = isinstance(failure, StoreUnavailable) and failure.reason == SCHEMA_TOO_NEW
        self._reached = healthy or too_new
        if self._reached:
            self._schema_compatible = not too_new
        if healthy != self._last:
            if not healthy:
                log.warning("store unavailable, reporting NOT_SERVING: %s", reason)
            elif self._last is not None:
                log.info("store available again, reporting SERVING")
            self._last = healthy
            await self._health.set(healthy)
        return healthy

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="store-monitor")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check()

    async def stop(self) -> None:
        await cancel_and_wait(self._task, "the store monitor", log)
