"""PostgreSQL's answer to "does this scope hold tenants' claims?"
(``holds_tenant_claims``, service/claim_scopes.py) under a linguistic
collation, and on an index: a database whose default collation is ICU's
English ignores the control character of a tenant's stored scope at first
(``members.email\\x1eacme`` sorts among ``members.emailacme``-like scopes), so
no page in (scope, value) order can be stopped at a scope's tenants; the
range is taken in the "C" collation, on migration 30's partial index."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest

from service.store.claim_scope_names import tenant_scope, tenant_scopes_range
from service.store.postgres import sql
from service.store.postgres.store import PostgresStore
from tests.support.postgres import Cluster

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres]

EMAIL = "members.email"


@pytest.fixture
def english_url(pg_cluster: Cluster) -> Iterator[str]:
    """A fresh database whose default collation is ICU's English."""
    name = f"chronicle_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.admin_url, autocommit=True) as conn:
        try:
            conn.execute(
                f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
            )
        except psycopg.Error as error:
            pytest.skip(f"this PostgreSQL has no ICU collations: {error}")
    url = pg_cluster.url_for(name)
    yield url
    pg_cluster.drop_database(url)


@pytest.fixture
async def store(english_url: str) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(english_url, pool_size=2)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def insert_claims(url: str, scopes: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for n, scope in enumerate(scopes):
            conn.execute(
                "INSERT INTO chronicle.claims (scope, value, aggregate_id) VALUES (%s, %s, %s)", (scope, "v", f"a-{n}")
            )


async def test_the_collation_interleaves_a_scopes_tenants_with_other_scopes(english_url: str) -> None:
    """Why the range is not taken in the database's order: there, it is not one."""
    with psycopg.connect(english_url) as conn:
        rows = conn.execute(
            "SELECT s FROM unnest(%s::text[]) s ORDER BY s",
            ([EMAIL + "acmf", tenant_scope(EMAIL, "acme"), EMAIL + "ab"],),
        ).fetchall()
    assert [row[0] for row in rows] == [EMAIL + "ab", tenant_scope(EMAIL, "acme"), EMAIL + "acmf"]


async def test_a_scopes_tenants_claims_are_found_and_no_neighbours(store: PostgresStore) -> None:
    neighbours = [EMAIL, EMAIL + "ab", EMAIL + "acmf", EMAIL + "\x1facme", EMAIL + ".old\x1eacme", "members\x1eacme"]
    insert_claims(store.url, neighbours)
    assert not await store.holds_tenant_claims(EMAIL)
    insert_claims(store.url, [tenant_scope(EMAIL, "acme")])
    assert await store.holds_tenant_claims(EMAIL)


async def test_the_scopes_of_tenants_claims_are_listed_in_code_point_order(store: PostgresStore) -> None:
    # In the English collation "members.emailab" < "members.email\x1eacme" <
    # "members.emailacmf": a walk in it would not skip a scope's tenants at once.
    insert_claims(store.url, [EMAIL + "ab", EMAIL + "acmf", tenant_scope(EMAIL + "ab", "t")])
    insert_claims(store.url, [tenant_scope(EMAIL, tenant) for tenant in ("acme", "globex", "initech")])
    assert await store.tenant_claim_scopes() == [EMAIL, EMAIL + "ab"]


async def test_the_question_is_one_index_range_on_a_large_claims_table(store: PostgresStore) -> None:
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO chronicle.claims (scope, value, aggregate_id)"
            " SELECT 'scope' || (g % 100) || CASE WHEN g % 2 = 0 THEN chr(30) || 't' || g ELSE '' END, 'v' || g, 'a'"
            " FROM generate_series(1, 50000) g"
        )
        conn.execute("ANALYZE chronicle.claims")
        statement = sql.TENANT_CLAIMS_OF_SCOPE.replace("$1", "%s").replace("$2", "%s")
        (plan,) = conn.execute("EXPLAIN (FORMAT JSON) " + statement, tenant_scopes_range("scope4")).fetchone()  # type: ignore[misc]
        walk = sql.NEXT_TENANT_CLAIMS_SCOPE.replace("$1", "%s")
        (step,) = conn.execute("EXPLAIN (FORMAT JSON) " + walk, ("scope4\x1f",)).fetchone()  # type: ignore[misc]
    assert "claims_per_tenant_code_points" in json.dumps(plan)
    assert "claims_per_tenant_code_points" in json.dumps(step)
    assert await store.holds_tenant_claims("scope4")
    assert not await store.holds_tenant_claims("scope3")  # odd: its claims are global
    assert await store.tenant_claim_scopes() == sorted(f"scope{n}" for n in range(0, 100, 2))
