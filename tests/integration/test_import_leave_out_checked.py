"""``chronicle import --leave-out NAME`` where the export holds no record of
NAME (a typo: 'acount-k1' for 'account-k1') is refused before anything is
written, NOT_IN_EXPORT naming it and what the export holds, as restore's
NOT_IN_ARCHIVE; through a server and with --database-url, on SQLite.
Before: silently ignored, and with --overwrite the aggregate it was meant
to protect was replaced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_import_what_commands_could_carry import jsonl
from tests.support.import_claims import chronicle
from tests.support.processes import cli, server_process

IDS = ("4a1b0000-0000-4000-8000-00000000000a", "4a1b0000-0000-4000-8000-00000000000b")


def export(tmp_path: Path) -> Path:
    return jsonl(tmp_path / "k.jsonl", (IDS[0], "account-k1", "ann"), (IDS[1], "account-k2", "bob"))


def exported_ids(url: str, tmp_path: Path) -> list[str]:
    out = tmp_path / "now.jsonl"
    chronicle("export", str(out), "--database-url", url, "--quiet")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return [record["event"]["event"]["aggregate_id"] for record in records if "event" in record]


@pytest.mark.parametrize("through", ["database-url", "server"])
def test_a_leave_out_name_the_export_does_not_hold_is_refused_before_anything_is_written(
    tmp_path: Path, through: str
) -> None:
    url = f"sqlite:///{tmp_path}/chronicle.db"
    chronicle("import", str(jsonl(tmp_path / "empty.jsonl")), "--quiet", "--database-url", url)  # the schema
    with server_process(url, extra=["--anonymous-admin"]) as server:
        for overwrite in ((), ("--overwrite",)):
            args = ("import", str(export(tmp_path)), "--quiet", "--leave-out", "acount-k1", *overwrite)
            if through == "server":
                done = cli(*args, server=server.address, check=False)
            else:
                done = chronicle(*args, "--database-url", url, check=False)
            assert (done.returncode, done.stdout) == (2, ""), done.stderr
            assert done.stderr.startswith("error: NOT_IN_EXPORT: --leave-out 'acount-k1': "), done.stderr
            assert "(it holds account-k1, account-k2)" in done.stderr and "nothing was imported" in done.stderr
            assert exported_ids(url, tmp_path) == []

        args = ("import", str(export(tmp_path)), "--quiet", "--leave-out", "account-k1")
        done = cli(*args, server=server.address) if through == "server" else chronicle(*args, "--database-url", url)
        assert json.loads(done.stdout)["events_written"] == 1
        assert exported_ids(url, tmp_path) == ["account-k2"]


def test_standard_input_is_checked_at_its_end_and_an_overwrite_writes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chronicle.db"
    chronicle("import", str(jsonl(tmp_path / "empty.jsonl")), "--quiet", "--database-url", url)
    command = [sys.executable, "-m", "service", "import", "-", "--quiet", "--database-url", url]
    done = subprocess.run(
        [*command, "--overwrite", "--leave-out", "acount-k1"],
        input=export(tmp_path).read_text(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=os.environ.copy(),
    )
    assert done.returncode == 2 and "NOT_IN_EXPORT: --leave-out 'acount-k1': the stream holds no" in done.stderr, (
        done.stderr
    )
    assert exported_ids(url, tmp_path) == []
