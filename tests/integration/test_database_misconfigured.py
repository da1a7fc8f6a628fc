"""A PostgreSQL URL that is wrong, not a database that is away.

At start-up, a connection PostgreSQL refuses for a setting waiting does not
fix (a wrong password, 28P01; an unknown role, 28000; an unknown database,
3D000; a parameter libpq or the server rejects) stops the server: exit
status 2 and one line with a reason (``DATABASE_LOGIN_FAILED``,
``DATABASE_NOT_FOUND``, ``BAD_DATABASE_URL``), as a role without rights
does (``DATABASE_PERMISSION_DENIED``). It used to be retried for ever as an
outage (NOT_SERVING), the cause only in later warnings. A refused
connection (nothing listening) keeps the outage behaviour, its cause now in
the first warning. Once serving, a password changed under the server is
retried (it serves again once put right), and the first failure's log line
says waiting will not fix it. A libpq key=value string's password is never
echoed (BAD_DATABASE_URL).

A cluster of the test's own, which checks passwords (scram) for one role
(the suite's cluster trusts every connection)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest

from service.store.postgres import PostgresStore
from tests.support.grpc_client import running_server
from tests.support.postgres import Cluster, start_cluster
from tests.support.processes import free_port, serve_until_exit
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

ROLE, PASSWORD, WRONG = "checked", "right-one", "hunter2-wrong"


@pytest.fixture(scope="module")
def checked() -> Iterator[Cluster]:
    """A cluster of its own: role ``checked`` logs in with a password only."""
    cluster = start_cluster(own=True)
    try:
        assert cluster.datadir is not None
        hba = cluster.datadir / "pg_hba.conf"
        hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        cluster._ctl("reload")
        with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
            conn.execute(f"CREATE DATABASE {ROLE} OWNER {ROLE}")
        yield cluster
    finally:
        cluster.shutdown()


def url(cluster: Cluster, *, user: str = ROLE, password: str | None = PASSWORD, database: str = ROLE) -> str:
    where = urlsplit(cluster.admin_url)
    login = f"{user}:{password}" if password is not None else user
    return f"postgresql://{login}@{where.hostname}:{where.port}/{database}"


def refused(result: subprocess.CompletedProcess[str], reason: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"error: {reason}: "), lines[0]
    assert "not reachable yet" not in result.stderr
    return lines[0]


def test_a_wrong_password_stops_the_server_at_start_up(checked: Cluster) -> None:
    line = refused(serve_until_exit("--database-url", url(checked, password=WRONG)), "DATABASE_LOGIN_FAILED")
    assert f'password authentication failed for user "{ROLE}"' in line
    assert "waiting will not fix it" in line
    assert WRONG not in line


def test_an_unknown_role_and_an_unknown_database_stop_the_server(checked: Cluster) -> None:
    unknown_role = url(checked, user="nobody", password=None)
    line = refused(serve_until_exit("--database-url", unknown_role), "DATABASE_LOGIN_FAILED")
    assert 'role "nobody" does not exist' in line
    line = refused(serve_until_exit("--database-url", url(checked, database="missing")), "DATABASE_NOT_FOUND")
    assert 'database "missing" does not exist' in line


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("sslmode=bogus", "sslmode 'bogus' is none of"),
        ("frob=1", 'invalid URI query parameter: "frob"'),
        ("sslmode=require", "server does not support SSL"),
    ],
)
def test_a_bad_parameter_stops_the_server(checked: Cluster, query: str, said: str) -> None:
    line = refused(serve_until_exit("--database-url", f"{url(checked)}?{query}"), "BAD_DATABASE_URL")
    assert said in line
    assert PASSWORD not in line


def test_a_key_value_string_is_refused_without_its_password() -> None:
    result = serve_until_exit("--database-url", f"host=127.0.0.1 user={ROLE} password={WRONG} dbname=x")
    line = refused(result, "BAD_DATABASE_URL")
    assert "password=***" in line
    assert WRONG not in result.stderr + result.stdout


def test_nothing_listening_is_an_outage_and_the_first_warning_says_why() -> None:
    unreachable = f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{free_port()}/x"
    server = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--listen", "127.0.0.1:0", "--database-url", unreachable],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = server.stderr.readline()
            if "not reachable yet" in line:
                break
            assert line or server.poll() is None, "the server ended"
        else:
            pytest.fail("no 'not reachable yet' warning")
        assert "Connection refused" in line, line
        assert PASSWORD not in line
        time.sleep(0.5)
        assert server.poll() is None  # still up, NOT_SERVING until the database comes
    finally:
        server.terminate()
        server.wait(30)


async def test_a_password_changed_under_a_serving_server_is_retried_and_said_at_once(
    checked: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    store = PostgresStore(url(checked), pool_size=2)
    caplog.set_level(logging.INFO, logger="service.api.health")
    async with running_server(store, health_interval=0.1) as (app, _client):
        await eventually(lambda: app.health.serving, within=10, what="serving")
        with psycopg.connect(checked.admin_url, autocommit=True) as admin:
            admin.execute(f"ALTER ROLE {ROLE} PASSWORD 'changed'")
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (ROLE,))

            def warned() -> list[str]:
                return [r.getMessage() for r in caplog.records if "reporting NOT_SERVING" in r.getMessage()]

            await eventually(lambda: bool(warned()), within=20, what="the outage logged")
            (first,) = warned()
            assert "DATABASE_LOGIN_FAILED" in first and "password authentication failed" in first, first
            assert "waiting will not fix it" in first
            await asyncio.sleep(0.5)
            assert len(warned()) == 1  # once, at the first failure
            admin.execute(f"ALTER ROLE {ROLE} PASSWORD '{PASSWORD}'")
        await eventually(lambda: app.health.serving, within=20, what="serving again once the password is right")
