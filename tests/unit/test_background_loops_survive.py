"""Background loops that must outlive a bug's exception: a loop that ended
on one would leave its job undone, silently, until the server restarts
(health stuck at its last answer, tables growing without pruning, the
console's load chart frozen, a read model or reaction standing still)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.registry import Collector

from domain_plugins import bank_account
from service.api.health import Health, StoreMonitor
from service.console.load import LoadSampler
from service.errors import ProjectionFailed, StoreUnavailable
from service.observability.subscriptions import LagSampler, SubscriptionTracker
from service.plugins.registry import Registry
from service.processing.projections import ProjectionRunner
from service.processing.retention import Pruner
from service.processing.upcasting import EventReader
from service.store.memory import MemoryStore
from tests.support.waiting import eventually


class FlakyPing:
    """A store whose ping raises what no store translates, while ``broken``."""

    def __init__(self) -> None:
        self.broken = False
        self.pings = 0

    async def ping(self) -> None:
        self.pings += 1
        if self.broken:
            raise RuntimeError("the driver met something it did not expect")


async def test_the_store_monitor_reports_an_untranslated_failure_and_goes_on_watching() -> None:
    store, health = FlakyPing(), Health()
    monitor = StoreMonitor(store, health, interval=0.01)  # type: ignore[arg-type]
    assert await monitor.check()
    monitor.start()
    try:
        store.broken = True
        await eventually(lambda: not health.serving, what="NOT_SERVING")
        store.broken = False
        await eventually(lambda: health.serving, what="SERVING again")
    finally:
        await monitor.stop()


class FlakyRetention:
    """Pruning whose first round raises a bug's exception."""

    def __init__(self) -> None:
        self.rounds = 0

    async def prune_commands(self, recorded_before_us: int, limit: int) -> int:
        self.rounds += 1
        if self.rounds == 1:
            raise KeyError("a bug below")
        return 0

    async def prune_refusals(self, recorded_before_us: int, limit: int) -> int:
        return 0


async def test_the_pruner_logs_a_bug_s_exception_and_prunes_again_next_round(caplog: pytest.LogCaptureFixture) -> None:
    retention = FlakyRetention()
    pruner = Pruner(retention, command_retention=3600, refusal_retention=0, interval=0.01)
    pruner.start()
    try:
        await eventually(lambda: retention.rounds >= 3, what="rounds after the failure")
    finally:
        await pruner.stop()
    assert "pruning old records failed unexpectedly" in caplog.text


class FailingOnce(Collector):
    def __init__(self) -> None:
        self.collected = 0

    def collect(self):  # type: ignore[no-untyped-def]
        self.collected += 1
        if self.collected == 2:  # the first is the sampler's reading at its start
            raise ValueError("a metric's callback failed")
        return iter(())


