"""The command line's file-taking commands when something is wrong: each
says what, in one `error:` line (a reason a script can match on), exits
with a status that tells usage (2) from a refusal (1), and writes nothing.
The command line runs in-process (``cli.main``) against a server on the
memory store."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service import cli
from service.store.encryption import MasterKeys, new_master_key
from service.store.key_names import humanized, key_owner
from service.store.memory import MemoryStore
from service.store.records import DataKey, LogFilter
from tests.support.grpc_client import command, running_server


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``chronicle ARGV``: its exit status, standard output and standard error."""
    status = await asyncio.to_thread(cli.main, list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


async def test_restoring_an_aggregate_the_archive_does_not_hold_says_so_and_restores_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the fix: exit 0, nothing written, nothing said."""
    store = MemoryStore()
    keys = f"k1:{new_master_key()}"  # claims scopes and read models have data keys: not aggregates of the file
    async with running_server(store, anonymous_admin=True, master_keys=keys) as (app, client):
        for account in ("acc-1", "acc-2"):
            await client.submit(command(account, bank.OpenAccount(owner="ann")))
        whole = str(tmp_path / "whole.chronicle")
        assert (await run(capsys, "export", whole, "--server", app.address))[0] == 0
        at = ("--server", app.address)
        status, out, _ = await run(capsys, "archive", str(tmp_path), "--type", "Account", "--untouched-for", "0s", *at)
        archive = json.loads(out)["file"]
        assert status == 0 and json.loads(out)["archived"] == ["acc-1", "acc-2"]
        log = (await store.read_log(0, LogFilter(), 100)).events

        status, out, err = await run(
            capsys, "restore", archive, "--aggregate", "acc-1", "--aggregate", "acc-nothere", *at
        )
        assert (status, out) == (2, "")
        assert err.startswith(f"error: NOT_IN_ARCHIVE: 'acc-nothere' is not in the archive {archive}"), err
        assert "it holds acc-1, acc-2" in err and "nothing was restored" in err
        assert (await store.read_log(0, LogFilter(), 100)).events == log  # acc-1 was not restored either

        status, out, err = await run(capsys, "restore", archive, "--aggregate", "acc-1", *at)
        assert (status, json.loads(out)["events_written"]) == (0, 1)
        # A whole export (its header names no aggregates) is read through for them.
        status, out, err = await run(capsys, "restore", whole, "--aggregate", "acc-9", *at)
        assert (status, out) == (2, "")
        assert "'acc-9' is not in the archive" in err and "it holds acc-1, acc-2)" in err, err


async def test_a_file_or_folder_that_cannot_be_used_is_one_error_line_and_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the fix `chronicle export /nonexistent/dir/x.chronicle`
    printed FileNotFoundError's traceback (exit 1); so did import and
    restore of a file that is not there, and archive into a file."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    missing = tmp_path / "missing.chronicle"
    async with running_server(MemoryStore(), anonymous_admin=True) as (app, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        at = ("--server", app.address)
        cases = [
            (
                ("export", "/nonexistent/dir/x.chronicle"),
                "FILE_NOT_WRITABLE",
                "the folder /nonexistent/dir does not exist",
            ),
            (("export", str(tmp_path)), "FILE_NOT_WRITABLE", "it is a folder"),
            (("export", f"{a_file}/x.chronicle"), "FILE_NOT_WRITABLE", f"{a_file} is not a folder"),
            (("import", str(missing)), "FILE_NOT_READABLE", "no such file or directory"),
            (("import", "/nonexistent/x.chronicle"), "FILE_NOT_READABLE", "the folder /nonexistent does not exist"),
            (("import", str(tmp_path)), "FILE_NOT_READABLE", "it is a folder"),
            (("restore", str(missing), "--aggregate", "acc-1"), "FILE_NOT_READABLE", "no such file"),
            (("restore", str(missing)), "FILE_NOT_READABLE", "no such file"),
            (("archive", str(a_file), "--type", "Account"), "FILE_NOT_WRITABLE", "it is a file, not a folder"),
            (("health", "--tls-ca", str(tmp_path / "ca.pem")), "FILE_NOT_READABLE", "no such file or directory"),
        ]
        for argv, reason, why in cases:
            status, out, err = await run(capsys, *argv, *at)
            assert (status, out) == (2, ""), (argv, err)
            assert err.startswith(f"error: {reason}: cannot "), (argv, err)
            assert why in err and "Traceback" not in err, (argv, err)
        assert not [name for name in os.listdir(tmp_path) if name.endswith(".partial")]


MAPPINGS = {
    "nowhere_mapping:to_chronicle": ("", "there is no module 'nowhere_mapping' in the current folder"),
    "no_colon_mapping": ("", "give it as module:function"),
    "broken_mapping:to_chronicle": ("def to_chronicle(event:\n", "broken_mapping.py, line 1): SyntaxError"),
    "needy_mapping:to_chronicle": (
        "import not_installed_anywhere\n",
        "its module failed to load (",
    ),
    "empty_mapping:to_chronicle": ("X = 1\n", "module 'empty_mapping' has no 'to_chronicle'"),
    "value_mapping:X": ("X = 1\n", "'X' in 'value_mapping' is not a function"),
}


@pytest.mark.parametrize("mapping", sorted(MAPPINGS))
def test_a_mapping_that_does_not_load_is_one_error_line_and_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, mapping: str
) -> None:
    """Before the fix, each of these was a Python traceback (exit 1)."""
    source, said = MAPPINGS[mapping]
    if source:
        (tmp_path / f"{mapping.partition(':')[0]}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    argv = ("convert-eventsourcing", "out.chronicle", "--from-url", "postgresql://unused", "--table", "t")
    status = cli.main([*argv, "--mapping", mapping])
    out, err = capsys.readouterr()
    assert (status, out) == (2, "")
    assert err.startswith(f"error: MAPPING_NOT_LOADED: cannot load the mapping {mapping!r}: "), err
    assert said in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.chronicle").exists()


def test_an_eventsourcing_database_that_does_not_answer_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: psycopg's OperationalError as a traceback."""
    argv = ["convert-eventsourcing", str(tmp_path / "out.chronicle"), "--from-url", "postgresql://127.0.0.1:1/app"]
    status = cli.main([*argv, "--table", "bank_events", "--mapping", "tests.support.eventsourcing_bank:to_chronicle"])
    out, err = capsys.readouterr()
    assert (status, out) == (1, "")
    assert err.startswith("error: SOURCE_UNAVAILABLE: cannot reach the eventsourcing application's PostgreSQL: "), err
    assert "Traceback" not in err and not (tmp_path / "out.chronicle").exists()


async def test_rewrap_keys_names_a_key_it_cannot_unwrap_as_a_person_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the fix: "the data key of '\\x1fclaims:users.email' is wrapped
    by master key 'k1', which is not configured", the internal id of the
    claims scope's key as Python's repr() writes it."""
    old = MasterKeys.parse(f"k1:{new_master_key()}", source="test")
    new = f"k2:{new_master_key()}"
    store = MemoryStore()
    for key_id in ("\x1fclaims:users.email", "\x1fprojection:bank.balances_by_owner"):
        await store.create_data_key(DataKey(key_id, *old.wrap(os.urandom(32))))
    # One key the given master key opens: the server starts (a store none of
    # whose keys it opens is refused at start-up, test_master_key_checks).
    await store.create_data_key(DataKey("acc-1", *MasterKeys.parse(new, source="test").wrap(os.urandom(32))))
    async with running_server(store, anonymous_admin=True, master_keys=new) as (app, _):
        status, out, err = await run(capsys, "rewrap-keys", "--server", app.address)
    assert (status, out) == (1, "")
    assert err.startswith(
        "error: FAILED_PRECONDITION MASTER_KEY_MISSING: the data key of the uniqueness claims of scope 'users.email' is"
        " wrapped by master key 'k1', which is not configured; put that master key back in the master-key file"
    ), err
    assert "\\x1f" not in err and "\x1f" not in err


async def test_rewrap_keys_says_a_missing_tenant_key_is_the_tenants_and_how_to_fix_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before the fix: the shared keys' advice alone (put it back, rewrap),
    which would have an operator restore a key destroyed on purpose; now
    whose key it is, and put back or marked destroyed, over a real server."""
    shared = f"k1:{new_master_key()}"
    with_acme = MasterKeys.parse(f"{shared}\nacme:2026-01:{new_master_key()}", source="test")
    store = MemoryStore()
    await store.create_data_key(DataKey("acme:acc-1", *with_acme.wrap(os.urandom(32), "acme:acc-1")))
    await store.create_data_key(DataKey("acc-1", *with_acme.wrap(os.urandom(32), "acc-1")))  # one that opens
    async with running_server(store, anonymous_admin=True, master_keys=shared) as (app, _):
        status, out, err = await run(capsys, "rewrap-keys", "--server", app.address)
    assert (status, out) == (1, "")
    assert err.startswith(
        "error: FAILED_PRECONDITION MASTER_KEY_MISSING: the data key of 'acme:acc-1' is wrapped by master"
        " key 'acme:2026-01', which is not configured: 'acme:2026-01' is a key of tenant 'acme': put it back in"
        " the master-key file (acme:2026-01:BASE64, the bytes it had), or, if the tenant was shredded on purpose,"
        " mark it destroyed there (acme:2026-01:destroyed)"
    ), err
    assert "rewrap-keys answers 0" in err and "after the active one, which rewraps" not in err, err


def test_internal_key_ids_are_said_as_whose_key_they_are() -> None:
    assert key_owner("acc-1") == "aggregate 'acc-1'"
    assert key_owner("\x1fclaims:users.email") == "the uniqueness claims of scope 'users.email'"
    assert key_owner("\x1fprojection:bank.balances") == "the read model 'bank.balances'"
    claims = "\x1fclaims:users.email"
    said = humanized(f"of {claims!r} and of \x1fprojection:bank.balances, not of 'acc-1'")
    assert (
        said == "of the uniqueness claims of scope 'users.email' and of the read model 'bank.balances', not of 'acc-1'"
    )
