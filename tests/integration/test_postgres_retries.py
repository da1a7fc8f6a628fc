"""An operation PostgreSQL rolls back whole to let others go on (a
deadlock's victim, 40P01; a serialization failure, 40001) is sent again by
``Database.run``, up to ``ROLLBACK_ATTEMPTS`` times in all, then fails with
``StoreUnavailable`` (``CONTENTION``); any other error is not sent again.

Attempts are counted with a sequence: ``nextval`` is never rolled back, so
each attempt of an operation that starts with one leaves its mark."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import psycopg
import pytest

from service.errors import CONTENTION, STORE_BUSY, StoreUnavailable
from service.store.postgres import database
from service.store.postgres.connection import Statement
from service.store.postgres.database import ROLLBACK_ATTEMPTS, Database
from service.store.postgres.errors import UniqueViolation

pytestmark = pytest.mark.postgres

SCRATCH = """
CREATE TABLE scratch (id text PRIMARY KEY, n integer NOT NULL);
INSERT INTO scratch VALUES ('a', 0), ('b', 0);
CREATE TABLE effects (operation text NOT NULL);
CREATE SEQUENCE attempts;
CREATE FUNCTION fail(code text) RETURNS void LANGUAGE plpgsql AS
  $$ BEGIN RAISE EXCEPTION 'failing with %', code USING ERRCODE = code; END $$;
"""
COUNT = Statement(b"SELECT nextval('attempts')")


@pytest.fixture
def scratch(postgres_url: str) -> str:
    """The test's database with a scratch table, an attempt counter and a
    function that raises any SQLSTATE."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(SCRATCH)
    return postgres_url


async def _opened(url: str) -> Database:
    db = Database(url, connections=1, connect_timeout=5.0, lock_timeout=30.0)
    await db.open()
    await db.ping()
    return db


@pytest.fixture
async def db(scratch: str) -> AsyncIterator[Database]:
    opened = await _opened(scratch)
    try:
        yield opened
    finally:
        await opened.close()


def _attempts(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM attempts").fetchone()
    return int(row[0]) if row else 0


def _touch(operation: str, first: str, then: str) -> list[Statement]:
    """Lock row ``first``, pause (so the other operation locks its first
    row meanwhile), then lock row ``then``; record the operation's effect."""
    update = b"UPDATE scratch SET n = n + 1 WHERE id = $1"
    return [
        COUNT,
        Statement(update, (first,)),
        Statement(b"SELECT pg_sleep(0.3)"),
        Statement(update, (then,)),
        Statement(b"INSERT INTO effects VALUES ($1)", (operation,)),
    ]


async def test_both_operations_of_a_deadlock_end_and_apply_once(scratch: str, caplog: pytest.LogCaptureFixture) -> None:
    # One Database each: operations on one connection run one after the
    # other, and would never meet.
    first, second = await _opened(scratch), await _opened(scratch)
    try:
        caplog.set_level(logging.INFO, logger=database.__name__)
        await asyncio.gather(
            first.run("deadlock-ab", _touch("ab", "a", "b")),
            second.run("deadlock-ba", _touch("ba", "b", "a")),
        )
    finally:
        await first.close()
        await second.close()
    with psycopg.connect(scratch, autocommit=True) as conn:
        assert conn.execute("SELECT id, n FROM scratch ORDER BY id").fetchall() == [("a", 2), ("b", 2)]
        assert conn.execute("SELECT operation FROM effects ORDER BY operation").fetchall() == [("ab",), ("ba",)]
    assert _attempts(scratch) == 3  # one of them was the deadlock's victim, and sent once more
    retried = [r.getMessage() for r in caplog.records if "rolled back" in r.getMessage()]
    assert len(retried) == 1, retried
    assert "deadlock-" in retried[0] and "40P01" in retried[0] and "attempt 2 of" in retried[0]


@pytest.mark.parametrize("read_only", [False, True])
@pytest.mark.parametrize("code", ["40P01", "40001"])
async def test_an_operation_rolled_back_every_time_fails_with_contention_after_every_attempt(
    db: Database, scratch: str, code: str, read_only: bool
) -> None:
    with pytest.raises(StoreUnavailable) as raised:
        await db.run("always-aborted", [COUNT, Statement(b"SELECT fail($1)", (code,))], read_only=read_only)
    assert (raised.value.reason, raised.value.message) == (CONTENTION, STORE_BUSY)
    # The driver's words, for the server's log alone (service/api/status.py).
    assert "always-aborted" in raised.value.detail and code in raised.value.detail
    assert f"{ROLLBACK_ATTEMPTS} attempts" in raised.value.detail
    assert _attempts(scratch) == ROLLBACK_ATTEMPTS
    assert isinstance(raised.value.__cause__, psycopg.Error) and raised.value.__cause__.sqlstate == code


async def test_an_operation_rolled_back_once_succeeds_on_the_next_attempt(db: Database, scratch: str) -> None:
    # Fails while the counter is at 1 (its first attempt), not after.
    flaky = b"SELECT CASE WHEN currval('attempts') = 1 THEN fail('40001') END"
    statements = [COUNT, Statement(b"UPDATE scratch SET n = n + 1 WHERE id = 'a'"), Statement(flaky)]
    await db.run("flaky", statements)
    assert _attempts(scratch) == 2
    with psycopg.connect(scratch, autocommit=True) as conn:
        assert conn.execute("SELECT n FROM scratch WHERE id = 'a'").fetchone() == (1,)


@pytest.mark.parametrize(
    ("code", "raised"),
    [
        ("23505", UniqueViolation),  # a constraint: the store's caller decides
        ("55P03", StoreUnavailable),  # a lock wait timed out: waiting again would double it
        ("40002", StoreUnavailable),  # class 40, but an integrity constraint
        ("40003", StoreUnavailable),  # class 40, but the outcome is unknown
        ("P0001", psycopg.errors.RaiseException),  # a plain RAISE: not a database condition
    ],
)
async def test_other_errors_are_not_sent_again(
    db: Database, scratch: str, code: str, raised: type[BaseException]
) -> None:
    with pytest.raises(raised) as error:
        await db.run("other-error", [COUNT, Statement(b"SELECT fail($1)", (code,))])
    assert _attempts(scratch) == 1
    if isinstance(error.value, StoreUnavailable):
        assert error.value.reason != CONTENTION


async def test_a_real_unique_violation_is_not_sent_again(db: Database, scratch: str) -> None:
    with pytest.raises(UniqueViolation) as raised:
        await db.run("duplicate", [COUNT, Statement(b"INSERT INTO scratch VALUES ('a', 9)")])
    assert raised.value.constraint == "scratch_pkey"
    assert _attempts(scratch) == 1
