"""The bench's alternating rounds (bench/paired.py): each round's ratios come
from that round's points only, and the report judges the targets by their
median over the rounds, not by the sweep's single pass."""

from __future__ import annotations

from typing import Any

import pytest

from bench import paired, report


def _point(rate: float, server_cpu: float, db_cpu: float = 0.0, completed: int = 1000) -> dict[str, Any]:
    return {
        "rate": rate,
        "server_cpu": server_cpu,
        "db_cpu": db_cpu,
        "completed": completed,
        "p50_ms": 10.0,
        "p99_ms": 20.0,
    }


def _round(scale: float) -> dict[str, Any]:
    """One round on a host ``scale`` times slower: every CPU figure grows alike."""
    return {
        "noop unary": _point(1000, 0.2 * scale),
        "noop stream": _point(3000, 0.1 * scale),
        "tally unary": _point(900, 0.3 * scale, 0.1),
        "tally stream": _point(2000, 0.25 * scale, 0.1),
        "tally pages": _point(4000, 0.15 * scale, 0.1),
        "bank unary": _point(800, 0.5 * scale, 0.4),
        "bank stream": _point(1500, 0.3 * scale, 0.3),
        "bank pages": _point(3000, 0.2 * scale, 0.2),
        "library": {"rate": 500 / scale, "completed": 1000, "db_cpu": 0.3},
        "pgbench": {"rate": 9000, "completed": 1000, "db_cpu": 0.1},
    }


def test_a_round_s_ratios_are_its_own_points_against_each_other() -> None:
    found = paired.ratios(_round(1.0))
    assert found["server/noop tally unary"] == pytest.approx(1.5)
    assert found["server/noop tally stream"] == pytest.approx(2.5)
    assert found["server/noop tally pages"] == pytest.approx(1.5)  # pages against the streamed message
    assert found["server/noop bank unary"] == pytest.approx(2.5)
    assert found["rate/library bank stream"] == pytest.approx(3.0)
    assert found["db/pgbench bank unary"] == pytest.approx(4.0)


def test_a_host_that_slows_down_alike_for_both_sides_leaves_the_ratios_alone() -> None:
    result = {"rounds": [_round(1.0), _round(2.5), _round(1.3)]}
    medians = paired.medians(result)
    median, each = medians["server/noop tally stream"]
    assert each == pytest.approx([2.5, 2.5, 2.5])
    assert median == pytest.approx(2.5)


def test_the_median_is_the_middle_round_s_value() -> None:
    rounds = [_round(1.0), _round(1.0), _round(1.0)]
    rounds[0]["tally stream"]["server_cpu"] = 0.5  # 5 x
    rounds[1]["tally stream"]["server_cpu"] = 0.15  # 1.5 x
    rounds[2]["tally stream"]["server_cpu"] = 0.19  # 1.9 x
    median, each = paired.medians({"rounds": rounds})["server/noop tally stream"]
    assert each == pytest.approx([5.0, 1.5, 1.9])
    assert median == pytest.approx(1.9)


def _sweep() -> dict[str, Any]:
    """A sweep whose single pass says SubmitStream costs 4 x the no-op."""
    noop_stream = {"concurrency": 64, **_point(3000, 0.1)}
    return {
        "ceiling": [{"concurrency": 64, **_point(1000, 0.2)}],
        "ceiling_stream": [noop_stream],
        "unary": [{"concurrency": 64, "aggregates": 10_000, **_point(900, 0.3, 0.1)}],
        "stream": [{"concurrency": 64, **_point(2000, 0.4, 0.1)}],
        "pages": [],
        "bank": [],
    }


def _verdict(results: dict[str, Any], name_start: str) -> tuple[str, bool]:
    [(value, ok)] = [(value, ok) for name, value, ok in report.targets(results) if name.startswith(name_start)]
    return value, ok


def test_the_report_judges_a_ratio_by_the_rounds_median_and_shows_the_sweep_beside_it() -> None:
    target = "Server CPU per command ≤ 2 x the no-op gRPC server's per streamed message: SubmitStream (tally)"
    alone = _sweep()
    value, ok = _verdict(alone, target)
    assert not ok
    assert value == "400 / 100 µs = 4.00 x"  # the sweep's single pass

    rounds = [_round(1.0), _round(1.0), _round(1.0)]
    for one, cpu in zip(rounds, (0.5, 0.15, 0.19), strict=True):
        one["tally stream"]["server_cpu"] = cpu
    with_rounds = {**_sweep(), "paired": {"rounds": rounds, "seconds": 4, "library_threads": 16}}
    value, ok = _verdict(with_rounds, target)
    assert ok, value
    assert value.startswith("1.90 x (median of 3 alternating rounds: 5.00, 1.50, 1.90; the sweep:")
    assert "4.00 x" in value


def test_the_report_shows_every_round_s_ratios_and_points() -> None:
    result = {"rounds": [_round(1.0), _round(2.0)], "seconds": 4, "library_threads": 16}
    text = "\n".join(report.paired_lines(result))
    assert "| server/noop tally stream | 2.50 | 2.50 | 2.50 |" in text
    assert "| rate/library bank stream | 3.00 | 6.00 | 4.50 |" in text
    assert "| library | 500/s, PostgreSQL 300 µs | 250/s, PostgreSQL 300 µs |" in text
