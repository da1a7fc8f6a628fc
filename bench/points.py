"""One measured point of load against a server: the load's rate and
latencies, each side's CPU over the measured window, and, on Chronicle, the
checks that nothing acknowledged was lost."""

from __future__ import annotations

from typing import Any

from bench import bank, checks, load, machine


def per_command(row: dict[str, Any], side: str) -> float:
    """Microseconds of ``side``'s CPU (``server_cpu``, ``db_cpu``,
    ``client_cpu``) per command completed in a point's measured window."""
    return float(row[side]) / max(float(row["completed"]), 1.0) * 1e6


def measure(
    spec: load.LoadSpec, server_pid: int, postmaster: int | None, *, database_url: str | None = None
) -> dict[str, Any]:
    """One point: the load, each side's CPU over its measured window, and,
    on Chronicle, the check that every acknowledged command is stored."""

    def sample() -> tuple[float, float, int]:
        lag = bank.projection_lag(database_url) if spec.domain == "bank" and database_url else 0
        return (
            machine.cpu_seconds(server_pid),
            machine.tree_cpu_seconds(postmaster) if postmaster else 0.0,
            lag,
        )

    result = load.run(spec, sample)
    assert result.window is not None
    before, after = result.window
    row = {
        "mode": spec.mode,
        "domain": spec.domain,
        "concurrency": spec.concurrency,
        "aggregates": spec.aggregates,
        "events_per_command": spec.events_per_command,
        "rate": result.rate,
        "p50_ms": result.percentile(0.5) * 1000,
        "p99_ms": result.percentile(0.99) * 1000,
        "completed": result.completed,
        "errors": result.errors,
        "error_reasons": result.error_reasons,
        # CPU seconds of each side over the measured window only
        "server_cpu": after[0] - before[0],
        "db_cpu": after[1] - before[1],
        "client_cpu": result.client_cpu,
        "wall": spec.seconds,
    }
    if database_url is not None:
        point = f"{spec.domain} {spec.mode} c={spec.concurrency}"
        row["check"] = checks.acknowledged_are_stored(database_url, result.acknowledged, point=point)
        if spec.domain == "bank":
            row["projection_lag_at_end"] = after[2]
            row["projection_catch_up_s"] = bank.caught_up(database_url)
            row["balances"] = bank.balances_agree(database_url, spec.prefix, len(result.acknowledged))
    projection = (
        f"  lag {row['projection_lag_at_end']} caught up in {row['projection_catch_up_s']:.2f} s"
        if "projection_lag_at_end" in row
        else ""
    )
    print(
        # The no-op server is the one point without a database to sample.
        f"  {spec.domain if postmaster else 'no-op':5} {spec.mode:6} c={spec.concurrency:<4} aggs={spec.aggregates:<6}"
        f" ev={spec.events_per_command}  {row['rate']:8.0f}/s  p50 {row['p50_ms']:6.1f} ms"
        f"  p99 {row['p99_ms']:6.1f} ms  cpu s/db/c {row['server_cpu']:.1f}/{row['db_cpu']:.1f}"
        f"/{row['client_cpu']:.1f}{projection}" + (f"  errors {result.error_reasons}" if result.errors else ""),
        flush=True,
    )
    return row
