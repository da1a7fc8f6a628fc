"""`chronicle archive`, `restore` and `delete` as an operator types them:
closed accounts go to an archive file and become tombstones, open ones
stay, and restore brings one back as it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.cli import _file_name_part
from service.store.imported import IMPORTED_KEY
from tests.support.processes import cli, server_process

pytestmark = pytest.mark.slow


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_closed_accounts_are_archived_and_one_is_restored(tmp_path: Path) -> None:
    with server_process(f"sqlite:///{tmp_path}/events.db", extra=["--anonymous-admin"]) as server:
        at = server.address
        for account in ("acc-1", "acc-2", "acc-3"):
            cli("submit", account, "bank.v1.OpenAccount", '{"owner": "ann"}', server=at)
            cli("submit", account, "bank.v1.Deposit", '{"amount": 5}', server=at)
        for account in ("acc-1", "acc-3"):
            cli("submit", account, "bank.v1.Withdraw", '{"amount": 5}', server=at)
            cli("submit", account, "bank.v1.CloseAccount", server=at)
        before = lines(cli("read", "acc-1", server=at).stdout)

        # Untouched for a year: nothing yet.
        none = json.loads(
            cli("archive", str(tmp_path / "archive"), "--type", "Account", "--untouched-for", "365d", server=at).stdout
        )
        assert none == {"file": None, "archived": [], "changed": []}
        done = json.loads(
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
        assert (done["archived"], done["changed"]) == (["acc-1", "acc-3"], [])
        archive = Path(done["file"])
        assert archive.parent == tmp_path / "archive" and archive.exists()
        (tombstone,) = lines(cli("read", "acc-1", server=at).stdout)
        assert tombstone["deleted"] is True and tombstone["payload"]["archive"] == archive.name
        assert lines(cli("read", "acc-2", server=at).stdout)[-1]["version"] == "2"  # open: kept
        refused = cli("submit", "acc-1", "bank.v1.Deposit", '{"amount": 1}', server=at, check=False)
        assert "FAILED_PRECONDITION AGGREGATE_DELETED" in refused.stderr

        restored = json.loads(cli("restore", str(archive), "--aggregate", "acc-1", server=at).stdout)
        assert (restored["events_written"], restored["aggregates_replaced"]) == (4, 1)
        after = lines(cli("read", "acc-1", server=at).stdout)
        unplaced = [{k: v for k, v in e.items() if k != "position"} for e in after]
        assert unplaced == [
            {
                **{k: v for k, v in e.items() if k != "position"},
                "metadata": {**e.get("metadata", {}), IMPORTED_KEY: "true"},
            }
            for e in before
        ]
        state = json.loads(cli("get", "acc-1", server=at).stdout)
        assert state["version"] == 4
        assert lines(cli("read", "acc-3", server=at).stdout)[0]["deleted"] is True  # not restored
        again = json.loads(cli("restore", str(archive), "--aggregate", "acc-1", server=at).stdout)
        assert (again["events_written"], again["events_skipped"]) == (0, 4)

        deleted = json.loads(cli("delete", "acc-2", "--reason", "test", "--expected-version", "2", server=at).stdout)
        assert deleted == {
            "aggregate_id": "acc-2",
            "already_deleted": False,
            "events_deleted": 2,
            "tombstone_version": 3,
        }


@pytest.mark.parametrize("type_name", ["Nope", "../../escaped", "/tmp/abs"])
def test_archiving_a_type_no_plugin_declares_is_refused_before_any_file_is_made(tmp_path: Path, type_name: str) -> None:
    """It used to print {"file": null, "archived": []} and exit 0, and a type
    with slashes went into the file's path before the server judged it."""
    folder = tmp_path / "deep" / "archive"
    with server_process(f"sqlite:///{tmp_path}/events.db", extra=["--anonymous-admin"]) as server:
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address)
        refused = cli("archive", str(folder), "--type", type_name, server=server.address, check=False)
    assert refused.returncode == 1 and refused.stdout == ""
    (line,) = refused.stderr.splitlines()
    assert line.startswith("error: INVALID_ARGUMENT UNKNOWN_AGGREGATE_TYPE: rule.aggregate_type: no loaded plugin")
    assert not (tmp_path / "deep").exists()  # not even the folder
    assert sorted(path.name for path in tmp_path.rglob("*") if "archive" in path.name) == []


def test_a_retired_type_the_store_still_holds_is_archived(tmp_path: Path) -> None:
    """A type whose plugin is no longer loaded is what archiving is for:
    only a type neither declared nor stored is refused."""
    database = f"sqlite:///{tmp_path}/events.db"
    with server_process(database, extra=["--anonymous-admin"]) as server:
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address)
    retired = ["--anonymous-admin", "--no-discover-plugins", "--plugin", "domain_plugins.box:plugin"]
    with server_process(database, extra=retired) as server:
        done = json.loads(cli("archive", str(tmp_path / "archive"), "--type", "Account", server=server.address).stdout)
    assert done["archived"] == ["acc-1"] and Path(done["file"]).exists()


def test_the_archive_file_name_keeps_only_safe_characters_of_the_type() -> None:
    assert _file_name_part("Account") == "Account"
    assert _file_name_part("bank.Account_2") == "bank.Account_2"
    for hostile in ("../../x", "/etc/passwd", "a/b", "..", "a\\b", "a\x00b", "Konto\u00e4"):
        part = _file_name_part(hostile)
        assert "/" not in part and "\\" not in part and not part.startswith(".") and part.isascii(), hostile
        assert (Path("/folder") / f"archive-{part}-1.chronicle").parent == Path("/folder"), hostile


