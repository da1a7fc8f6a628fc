"""What the tests of migrated claims share: a target store of each kind,
the command line run to its end, and a registration a server must refuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.postgres import Cluster
from tests.support.processes import cli


@contextmanager
def empty_store(kind: str, pg_cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty Chronicle store of ``kind`` (sqlite, postgresql)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/chronicle.db"
        return
    url = pg_cluster.create_database()
    try:
        yield url
    finally:
        pg_cluster.drop_database(url)


def chronicle(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``chronicle ARGS`` (no server), run to its end, with ``env`` added to ours."""
    done = subprocess.run(
        [sys.executable, "-m", "service", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env} if env else None,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"chronicle {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done


def register(server: str, aggregate_id: str, email: str) -> subprocess.CompletedProcess[str]:
    """``chronicle submit`` of a users.v1.RegisterUser."""
    payload = json.dumps({"email": email, "name": "Impostor"})
    return cli("submit", aggregate_id, "users.v1.RegisterUser", payload, server=server, check=False)


def refused_not_unique(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode != 0 and "NOT_UNIQUE" in result.stderr
