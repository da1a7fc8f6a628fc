"""Every ``CHRONICLE_*`` variable holds for every subcommand
(deployment.md, Settings): ``chronicle migrate`` took its store only from
``--database-url`` and refused to run as a migration job given the
servers' environment ("required: --database-url"). Now the variable is
read, the flag winning. Export's and import's ``--database-url`` are the
exception the guide names: the flag chooses to work on the store instead
of through the server, which a variable every server's environment holds
must not choose for them."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import psycopg
import pytest

from service.cli import build_parser
from service.settings import Settings, env_name


def chronicle(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CHRONICLE_")}
    return subprocess.run(
        [sys.executable, "-m", "service", *args], capture_output=True, text=True, timeout=60, env={**environ, **env}
    )


@pytest.mark.postgres
def test_migrate_takes_chronicle_database_url_and_the_flag_wins(postgres_url: str, tmp_path: Path) -> None:
    result = chronicle("migrate", env={"CHRONICLE_DATABASE_URL": postgres_url})
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["schema_version"] >= 1
    with psycopg.connect(postgres_url) as conn:
        (version,) = conn.execute("SELECT max(version) FROM chronicle.schema_migrations").fetchone() or (0,)
    assert version == printed["schema_version"]

    flagged = tmp_path / "flag.db"
    result = chronicle(
        "migrate", "--database-url", f"sqlite:///{flagged}", env={"CHRONICLE_DATABASE_URL": "sqlite:///elsewhere.db"}
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["database"] == f"sqlite:///{flagged}"
    assert flagged.exists() and not Path("elsewhere.db").exists()


def test_migrate_force_is_taken(tmp_path: Path) -> None:
    """``--force``: a migration that raises the compatibility floor under
    live older replicas (test_migration_under_old_replicas.py) is applied."""
    result = chronicle("migrate", "--force", env={"CHRONICLE_DATABASE_URL": f"sqlite:///{tmp_path}/f.db"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["schema_version"] >= 1


def test_migrate_without_either_says_what_it_needs() -> None:
    result = chronicle("migrate", env={})
    assert result.returncode == 2
    assert "--database-url" in result.stderr


# Flags of a subcommand that share a name with a serve setting and do not
# take its variable, on purpose (deployment.md says why).
NOT_FROM_THE_ENVIRONMENT = {("export", "database_url"), ("import", "database_url")}


def test_every_subcommand_flag_named_as_a_setting_takes_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Either the parser's default is the variable's value, or the flag's
    default is None and the subcommand reads the settings (load_settings,
    which takes the variable), as ``chronicle plugins`` does."""
    names = {f.name for f in fields(Settings)}
    subcommands = subparsers(build_parser())
    missed = []
    for command, parser in subcommands.items():
        if command == "serve":
            continue  # its flags are the settings themselves (test_deployment_claims)
        for action in parser._actions:
            if action.dest not in names or (command, action.dest) in NOT_FROM_THE_ENVIRONMENT:
                continue
            monkeypatch.setenv(env_name(action.dest), "from-the-environment")
            again = next(a for a in subparsers(build_parser())[command]._actions if a.dest == action.dest)
            monkeypatch.delenv(env_name(action.dest))
            takes_it = again.default == "from-the-environment" and not again.required
            reads_settings = again.default is None and not again.required and command == "plugins"
            if not (takes_it or reads_settings):
                missed.append(f"chronicle {command} --{action.dest.replace('_', '-')}")
    assert missed == []


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (found,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(found.choices)
