"""A third-party store, as a package installs it: registered under a URL
scheme in the ``chronicle.stores`` entry points (examples/sqlite_memory_store),
it passes the store contract through the pytest plugin Chronicle ships, and a
server serves from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.processes import ROOT, cli, serve_until_exit, server_process

pytestmark = pytest.mark.slow
EXAMPLE = ROOT / "examples" / "sqlite_memory_store"


def installed(site: Path) -> dict[str, str]:
    """The example installed into ``site`` as pip would (its module and a
    dist-info with its entry points): the environment to run with."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    info = site / f"chronicle_sqlite_memory-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = [
        f"[{group}]" + "".join(f"\n{name} = {target}" for name, target in points.items())
        for group, points in project["entry-points"].items()
    ]
    (info / "entry_points.txt").write_text("\n\n".join(lines) + "\n")
    (site / "chronicle_sqlite_memory.py").write_text((EXAMPLE / "chronicle_sqlite_memory.py").read_text())
    # and a package whose store cannot be imported
    broken = site / "chronicle_broken_store-0.1.dist-info"
    broken.mkdir()
    (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: chronicle-broken-store\nVersion: 0.1\n")
    (broken / "entry_points.txt").write_text("[chronicle.stores]\nbroken = no_such_module:open_store\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}


def test_a_third_party_store_passes_the_shipped_contract(tmp_path: Path) -> None:
    env = installed(tmp_path / "site")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(tmp_path / "pytest.ini"),
            "-p",
            "service.store_contract.plugin",
            "-p",
            "no:cacheprovider",
            "--pyargs",
            "service.store_contract",
            "--chronicle-store-url",
            "sqlite-memory://",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 100 and "skipped" not in summary and "failed" not in summary, summary


def test_a_server_serves_from_a_store_registered_by_scheme(tmp_path: Path) -> None:
    env = installed(tmp_path / "site")
    with server_process("sqlite-memory://", env={"PYTHONPATH": env["PYTHONPATH"]}) as server:
        opened = json.loads(
            cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address).stdout
        )
        assert opened["version"] == 1
    unknown = serve_until_exit("--database-url", "nosuch://x", env={"PYTHONPATH": env["PYTHONPATH"]})
    assert unknown.returncode != 0
    assert "BAD_DATABASE_URL" in unknown.stderr + unknown.stdout
    assert "installed: " in unknown.stderr + unknown.stdout and "sqlite-memory://" in unknown.stderr + unknown.stdout
    broken = serve_until_exit("--database-url", "broken://x", env={"PYTHONPATH": env["PYTHONPATH"]})
    assert broken.returncode != 0 and "STORE_IMPORT_FAILED" in broken.stderr + broken.stdout
