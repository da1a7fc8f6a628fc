"""The load over the last minutes, sampled from the server's own metrics.

Every ``interval`` seconds the sampler reads the Prometheus registry of this
server (the same counters ``/metrics`` serves) and keeps what changed since
the sample before: commands per second, the command latency's percentiles
(estimated within the histogram's buckets, as Prometheus'
``histogram_quantile`` does), conflicts per second and refusals by reason
(commands refused, and RPCs refused before their request was read). A
reading costs one walk over the registry, off the command path.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reading:
    """Cumulative values at one moment."""

    at: float
    commands: float = 0.0
    conflicts: float = 0.0
    refusals: Mapping[str, float] = field(default_factory=dict)
    buckets: tuple[tuple[float, float], ...] = ()  # (upper bound, cumulative count), summed over command types


@dataclass(frozen=True, slots=True)
class Sample:
    """What happened between two readings."""

    at: float
    seconds: float
    commands_per_second: float
    conflicts_per_second: float
    refusals: Mapping[str, float]  # counts, by reason
    p50: float | None  # seconds; None without commands
    p95: float | None
    p99: float | None

    @property
    def refusals_per_second(self) -> float:
        return sum(self.refusals.values()) / self.seconds if self.seconds else 0.0


def read(registry: CollectorRegistry, *, at: float) -> Reading:
    commands = 0.0
    conflicts = 0.0
    refusals: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "chronicle_commands_total":
                commands += sample.value
            elif sample.name == "chronicle_concurrency_conflicts_total":
                conflicts += sample.value
            elif sample.name in ("chronicle_command_refusals_total", "chronicle_rpc_refusals_total"):
                reason = sample.labels.get("reason", "")
                refusals[reason] = refusals.get(reason, 0.0) + sample.value
            elif sample.name == "chronicle_command_duration_seconds_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return Reading(at, commands, conflicts, refusals, tuple(sorted(buckets.items())))


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative ``buckets`` (upper bound, count),
    linear within the bucket it falls in; None when they are empty."""
    ordered = list(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the largest bucket: its lower edge is all we know
            inside = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / inside if inside else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


def between(before: Reading, after: Reading) -> Sample:
    seconds = max(after.at - before.at, 1e-9)
    earlier = dict(before.buckets)
    buckets = [(bound, count - earlier.get(bound, 0.0)) for bound, count in after.buckets]
    refusals = {
        reason: value - before.refusals.get(reason, 0.0)
        for reason, value in after.refusals.items()
        if value - before.refusals.get(reason, 0.0) > 0
    }
    return Sample(
        at=after.at,
        seconds=seconds,
        commands_per_second=(after.commands - before.commands) / seconds,
        conflicts_per_second=(after.conflicts - before.conflicts) / seconds,
        refusals=refusals,
        p50=quantile(0.5, buckets),
        p95=quantile(0.95, buckets),
        p99=quantile(0.99, buckets),
    )


class LoadSampler:
    """Keeps the last ``window`` seconds of samples, one every ``interval``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        interval: float = 5.0,
        window: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self.interval = interval
        self.window = window
        self._clock = clock
        self.samples: deque[Sample] = deque(maxlen=max(2, int(window / interval)))
        self._last = read(registry, at=clock())
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> Sample:
        reading = read(self._registry, at=self._clock())
        sample = between(self._last, reading)
        self._last = reading
        self.samples.append(sample)
        return sample

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="console-load-sampler")

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.sample()
            except Exception:
                # A metric's callback that raises must not freeze the chart
                # for good: said once per spell of failures, sampled again.
                if not failing:
                    log.exception("sampling the console's load failed")
                failing = True
            else:
                failing = False

    async def stop(self) -> None:
        await cancel_and_wait(self._task, "the console's load sampler", log)