async def test_the_console_s_load_sampler_goes_on_after_a_failed_sample(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    collector = FailingOnce()
    registry.register(collector)
    sampler = LoadSampler(registry, interval=0.01, window=1.0)
    sampler.start()
    try:
        await eventually(lambda: len(sampler.samples) >= 2, what="samples after the failure")
    finally:
        await sampler.stop()
    assert "sampling the console's load failed" in caplog.text


REGISTRY = Registry([bank_account.plugin])


def balances_over(store: MemoryStore) -> ProjectionRunner:
    """The bank's read model over ``store``, polling and retrying quickly."""
    return ProjectionRunner(
        bank_account.balances_by_owner,
        log=store,
        documents=store,
        reader=EventReader(REGISTRY),
        poll_interval=0.01,
        retry_interval=0.01,
    )


class FlakyCheckpoints(MemoryStore):
    """Reading the checkpoint raises a bug's exception the first time."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def projection_position(self, name: str) -> int:
        self.reads += 1
        if self.reads == 1:
            raise RuntimeError("a bug below")
        return await super().projection_position(name)


async def test_a_projection_runner_outlives_a_bug_s_exception_reading_its_checkpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    store = FlakyCheckpoints()
    runner = balances_over(store)
    runner.start()
    try:
        await eventually(lambda: store.reads >= 2, what="the checkpoint read again")
        await asyncio.sleep(0.05)  # time for a task that ended to be seen as ended
        assert runner.status.running
        assert "a bug below" in caplog.text
    finally:
        await runner.stop()


class AwayCheckpoints(MemoryStore):
    """A database away for the first ``away`` checkpoint reads (each
    failure's message different, as a driver's are), then a handler's bug
    twice, then back."""

    def __init__(self, away: int) -> None:
        super().__init__()
        self.away = away
        self.reads = 0

    async def projection_position(self, name: str) -> int:
        self.reads += 1
        if self.reads <= self.away:
            raise StoreUnavailable(f"PostgreSQL unavailable during a read: attempt {self.reads}")
        if self.reads <= self.away + 2:
            raise ProjectionFailed("the same bug", reason="PROJECTION_FAILED")
        return await super().projection_position(name)


async def test_a_runner_says_a_failure_once_while_it_lasts_and_once_that_it_goes_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="service.processing.projections")
    store = AwayCheckpoints(away=5)
    runner = balances_over(store)
    runner.start()
    try:
        await eventually(
            lambda: any("going again" in r.getMessage() for r in caplog.records), what="the runner going again"
        )
    finally:
        await runner.stop()
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "balances_by_owner" in r.getMessage()]
    loud = [(level, message) for level, message in said if level > logging.DEBUG]
    assert [level for level, _ in loud] == [logging.WARNING, logging.ERROR, logging.INFO], loud
    assert "STORE_UNAVAILABLE" in loud[0][1] and "attempt 1" in loud[0][1]
    assert "PROJECTION_FAILED: the same bug" in loud[1][1]
    assert loud[2][1].endswith("is going again after 7 failed attempts")
    assert len(said) - len(loud) == 5  # the repeats, at DEBUG
    assert runner.status.error == ""


class FailingHeads:
    """A log whose head cannot be read for the first ``failures`` tries."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.reads = 0

    async def log_head(self) -> int:
        self.reads += 1
        if self.failures:
            raise self.failures.pop(0)
        return 42


async def test_the_lag_sampler_says_a_bug_s_exception_once_and_sets_the_gauge_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="service.observability.subscriptions")
    log_reader = FailingHeads([StoreUnavailable("the database is away"), RuntimeError("a bug"), RuntimeError("a bug")])
    tracker = SubscriptionTracker()
    registry = CollectorRegistry()
    lag = Gauge("test_subscription_lag", "", registry=registry)
    sampler = LagSampler(log_reader, tracker, lag, interval=0.01)  # type: ignore[arg-type]
    with tracker.tracking(40):
        sampler.start()
        try:
            await eventually(lambda: registry.get_sample_value("test_subscription_lag") == 2, what="the lag set")
        finally:
            await sampler.stop()
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None  # the bug, once for its spell, with its traceback
    assert any(record.levelno == logging.DEBUG and "could not" in record.getMessage() for record in caplog.records)


class AnsweredOnCue:
    """A store whose ping answers when the test says."""

    def __init__(self) -> None:
        self.pending: asyncio.Future[None] | None = None

    async def ping(self) -> None:
        self.pending = asyncio.get_running_loop().create_future()
        await self.pending


async def test_a_monitor_stopped_as_its_ping_answers_stops() -> None:
    # asyncio.wait_for in Python 3.11 swallows a cancellation that arrives
    # as the awaited call finishes: the monitor went on pinging, and the
    # shutdown that stopped it waited for it for ever.
    store = AnsweredOnCue()
    monitor = StoreMonitor(store, Health(), interval=0.01)  # type: ignore[arg-type]
    monitor.start()
    await eventually(lambda: store.pending is not None, what="a ping under way")
    assert store.pending is not None
    store.pending.set_result(None)
    await asyncio.sleep(0)  # the ping's answer is in; the monitor has not yet woken
    async with asyncio.timeout(5):
        await monitor.stop()
