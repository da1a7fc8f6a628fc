"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from service.store.base import StoreAdapter
from service.store.postgres import PostgresStore
from service.store.postgres import database as postgres_database
from service.store_contract.contents import ContentsOf
from tests.support.contents import contents as read_contents
from tests.support.load import Followers
from tests.support.postgres import Cluster, StandbyPair, start_cluster, start_standby_pair
from tests.support.schema_versions import DatabaseAt, PostgresVersions
from tests.support.stores import STORES, store_site


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """The suite's PostgreSQL: started on first use, stopped at the end."""
    cluster = start_cluster()
    yield cluster
    cluster.shutdown()


@pytest.fixture
def postgres_url(pg_cluster: Cluster) -> Iterator[str]:
    """A fresh, empty database for one test."""
    url = pg_cluster.create_database()
    yield url
    pg_cluster.drop_database(url)


@pytest.fixture(scope="session")
def postgres_versions(pg_cluster: Cluster) -> Iterator[PostgresVersions]:
    """Databases at each earlier schema version, built once, copied per test."""
    versions = PostgresVersions(pg_cluster)
    yield versions
    if not pg_cluster.controllable:  # the suite's own cluster is removed whole, its databases with it
        versions.drop_all()


@pytest.fixture
def postgres_at(pg_cluster: Cluster, postgres_versions: PostgresVersions) -> Iterator[DatabaseAt]:
    """``await postgres_at(version, filled=…)``: a new database at that schema
    version (``filled``: with every kind of row it can hold; ``migrated=True``:
    then migrated by the current store), for this test."""
    made: list[str] = []

    async def at(version: int, *, filled: bool, migrated: bool = False) -> str:
        made.append(await postgres_versions.copy(version, filled=filled, migrated=migrated))
        return made[-1]

    yield at
    for url in made:
        pg_cluster.drop_database(url)


@pytest.fixture
def postgres_current(
    pg_cluster: Cluster, postgres_versions: PostgresVersions
) -> Iterator[Callable[[], Awaitable[str]]]:
    """``await postgres_current()``: a new database already at the current
    schema (a copy of one the current store migrated once per session:
    a file copy instead of every migration's SQL per test), for this test."""
    made: list[str] = []

    async def copy() -> str:
        made.append(await postgres_versions.copy_current())
        return made[-1]

    yield copy
    for url in made:
        pg_cluster.drop_database(url)


@pytest.fixture
async def postgres_store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    """A PostgreSQL store opened (migrated) on a fresh database, closed at the end."""
    opened = PostgresStore(postgres_url, pool_size=4)
    await opened.open()
    await opened.ping()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(params=sorted(STORES))
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[StoreAdapter]:
    """Each store adapter in turn: the contract suite runs once per store
    (and on the SQL stores once more, on a database migrated from version 1).

    On PostgreSQL, an operation rolled back as a deadlock's victim is not
    sent again here (``ROLLBACK_ATTEMPTS`` 1): the contract's "never
    deadlock" must hold by the order in which the store takes its locks, and
    the store's retry would hide a deadlock from it."""
    if request.param.startswith("postgres"):
        monkeypatch.setattr(postgres_database, "ROLLBACK_ATTEMPTS", 1)
    async with STORES[request.param](store_site(request, tmp_path)) as opened:
        yield opened


@pytest.fixture(scope="session")
def standby_pair() -> Iterator[StandbyPair]:
    """A primary and its hot standby, for the suite: started on first use."""
    pair = start_standby_pair()
    yield pair
    pair.shutdown()


@pytest.fixture
def standby_urls(standby_pair: StandbyPair) -> Iterator[tuple[str, str]]:
    """A fresh database on the primary, and the same database on its standby."""
    primary_url, standby_url = standby_pair.create_database()
    yield primary_url, standby_url
    standby_pair.primary.drop_database(primary_url)


@pytest.fixture
def contents(store: StoreAdapter) -> ContentsOf:
    """What ``store`` holds, read from underneath it (its tables), for the
    contract's "nothing else changed" checks."""
    return lambda: read_contents(store)


@pytest.fixture
def private_cluster() -> Iterator[Cluster]:
    """A PostgreSQL of this test's own, which the test may stop and start."""
    cluster = start_cluster(own=True)
    yield cluster
    cluster.shutdown()


@pytest.fixture
async def followers() -> AsyncIterator[Followers]:
    """Start log subscribers with ``followers.start(address, log)``; they end with the test."""
    started = Followers()
    yield started
    await started.close()
