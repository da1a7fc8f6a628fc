"""`chronicle export` and `chronicle import` as an operator types them:
through a server, or straight on a store with --database-url, binary or
JSON lines, with progress on standard error and an incomplete file that
finishes when imported whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.processes import cli, server_process

pytestmark = pytest.mark.slow


def fill(address: str) -> None:
    cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=address)
    for amount in (10, 20, 30):
        cli("submit", "acc-1", "bank.v1.Deposit", json.dumps({"amount": amount}), server=address)
    cli("submit", "u-1", "users.v1.RegisterUser", '{"email": "ann@example.com", "name": "Ann"}', server=address)


def test_a_store_goes_out_through_a_server_and_into_another_file(tmp_path: Path) -> None:
    with server_process(f"sqlite:///{tmp_path}/old.db", extra=["--anonymous-admin"]) as old:
        fill(old.address)
        out = cli("export", str(tmp_path / "all.chronicle"), "--commands", "--snapshots", server=old.address)
        assert json.loads(out.stdout) == {
            "file": str(tmp_path / "all.chronicle"),
            "format": "binary",
            "events": 5,
            "claims": 1,
            "commands": 5,
        }
        assert "export: done: 1 claims, 5 commands, 5 events" in out.stderr
        readable = cli("export", str(tmp_path / "all.jsonl"), "--quiet", server=old.address)
        assert json.loads(readable.stdout)["format"] == "jsonl"
        assert readable.stderr == ""
    # Each file holds every payload: its owner's alone, whatever the umask.
    assert {oct((tmp_path / name).stat().st_mode & 0o777) for name in ("all.chronicle", "all.jsonl")} == {"0o600"}
    lines = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert lines[1]["event"]["event"]["payload"] == {
        "@type": "type.googleapis.com/bank.v1.AccountOpened",
        "owner": "ann",
    }

    new = f"sqlite:///{tmp_path}/new.db"
    done = cli("import", str(tmp_path / "all.chronicle"), "--database-url", new, server="unused:1")
    assert json.loads(done.stdout) | {"records": 0} == {
        "records": 0,
        "events_written": 5,
        "events_skipped": 0,
        "snapshots_written": 0,
        "claims_written": 1,
        "commands_written": 5,
        "data_keys_written": 0,
        "aggregates_replaced": 0,
        "forgotten_skipped": 0,
        # The user's claim came as a record, and its state declares it too: found held, nothing released.
        "claims_derived": 1,
        "aggregates_without_claims": 0,
        "claims_released": 0,
        "projections_to_rebuild": [],
        "read_model_keys_skipped": 0,
        "global_claims_left_out": 0,
        "commands_past_events_left_out": 0,
    }
    assert "import: done: 5 events written, 0 already there" in done.stderr
    # The JSON lines of the same store: every event is there already.
    again = cli("import", str(tmp_path / "all.jsonl"), "--database-url", new, server="unused:1")
    assert json.loads(again.stdout)["events_skipped"] == 5
    with server_process(new) as server:
        state = json.loads(cli("get", "acc-1", server=server.address).stdout)
        assert state["state"]["balance"] == "60"
        taken = cli(
            "submit",
            "u-2",
            "users.v1.RegisterUser",
            '{"email": "ann@example.com", "name": "X"}',
            server=server.address,
            check=False,
        )
        assert "NOT_UNIQUE" in taken.stderr


def test_a_file_cut_short_imports_what_it_has_and_finishes_when_whole(tmp_path: Path) -> None:
    with server_process(f"sqlite:///{tmp_path}/old.db", extra=["--anonymous-admin"]) as old:
        fill(old.address)
        cli("export", str(tmp_path / "all.chronicle"), server=old.address)
    whole = (tmp_path / "all.chronicle").read_bytes()
    (tmp_path / "cut.chronicle").write_bytes(whole[: len(whole) * 2 // 3])
    with server_process(f"sqlite:///{tmp_path}/new.db", extra=["--anonymous-admin"]) as new:
        cut = cli("import", str(tmp_path / "cut.chronicle"), server=new.address, check=False)
        assert cut.returncode == 2
        assert "error: EXPORT_INCOMPLETE" in cut.stderr
        finished = cli("import", str(tmp_path / "all.chronicle"), server=new.address)
        counts = json.loads(finished.stdout)
        assert counts["events_written"] + counts["events_skipped"] == 5
        assert counts["events_written"] < 5  # the cut import had written some
        events = cli("read", "acc-1", server=new.address).stdout.splitlines()
        assert [json.loads(e)["version"] for e in events] == ["1", "2", "3", "4"]
    assert not (tmp_path / "all.chronicle.partial").exists()
