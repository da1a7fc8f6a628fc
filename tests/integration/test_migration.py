"""docs/migration.md, from SQLite to PostgreSQL, step by step as an operator
runs it: a store with every kind of content (events, snapshots, claims,
command records, a projection, payloads encrypted at rest, a forgotten
aggregate) exported from the SQLite file with the server stopped, imported
into PostgreSQL, and served from there with the same master keys."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from service.store.encryption import is_sealed_fingerprint, new_master_key
from service.store.imported import IMPORTED_KEY
from tests.support.processes import cli, server_process
from tests.support.security import write
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


async def test_a_store_with_every_kind_of_content_moves_from_sqlite_to_postgresql(
    tmp_path: Path, postgres_url: str
) -> None:
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    extra = ["--master-key-file", keys, "--anonymous-admin", "--snapshot-every", "2"]
    old_url = f"sqlite:///{tmp_path}/chronicle.db"
    retried_id = "6f9d3c52-0b1e-4a51-9d0e-6f1a7d0b2c11"
    with server_process(old_url, extra=extra) as old:
        at = old.address
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=at)
        cli("submit", "acc-1", "bank.v1.Deposit", '{"amount": 70}', "--command-id", retried_id, server=at)
        cli("submit", "acc-2", "bank.v1.OpenAccount", '{"owner": "ann"}', server=at)
        cli("submit", "acc-2", "bank.v1.Deposit", '{"amount": 5}', server=at)
        cli("submit", "u-1", "users.v1.RegisterUser", '{"email": "ann@example.com", "name": "Ann"}', server=at)
        cli("submit", "u-1", "users.v1.ChangeEmail", '{"email": "ann@example.org"}', server=at)

        def owner_balance() -> bool:
            found = cli("projection", "bank.balances_by_owner", "owner:ann", server=at, check=False)
            return found.returncode == 0 and json.loads(found.stdout)["document"].get("balance") == "75"

        await eventually(owner_balance, what="the read model on the old store")
        projected = json.loads(cli("projection", "bank.balances_by_owner", "owner:ann", server=at).stdout)["document"]
        cli("forget", "acc-2", server=at)
        before = {
            "acc-1": lines(cli("read", "acc-1", server=at).stdout),
            "acc-2": lines(cli("read", "acc-2", server=at).stdout),
            "u-1": json.loads(cli("get", "u-1", server=at).stdout),
        }
    assert before["acc-2"][0]["redacted"] is True and before["acc-2"][0]["payload"] is None

    # The server is stopped: export the file, import into PostgreSQL.
    export = tmp_path / "store.chronicle"
    cli("export", str(export), "--snapshots", "--commands", "--database-url", old_url, server="unused:1")
    # With the servers' master keys: without, an encrypted export is refused (ENCRYPTED_EXPORT_WITHOUT_KEYS).
    importing = ("import", str(export), "--database-url", postgres_url, "--master-key-file", keys)
    moved = json.loads(cli(*importing, server="unused:1").stdout)
    assert (moved["events_written"], moved["claims_written"], moved["snapshots_written"]) == (6, 1, 1)
    # acc-1's, u-1's, acc-2's tombstone and the claims scope's: not the read model's, made again here
    assert moved["data_keys_written"] == 4
    again = json.loads(cli(*importing, server="unused:1").stdout)
    assert (again["events_written"], again["events_skipped"]) == (0, 6)

    with psycopg.connect(postgres_url) as conn:
        payloads = [bytes(p) for (p,) in conn.execute("SELECT payload FROM chronicle.events").fetchall()]
        documents = conn.execute("SELECT count(*) FROM chronicle.projection_documents").fetchone()
        row = conn.execute("SELECT fingerprint FROM chronicle.commands WHERE command_id = %s", (retried_id,)).fetchone()
        assert row is not None
        (fingerprint,) = row
    assert all(p.startswith(b"\x00C1") for p in payloads)  # still sealed at rest
    assert is_sealed_fingerprint(bytes(fingerprint))  # the command's fingerprint too
    assert documents == (0,)  # read models are rebuilt, not moved

    with server_process(postgres_url, extra=extra) as new:
        at = new.address
        after_acc_1 = lines(cli("read", "acc-1", server=at).stdout)
        unplaced = [{k: v for k, v in e.items() if k != "position"} for e in after_acc_1]
        assert unplaced == [
            {
                **{k: v for k, v in e.items() if k != "position"},
                "metadata": {**e.get("metadata", {}), IMPORTED_KEY: "true"},
            }
            for e in before["acc-1"]
        ]
        assert json.loads(cli("get", "u-1", server=at).stdout) == before["u-1"]  # from the moved snapshot
        # Forgotten stays forgotten.
        assert [e["redacted"] for e in lines(cli("read", "acc-2", server=at).stdout)] == [True, True]
        forgotten = cli("get", "acc-2", server=at, check=False)
        assert "FAILED_PRECONDITION AGGREGATE_FORGOTTEN" in forgotten.stderr
        # The claim moved: the address is taken; the released one is free.
        taken = cli(
            "submit",
            "u-2",
            "users.v1.RegisterUser",
            '{"email": "ann@example.org", "name": "X"}',
            server=at,
            check=False,
        )
        assert "NOT_UNIQUE" in taken.stderr
        cli("submit", "u-3", "users.v1.RegisterUser", '{"email": "ann@example.com", "name": "Y"}', server=at)
        # The command records moved: a retry is answered, not run again.
        retried = cli("submit", "acc-1", "bank.v1.Deposit", '{"amount": 70}', "--command-id", retried_id, server=at)
        assert json.loads(retried.stdout)["replayed"] is True
        # The read model is rebuilt from the moved log (the forgotten account's events left out).

        def rebuilt() -> bool:
            found = cli("projection", "bank.balances_by_owner", "owner:ann", server=at, check=False)
            return found.returncode == 0 and json.loads(found.stdout)["document"].get("balance") == "70"

        await eventually(rebuilt, what="the read model rebuilt on PostgreSQL")
        document = json.loads(cli("projection", "bank.balances_by_owner", "owner:ann", server=at).stdout)["document"]
        assert document["account_ids"] == ["acc-1"]
        assert projected["account_ids"] == ["acc-1", "acc-2"]
