"""What a restore and an overwriting import do to read models, through a
real server on SQLite and PostgreSQL and the command line
(service/transfer/read_models.py, docs/export-format.md).

A projection stopped on an event below an archived aggregate's tombstone
never sees that tombstone once a restore replaced it, and would apply the
restored events on top of what it derived before: the restore is refused
(READ_MODELS_BEHIND) before anything is written, naming it, unless told to
go on, and then names it to be rebuilt. An overwrite names the projections
that had applied the events it replaced."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import ServerProcess, cli, server_process
from tests.support.stalling_ledger import POISON

pytestmark = pytest.mark.slow

STALLING = "stalling.opened"
BALANCES = "bank.balances_by_owner"
PLUGINS = ["--anonymous-admin", "--plugin", "tests.support.stalling_ledger:plugin"]


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgres":
        yield request.getfixturevalue("postgres_url")
    else:
        yield f"sqlite:///{tmp_path}/target.db"


def progress(server: ServerProcess, name: str) -> dict[str, Any]:
    """The projection's status as `chronicle projection NAME` prints it
    (its exit status is 1 while the projection is failing: the status is
    printed all the same)."""
    done = cli("projection", name, server=server.address, check=False)
    assert done.returncode in (0, 1) and done.stdout, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def wait_for(server: ServerProcess, name: str, *, at_least: int = 0, stopped: bool = False) -> dict[str, Any]:
    """``name``'s progress once it reached the log's head (or ``at_least``),
    or stopped on an event it fails on."""
    deadline = time.monotonic() + 20
    while True:
        now = progress(server, name)
        if stopped and now.get("error"):
            return now
        if not stopped and int(now["position"]) >= max(at_least, int(now["log_head"])):
            return now
        assert time.monotonic() < deadline, now
        time.sleep(0.1)


def events_of(server: ServerProcess, aggregate_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in cli("read", aggregate_id, server=server.address).stdout.splitlines()]


def document(server: ServerProcess, name: str, key: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cli("projection", name, key, server=server.address).stdout)
    return result


def test_a_restore_is_refused_while_a_projection_is_below_the_tombstone(database_url: str, tmp_path: Path) -> None:
    with server_process(database_url, extra=PLUGINS) as server:
        at = server.address
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=at)
        cli("submit", "acc-1", "bank.v1.CloseAccount", server=at)
        wait_for(server, STALLING)
        assert document(server, STALLING, "opened:acc-1")["document"]["balance"] == "1"
        cli("submit", "acc-p", "bank.v1.OpenAccount", json.dumps({"owner": POISON}), server=at)
        stopped = int(wait_for(server, STALLING, stopped=True)["position"])
        archived = json.loads(
            cli(
                "archive",
                str(tmp_path / "archive"),
                "--type",
                "Account",
                "--last-event",
                "bank.v1.AccountClosed",
                server=at,
            ).stdout
        )
        assert archived["archived"] == ["acc-1"]
        (tombstone,) = events_of(server, "acc-1")
        tombstone_at = int(tombstone["position"])
        assert stopped < tombstone_at
        wait_for(server, BALANCES, at_least=tombstone_at)  # the bank's read model saw the tombstone

        refused = cli("restore", archived["file"], "--read-models-wait", "0.5", server=at, check=False)
        assert refused.returncode == 1
        first, details = refused.stderr.splitlines()[:2]
        assert first.startswith("error: FAILED_PRECONDITION READ_MODELS_BEHIND: ")
        # Stopped at the poisoned event: refused without waiting for it, saying where it stands still.
        assert f"{STALLING} (at {stopped}, stopped by a failure at {stopped + 1})" in first
        assert "--even-if-read-models-behind" in first
        assert json.loads(details) == {
            "projections": json.dumps({STALLING: stopped}),
            "tombstones": json.dumps({"acc-1": tombstone_at}),
            "stopped": json.dumps({STALLING: stopped + 1}),
            "waited_seconds": "0.5",
        }
        assert [e["deleted"] for e in events_of(server, "acc-1")] == [True]  # nothing restored

        restored = cli("restore", archived["file"], "--even-if-read-models-behind", server=at)
        summary = json.loads(restored.stdout)
        assert (summary["aggregates_replaced"], summary["projections_to_rebuild"]) == (1, [STALLING])
        assert f"warning: PROJECTIONS_TO_REBUILD: {STALLING} " in restored.stderr
        assert [e["event_type"] for e in events_of(server, "acc-1")] == [
            "bank.v1.AccountOpened",
            "bank.v1.AccountClosed",
        ]
        # The bank's read model, which saw the tombstone, counts acc-1 once.
        wait_for(server, BALANCES)
        assert document(server, BALANCES, "owner:ann")["document"]["account_ids"] == ["acc-1"]
        audit = [json.loads(line) for line in cli("audit", "--limit", "1000", server=at).stdout.splitlines()]
        (entry,) = [
            e for e in audit if e.get("command_type", "").endswith("/ImportLog") and e["outcome"].endswith("ACCEPTED")
        ]
        assert f"or were behind a tombstone it replaced): {STALLING} (at {stopped})" in entry["message"]
        server.stop()
        assert server.process.stdout is not None
        logged = server.process.stdout.read()
    assert f"projections {STALLING} (at {stopped}) applied events this import replaced" in logged


def test_an_overwrite_names_the_projections_that_applied_what_it_replaced(database_url: str, tmp_path: Path) -> None:
    with (
        server_process(f"sqlite:///{tmp_path}/source.db", extra=PLUGINS) as source,
        server_process(database_url, extra=PLUGINS) as target,
    ):
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=source.address)
        cli("export", "--aggregate", "acc-1", str(tmp_path / "acc-1.chronicle"), server=source.address)
        # The target's own acc-1: the bank's read model applies it; the
        # stalling one stopped on an event before it, and has applied none of it.
        cli("submit", "acc-p", "bank.v1.OpenAccount", json.dumps({"owner": POISON}), server=target.address)
        stopped = int(wait_for(target, STALLING, stopped=True)["position"])
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "bob"}', server=target.address)
        (own,) = events_of(target, "acc-1")
        balances = int(wait_for(target, BALANCES, at_least=int(own["position"]))["position"])

        imported = cli("import", "--overwrite", str(tmp_path / "acc-1.chronicle"), server=target.address)
        summary = json.loads(imported.stdout)
        assert (summary["aggregates_replaced"], summary["projections_to_rebuild"]) == (1, [BALANCES])
        assert f"warning: PROJECTIONS_TO_REBUILD: {BALANCES} " in imported.stderr
        assert stopped < int(own["position"]) <= balances
        # Why: bob's opening, replaced, stays counted beside ann's.
        wait_for(target, BALANCES)
        assert document(target, BALANCES, "owner:bob")["document"]["account_ids"] == ["acc-1"]
        assert document(target, BALANCES, "owner:ann")["document"]["account_ids"] == ["acc-1"]
