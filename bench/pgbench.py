"""The database ceiling: single-row durable insert transactions per second,
straight to the same PostgreSQL, at the same concurrency (pgbench)."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.support.postgres import Cluster


def insert_rate(cluster: Cluster, database_url: str, clients: int, seconds: float) -> float:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_rows (id bigserial PRIMARY KEY, payload bytea NOT NULL)")
    assert cluster.bindir is not None
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write("INSERT INTO bench_rows (payload) VALUES ('\\x0801');\n")
    try:
        out = subprocess.run(
            [
                str(cluster.bindir / "pgbench"),
                "-n",
                "-c",
                str(clients),
                "-j",
                str(min(clients, 2)),
                "-T",
                str(int(seconds)),
                "-f",
                script.name,
                database_url,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 120,
        ).stdout
    finally:
        Path(script.name).unlink()
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    if match is None:
        raise RuntimeError(f"pgbench said: {out}")
    return float(match.group(1))
