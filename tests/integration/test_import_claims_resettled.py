"""The claims of an import's aggregates are settled after its events are
written, in transactions of their own (service/transfer/claims.py): an
import that fails between the two (the store gone, the process dead) leaves
the events written and the values their state declares not held. Running
the same import again settles them: every run settles every aggregate the
stream brought, whether its events were written now or before
(docs/migration.md, "Uniqueness: claims").

The failure is injected in the real database, through a real server
process on SQLite and PostgreSQL: every write of a claim fails, as the
store's outage would, until the test lets them through again."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.integration.test_import_claims import USERS_BY_HAND, hand_written
from tests.support.import_claims import empty_store, refused_not_unique, register
from tests.support.postgres import Cluster
from tests.support.processes import cli, server_process

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(params=["sqlite", "postgresql"])
def target_url(request: pytest.FixtureRequest, pg_cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    with empty_store(request.param, pg_cluster, tmp_path) as url:
        yield url


def claims_fail(url: str, *, failing: bool) -> None:
    """Make every write of a claim fail (or pass again): on SQLite, a
    trigger that cannot be prepared (SQLite says so, as for an unreadable
    file); on PostgreSQL, one raising a lock timeout (55P03)."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None) as db:
            if failing:
                db.execute("CREATE TRIGGER no_claims BEFORE INSERT ON claims BEGIN SELECT no_such_function(); END")
            else:
                db.execute("DROP TRIGGER no_claims")
        return
    with psycopg.connect(url, autocommit=True) as conn:
        if failing:
            conn.execute(
                "CREATE FUNCTION public.no_claims() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '55P03'; END $$;"
                " CREATE TRIGGER no_claims BEFORE INSERT ON chronicle.claims"
                " FOR EACH ROW EXECUTE FUNCTION public.no_claims()"
            )
        else:
            conn.execute("DROP TRIGGER no_claims ON chronicle.claims")


def claims_held(url: str) -> int:
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            return int(db.execute("SELECT count(*) FROM claims").fetchone()[0])
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM chronicle.claims").fetchone()
    return int(row[0]) if row else 0


def test_claims_left_unsettled_by_a_failed_import_are_settled_by_running_it_again(
    target_url: str, tmp_path: Path
) -> None:
    export = hand_written(tmp_path / "users.jsonl", *USERS_BY_HAND)
    with server_process(target_url, extra=["--anonymous-admin"]) as server:
        claims_fail(target_url, failing=True)
        failed = cli("import", str(export), server=server.address, check=False)
        assert failed.returncode != 0 and "UNAVAILABLE" in failed.stderr, failed.stderr
        assert "run the same import again to settle them" in failed.stderr, failed.stderr
        # The window: the events are in, and lee@'s address is held by no one.
        assert [
            json.loads(line)["version"] for line in cli("read", "user-lee", server=server.address).stdout.splitlines()
        ]
        assert claims_held(target_url) == 0

        claims_fail(target_url, failing=False)
        again = json.loads(cli("import", str(export), server=server.address).stdout)
        assert (again["events_written"], again["events_skipped"]) == (0, len(USERS_BY_HAND))
        assert (again["claims_derived"], again["claims_written"]) == (1, 1)
        assert refused_not_unique(register(server.address, "user-lee2", "lee@example.com"))
