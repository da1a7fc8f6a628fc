"""Where each open subscription stands, for the lag metric.

``SubscriptionTracker`` holds the last position each open subscription sent
(an event's, a checkpoint's or caught-up's); ``LagSampler`` compares them with
the log's head every ``interval`` seconds, on the event loop (the store is
async; the metrics endpoint runs on a thread of its own and only reads the
gauges).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence

from prometheus_client import Gauge

from service.errors import ChronicleError
from service.store.base import GroupStore, LogReader
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class SubscriptionTracker:
    def __init__(self) -> None:
        self._positions: dict[int, int] = {}
        self._ids = itertools.count()

    @contextlib.contextmanager
    def tracking(self, start: int) -> Iterator[int]:
        """Track one subscription for as long as the ``with`` lasts."""
        handle = next(self._ids)
        self._positions[handle] = start
        try:
            yield handle
        finally:
            del self._positions[handle]

    def moved(self, handle: int, position: int) -> None:
        self._positions[handle] = position

    @property
    def count(self) -> int:
        return len(self._positions)

    def positions(self) -> list[int]:
        return list(self._positions.values())


class _Sampler:
    """Calls ``sample`` every ``interval`` seconds on the event loop until
    stopped; a sample the store's absence failed is logged at debug level
    (the health monitor reports that), any other failure with its traceback
    once until a sample succeeds, and the next one is tried."""

    _interval: float
    _task: asyncio.Task[None] | None = None
    _what = "sample"

    async def sample(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._what)

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await self.sample()
            except ChronicleError:
                log.debug("could not %s", self._what, exc_info=True)
            except Exception:
                # Not the store being away but a bug: the gauge would stay
                # stale with nothing said, so say it, once per spell.
                if not failing:
                    log.exception("could not %s", self._what)
                failing = True
            else:
                failing = False
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        await cancel_and_wait(self._task, self._what, log)


class LagSampler(_Sampler):
    """Sets ``lag`` to how far the slowest open subscription is behind the
    log's head, in positions (positions are increasing but may have gaps,
    so this bounds the number of events from above)."""

    _what = "sample subscription lag"

    def __init__(self, store: LogReader, tracker: SubscriptionTracker, lag: Gauge, *, interval: float = 5.0) -> None:
        self._store = store
        self._tracker = tracker
        self._lag = lag
        self._interval = interval

    async def sample(self) -> None:
        positions = self._tracker.positions()
        if not positions:
            self._lag.set(0)
            return
        head = await self._store.log_head()
        self._lag.set(max(0, head - min(positions)))


class GroupSampler(_Sampler):
    """Sets each subscription group's lag (its lowest checkpoint's distance
    from the log's head, in positions), parked count and, when given, its
    skipped and dismissed totals, every
    ``interval`` seconds; a deleted group's gauges go with it. Then hands
    the log head it read to each of ``also`` (the projections' and
    reactions' gauges, ``service.observability.runners``): one read of the
    head a round, for all of them."""

    _what = "sample subscription groups"

    def __init__(
        self,
        groups: GroupStore,
        store: LogReader,
        *,
        lag: Gauge,
        parked: Gauge,
        skipped: Gauge | None = None,
        dismissed: Gauge | None = None,
        interval: float = 5.0,
        also: Sequence[Callable[[int], Awaitable[None]]] = (),
    ) -> None:
        self._groups = groups
        self._store = store
        self._lag = lag
        self._parked = parked
        self._totals = [(gauge, how) for gauge, how in ((skipped, "skipped"), (dismissed, "dismissed")) if gauge]
        self._interval = interval
        self._also = tuple(also)
        self._sampled: set[str] = set()  # the groups whose series are set

    async def sample(self) -> None:
        states = await self._groups.list_groups()
        head = await self._store.log_head()
        # Set in place, then drop deleted groups' series: clearing first would
        # let a scrape (on the metrics server's thread) see no groups at all.
        names = set()
        for state in states:
            name = state.spec.name
            self._lag.labels(group=name).set(max(0, head - state.position))
            self._parked.labels(group=name).set(state.parked)
            for gauge, how in self._totals:
                gauge.labels(group=name).set(getattr(state, how))
            names.add(name)
        for gone in self._sampled - names:
            self._lag.remove(gone)
            self._parked.remove(gone)
            for gauge, _ in self._totals:
                gauge.remove(gone)
        self._sampled = names
        for sample_at in self._also:
            await sample_at(head)