def test_with_authentication_on_restore_and_import_send_the_token(tmp_path: Path) -> None:
    # Both stream their requests (ImportLog): the CLI's token must ride on a
    # client-streaming call too, or an operator could archive an aggregate
    # and never restore it over the API.
    from tests.support.security import POLICY, api_key_file, write

    key = "chr_root-key-for-the-cli-test-0000000000"
    keys = api_key_file(tmp_path / "keys.toml", [(key, "root", ["teller"])])  # operator (admin) and teller
    extra = ["--auth", "--policy-file", write(tmp_path / "policy.toml", POLICY), "--api-keys-file", keys]
    token = ("--token", key)
    with server_process(f"sqlite:///{tmp_path}/events.db", extra=extra) as server:
        at = server.address
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', *token, server=at)
        cli("submit", "acc-1", "bank.v1.Deposit", '{"amount": 5}', *token, server=at)
        archived = json.loads(
            cli(
                "archive", str(tmp_path / "archive"), "--type", "Account", "--untouched-for", "0s", *token, server=at
            ).stdout
        )
        assert archived["archived"] == ["acc-1"]
        restored = json.loads(cli("restore", archived["file"], "--aggregate", "acc-1", *token, server=at).stdout)
        assert restored["events_written"] == 2
        cli("export", str(tmp_path / "all.chronicle"), *token, server=at)
    with server_process(f"sqlite:///{tmp_path}/other.db", extra=extra) as other:
        imported = json.loads(cli("import", str(tmp_path / "all.chronicle"), *token, server=other.address).stdout)
        assert imported["events_written"] >= 2
        state = json.loads(cli("get", "acc-1", *token, server=other.address).stdout)
    assert state["version"] == 2


def test_an_archive_of_encrypted_accounts_holds_no_key_and_a_forget_makes_it_unreadable(tmp_path: Path) -> None:
    # The archive held each aggregate's wrapped data key: to anyone with it
    # and a master key, a forgotten account's archived events stayed
    # readable. The keys now stay in the store (a deletion keeps them).
    import sqlite3

    from service.store.encryption import new_master_key
    from tests.support.security import write

    owner = "Zelda Quartermain-Oyelaran"
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    extra = ["--anonymous-admin", "--master-key-file", keys]
    database = tmp_path / "events.db"
    with server_process(f"sqlite:///{database}", extra=extra) as server:
        at = server.address
        for account in ("acc-1", "acc-2"):
            cli("submit", account, "bank.v1.OpenAccount", json.dumps({"owner": owner}), server=at)
            cli("submit", account, "bank.v1.CloseAccount", server=at)
        with sqlite3.connect(database) as db:
            wrapped = {a: bytes(k) for a, k in db.execute("SELECT aggregate_id, wrapped_key FROM data_keys")}
        # acc-2 as an archive of an older version held it: with its data key (format version 1).
        cli("export", str(tmp_path / "acc-2.chronicle"), "--aggregate", "acc-2", server=at)
        old = (tmp_path / "acc-2.chronicle").read_bytes()
        assert wrapped["acc-2"] in old

        done = json.loads(cli("archive", str(tmp_path / "archive"), "--type", "Account", server=at).stdout)
        assert done["archived"] == ["acc-1", "acc-2"]
        archive = Path(done["file"])
        held = archive.read_bytes()
        assert owner.encode() not in held  # sealed as stored
        assert wrapped["acc-1"] not in held and wrapped["acc-2"] not in held  # and nothing in it opens them
        whole = lines(cli("export", "-", "--format", "jsonl", server=at).stdout)
        assert whole[0]["header"]["format_version"] == 1  # a whole export still carries every aggregate's key
        assert {r["data_key"]["aggregate_id"] for r in whole if "data_key" in r} >= {"acc-1", "acc-2"}

        # Restorable while the store holds the keys...
        cli("restore", str(archive), "--aggregate", "acc-1", server=at)
        assert lines(cli("read", "acc-1", server=at).stdout)[0]["payload"]["owner"] == owner
        # ... as an older archive is, keys and all.
        cli("delete", "acc-2", server=at)
        restored = json.loads(cli("restore", str(tmp_path / "acc-2.chronicle"), server=at).stdout)
        assert restored["events_written"] == 2

        again = json.loads(cli("archive", str(tmp_path / "again"), "--type", "Account", server=at).stdout)
        assert again["archived"] == ["acc-1", "acc-2"]
        cli("forget", "acc-1", server=at)
        refused = cli("restore", again["file"], "--aggregate", "acc-1", server=at, check=False)
        assert "AGGREGATE_FORGOTTEN" in refused.stderr
    # Nor does another store with the same master keys open it: the key is nowhere.
    with server_process(f"sqlite:///{tmp_path}/other.db", extra=extra) as other:
        refused = cli("restore", again["file"], "--aggregate", "acc-1", server=other.address, check=False)
        assert "FAILED_PRECONDITION DATA_KEY_NOT_IN_STORE" in refused.stderr
        nothing = cli("read", "acc-1", server=other.address, check=False)
        assert "AGGREGATE_NOT_FOUND" in nothing.stderr  # nothing of it was written
    assert wrapped["acc-1"] not in Path(again["file"]).read_bytes()
