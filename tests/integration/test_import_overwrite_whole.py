"""An import with --overwrite writes nothing unless it read and checked the
whole stream (service/transfer/checked_first.py; docs/migration.md, "The
cutover"): one that fails at the stream's last record, or whose stream is
cut short, leaves the target exactly as it was, through the command line
straight on the store and through a real server process, on SQLite and
PostgreSQL. Before, the batches before the failure were written: the
aggregates of the first ones replaced by the old system's history, the
others not, and the operator's decision half carried out.

The stream is three batches long (1,200 events): the three accounts the
target's commands made are replaced in the first batch, and the bad record
is the last event."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from tests.support.faults import appends_blocked, log_head, wait_for_waiters
from tests.support.import_claims import chronicle, empty_store
from tests.support.postgres import Cluster
from tests.support.processes import cli, server_process

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPLACED = ("acc-0", "acc-1", "acc-2")
EVENTS = 1200  # three batches of the import's 500


@pytest.fixture(params=["sqlite", "postgresql"])
def target_url(request: pytest.FixtureRequest, pg_cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    with empty_store(request.param, pg_cluster, tmp_path) as url:
        yield url


def _event(aggregate_id: str, version: int, event_type: str, payload: dict[str, object]) -> str:
    return json.dumps(
        {
            "event": {
                "event": {
                    "event_id": str(uuid4()),
                    "aggregate_id": aggregate_id,
                    "aggregate_type": "Account",
                    "version": str(version),
                    "timestamp": "2025-01-01T10:00:00Z",
                    "event_type": event_type,
                    "schema_version": 1,
                    "payload": {"@type": f"type.googleapis.com/{event_type}", **payload},
                }
            }
        }
    )


def old_system(path: Path, *, last: str | None = None) -> Path:
    """The old system's accounts as JSON lines: the replaced ones first,
    each opened and given deposits, then new ones; ``last`` instead of the
    last event."""
    lines = [_event(a, 1, "bank.v1.AccountOpened", {"owner": "old"}) for a in REPLACED]
    lines += [_event(a, v, "bank.v1.MoneyDeposited", {"amount": "7"}) for a in REPLACED for v in range(2, 5)]
    lines += [_event(f"acc-new-{n}", 1, "bank.v1.AccountOpened", {"owner": "new"}) for n in range(EVENTS - len(lines))]
    if last is not None:
        lines[-1] = last
    header = {"header": {"format": "chronicle.export", "format_version": 1, "exported_at": "2026-01-01T00:00:00Z"}}
    end = {"end": {"events": str(len(lines))}}
    path.write_text("\n".join([json.dumps(header), *lines, json.dumps(end)]) + "\n")
    return path


def contents(address: str, path: Path) -> list[str]:
    """Every record the target holds, events, claims and command records,
    as an export through the server writes them (its header aside)."""
    cli("export", str(path), "--commands", "--snapshots", "--quiet", server=address)
    return path.read_text().splitlines()[1:]


def imported(export: Path, through: str, address: str, url: str) -> tuple[int, str, str]:
    """``chronicle import --overwrite`` of ``export``: exit status, stdout, stderr."""
    if through == "server":
        done = cli("import", str(export), "--overwrite", "--quiet", server=address, check=False)
    else:
        done = chronicle("import", str(export), "--overwrite", "--quiet", "--database-url", url, check=False)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("through", ["database-url", "server"])
def test_an_overwrite_refused_at_its_last_record_leaves_the_target_as_it_was(
    target_url: str, tmp_path: Path, through: str
) -> None:
    # The last event's payload is packed as another type than the event's.
    mislabelled = json.loads(_event("acc-last", 1, "bank.v1.AccountOpened", {"owner": "x"}))
    mislabelled["event"]["event"]["event_type"] = "bank.v1.MoneyDeposited"
    bad = old_system(tmp_path / "bad.jsonl", last=json.dumps(mislabelled))
    with server_process(target_url, extra=["--anonymous-admin"]) as server:
        for aggregate_id in (*REPLACED, "acc-here"):
            cli("submit", aggregate_id, "bank.v1.OpenAccount", '{"owner": "here"}', server=server.address)
            cli("submit", aggregate_id, "bank.v1.Deposit", '{"amount": 5}', server=server.address)
        before = contents(server.address, tmp_path / "before.jsonl")

        status, _, stderr = imported(bad, through, server.address, target_url)
        assert status != 0 and "BAD_RECORD" in stderr and f"record[{EVENTS}]" in stderr, stderr
        assert contents(server.address, tmp_path / "after.jsonl") == before

        # The same stream whole: every account replaced, every new one written.
        status, stdout, stderr = imported(old_system(tmp_path / "good.jsonl"), through, server.address, target_url)
        assert status == 0, stderr
        summary = json.loads(stdout)
        assert (summary["events_written"], summary["aggregates_replaced"]) == (EVENTS, len(REPLACED))
        first = json.loads(cli("read", "acc-0", server=server.address).stdout.splitlines()[0])
        assert first["payload"]["owner"] == "old", first


def test_an_overwrite_whose_stream_is_cut_short_writes_nothing(target_url: str, tmp_path: Path) -> None:
    # The file ends inside its last record: the command line ends its
    # call's stream there, as a client that lost its connection would.
    cut = old_system(tmp_path / "cut.chronicle.jsonl")
    text = cut.read_text()
    cut.write_text(text[: len(text) - 40])
    with server_process(target_url, extra=["--anonymous-admin"]) as server:
        for aggregate_id in REPLACED:
            cli("submit", aggregate_id, "bank.v1.OpenAccount", '{"owner": "here"}', server=server.address)
        before = contents(server.address, tmp_path / "before.jsonl")
        status, _, stderr = imported(cut, "server", server.address, target_url)
        assert status != 0 and "nothing was written" in stderr, stderr
        assert contents(server.address, tmp_path / "after.jsonl") == before


def test_an_overwrite_whose_caller_leaves_while_it_writes_is_written_whole(postgres_url: str, tmp_path: Path) -> None:
    """The command line killed once the server has the whole stream and
    writes it (its first batch waits on the log's position lock, which the
    test holds): the server writes on to the end, rather than leave the
    target half overwritten."""
    export = old_system(tmp_path / "good.jsonl")
    with server_process(postgres_url, extra=["--anonymous-admin"]) as server:
        for aggregate_id in REPLACED:
            cli("submit", aggregate_id, "bank.v1.OpenAccount", '{"owner": "here"}', server=server.address)
        command = [sys.executable, "-m", "service", "import", str(export), "--overwrite", "--quiet"]
        with appends_blocked(postgres_url):
            caller = subprocess.Popen(
                [*command, "--server", server.address], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                wait_for_waiters(postgres_url, 1)  # checked whole; its first batch waits
            finally:
                caller.kill()
                caller.wait(10)
            time.sleep(1)  # the server sees its caller gone (well within the 5 s lock timeout)
        deadline = time.monotonic() + 30
        while log_head(postgres_url) < len(REPLACED) + EVENTS and time.monotonic() < deadline:
            time.sleep(0.1)
        first = json.loads(cli("read", "acc-0", server=server.address).stdout.splitlines()[0])
        assert first["payload"]["owner"] == "old", first
        assert log_head(postgres_url) == len(REPLACED) + EVENTS
        server.stop()
        assert server.process.stdout is not None
        logged = server.process.stdout.read()
    assert "left while it was writing" in logged and "has written the whole stream" in logged, logged[-2000:]
