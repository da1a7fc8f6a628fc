"""Where each projection and reaction stands, for the metrics.

One replica runs each projection and each reaction (it holds its lease);
that replica reports it, every few seconds, in the gauges of
``metrics.RunnerGauges``: its checkpoint (``position``), how far it is
behind the log's head (``lag``: the head the subscription groups' sampler
reads in the same round, not a read of its own), whether its last attempt
failed and it is retrying (``failing``), and what it parked (read from the
store). A replica that does not run it, or no longer does, reports nothing
of it: the series is removed, so that summing over replicas counts each
once, and ``absent()`` finds one that nobody runs.

The runners' status objects are only read here, on the event loop, between
their steps.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from service.observability.metrics import RunnerGauges


class _Status(Protocol):
    @property
    def position(self) -> int: ...

    @property
    def error(self) -> str: ...


class Watched(Protocol):
    """What is read of a projection or reaction runner."""

    @property
    def status(self) -> _Status: ...

    @property
    def holds_lease(self) -> bool: ...


# How many events (commands) a runner of that name has parked, from the store.
ParkedCount = Callable[[str], Awaitable[int]]


def failing(status: _Status) -> bool:
    """Whether a failure holds the runner now: its status keeps the error
    until a step goes through, the lease goes elsewhere or the runner stops
    (``CheckpointedRunner``); a projection retrying an event it will park
    counts as failing until it parks it."""
    return bool(status.error)


class RunnerWatch:
    """Sets ``gauges`` for the runners (of one kind) this replica runs, at
    the log head it is given (``GroupSampler``'s ``also``)."""

    def __init__(self, runners: Mapping[str, Watched], gauges: RunnerGauges, parked: ParkedCount) -> None:
        self._runners = runners
        self._gauges = gauges
        self._parked = parked
        self._shown: set[str] = set()  # the names whose series are set

    async def sample(self, head: int) -> None:
        gauges = self._gauges
        here = [name for name, runner in self._runners.items() if runner.holds_lease]
        # What the runners know first, all at once (no await between them);
        # then what the store knows.
        for name in here:
            status = self._runners[name].status
            position = status.position
            gauges.position.labels(name).set(position)
            gauges.lag.labels(name).set(max(0, head - position))
            gauges.failing.labels(name).set(1 if failing(status) else 0)
        for gone in self._shown.difference(here):
            gauges.remove(gone)
        self._shown = set(here)
        for name in here:
            count = await self._parked(name)
            if name in self._shown:  # still ours (another sample may have run meanwhile)
                gauges.parked.labels(name).set(count)
