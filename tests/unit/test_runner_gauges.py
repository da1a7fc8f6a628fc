"""The projections' and reactions' gauges: set by the replica that runs
each one, removed from one that no longer does."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from service.observability.metrics import RunnerGauges
from service.observability.runners import RunnerWatch


@dataclass
class Status:
    position: int = 0
    error: str = ""


@dataclass
class Runner:
    status: Status = field(default_factory=Status)
    holds_lease: bool = True


def value(registry: CollectorRegistry, name: str, projection: str) -> float | None:
    return registry.get_sample_value(name, {"projection": projection})


async def test_the_replica_that_runs_a_projection_reports_it_and_one_that_stops_running_it_does_not() -> None:
    registry = CollectorRegistry()
    runners = {"a": Runner(Status(position=7)), "b": Runner(Status(position=3, error="STORE_UNAVAILABLE: away"))}
    parked = {"a": 2, "b": 0}

    async def count(name: str) -> int:
        return parked[name]

    watch = RunnerWatch(runners, RunnerGauges.of("projection", "events", registry), count)
    await watch.sample(10)
    assert [value(registry, "chronicle_projection_position", n) for n in "ab"] == [7, 3]
    assert [value(registry, "chronicle_projection_lag_positions", n) for n in "ab"] == [3, 7]
    assert [value(registry, "chronicle_projection_failing", n) for n in "ab"] == [0, 1]
    assert [value(registry, "chronicle_projection_parked_events", n) for n in "ab"] == [2, 0]

    runners["b"].holds_lease = False  # another replica took it over
    runners["a"].status.position = 12  # past the head read before: not a negative lag
    runners["a"].status.error = "PROJECTION_FAILED: boom"
    await watch.sample(10)
    assert value(registry, "chronicle_projection_lag_positions", "a") == 0
    assert value(registry, "chronicle_projection_failing", "a") == 1
    for name in ("position", "lag_positions", "failing", "parked_events"):
        assert value(registry, f"chronicle_projection_{name}", "b") is None, name

    runners["b"].holds_lease = True  # and back
    runners["a"].status.error = ""
    await watch.sample(20)
    assert value(registry, "chronicle_projection_lag_positions", "b") == 17
    assert value(registry, "chronicle_projection_failing", "a") == 0


async def test_a_reactions_gauges_are_named_after_it() -> None:
    registry = CollectorRegistry()

    async def none(name: str) -> int:
        return 1

    watch = RunnerWatch({"r": Runner(Status(position=4))}, RunnerGauges.of("reaction", "commands", registry), none)
    await watch.sample(4)
    labels = {"reaction": "r"}
    assert registry.get_sample_value("chronicle_reaction_position", labels) == 4
    assert registry.get_sample_value("chronicle_reaction_lag_positions", labels) == 0
    assert registry.get_sample_value("chronicle_reaction_failing", labels) == 0
    assert registry.get_sample_value("chronicle_reaction_parked_commands", labels) == 1
