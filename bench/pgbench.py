"""The database ceiling: single-row durable insert transactions per second,
straight to the same PostgreSQL, at the same concurrency (pgbench), and
PostgreSQL's CPU per insert, measured over the same kind of window as
Chronicle's points (after a warm-up, so the clients' connections are made)."""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
from pathlib import Path

import psycopg

from bench import machine
from tests.support.postgres import Cluster

WARMUP = 1.0
_PROGRESS = re.compile(r"progress: ([\d.]+) s, ([\d.]+) tps")


def insert_rate(cluster: Cluster, database_url: str, clients: int, seconds: float) -> float:
    """Single-row durable inserts per second."""
    return insert_point(cluster, database_url, clients, seconds, None)["rate"]


def insert_point(
    cluster: Cluster, database_url: str, clients: int, seconds: float, postmaster: int | None
) -> dict[str, float]:
    """pgbench's rate over the measured seconds (from its per-second progress
    lines), and PostgreSQL's CPU over the same seconds (``postmaster``'s tree)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_rows (id bigserial PRIMARY KEY, payload bytea NOT NULL)")
    assert cluster.bindir is not None
    measured = max(1, round(seconds))
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write("INSERT INTO bench_rows (payload) VALUES ('\\x0801');\n")
    cpu: list[float] = []

    def sample() -> None:
        if postmaster:
            cpu.append(machine.tree_cpu_seconds(postmaster))

    try:
        process = subprocess.Popen(
            [
                str(cluster.bindir / "pgbench"),
                "-n",
                "-c",
                str(clients),
                "-j",
                str(min(clients, 2)),
                "-T",
                str(int(WARMUP) + measured + 1),
                "-P",
                "1",
                "-f",
                script.name,
                database_url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        timers = [threading.Timer(WARMUP, sample), threading.Timer(WARMUP + measured, sample)]
        for timer in timers:
            timer.start()
        out, err = process.communicate(timeout=seconds + 120)
        for timer in timers:
            timer.join()
        if process.returncode != 0:
            raise RuntimeError(f"pgbench failed: {err}")
    finally:
        Path(script.name).unlink()
    # Progress line "progress: N s, X tps" covers second N-1 to N.
    per_second = {round(float(at)): float(tps) for at, tps in _PROGRESS.findall(err + out)}
    window = [per_second.get(second, 0.0) for second in range(int(WARMUP) + 1, int(WARMUP) + measured + 1)]
    completed = sum(window)
    return {
        "concurrency": clients,
        "rate": completed / measured,
        "completed": completed,
        "db_cpu": (cpu[1] - cpu[0]) if len(cpu) == 2 else 0.0,
        "wall": measured,
    }
