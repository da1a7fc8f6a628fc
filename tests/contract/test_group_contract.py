"""The store contract's groups part, as shipped (service/store_contract/test_groups.py),
on each of Chronicle's stores; and its order of groups once more on PostgreSQL,
in a database whose collation is a linguistic one."""

import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest

from service.store.postgres import PostgresStore
from service.store_contract import test_groups as contract
from service.store_contract.test_groups import *  # noqa: F403
from tests.support.postgres import Cluster


@pytest.fixture
async def linguistic_postgres(pg_cluster: Cluster) -> AsyncIterator[tuple[PostgresStore, str]]:
    """A PostgreSQL store, and its URL, on a new database whose default
    collation is ICU's root locale ("und"): linguistic whatever the
    cluster's locale (the suite's cluster takes the environment's, C.UTF-8
    here, which orders as "C" does, and so cannot tell the orders apart)."""
    name = f"chronicle_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.admin_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'"
            " LOCALE_PROVIDER icu ICU_LOCALE 'und'"
        )
    url = pg_cluster.url_for(name)
    try:
        store = PostgresStore(url, pool_size=2)
        await store.open()
        try:
            yield store, url
        finally:
            await store.close()
    finally:
        pg_cluster.drop_database(url)


@pytest.mark.postgres
async def test_groups_are_listed_in_code_point_order_in_a_database_of_linguistic_collation(
    linguistic_postgres: tuple[PostgresStore, str],
) -> None:
    store, url = linguistic_postgres
    # The database's own order of the names is not code point order: else
    # this test could not tell a store that sorts by the collation.
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT n FROM unnest(%s::text[]) AS n ORDER BY n", (list(contract.UNORDERED_NAMES),)
        )
        by_collation = [str(n) for (n,) in await cursor.fetchall()]
    assert by_collation == ["0z", "a_1", "a-1", "a.1", "a1", "b", "B", "Z"]
    await contract.test_groups_are_listed_in_code_point_order(store)
