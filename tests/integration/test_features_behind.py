"""A live member of a version that does not honour the cluster features on
(service/cluster/features_behind.py): a real server on PostgreSQL and on a
SQLite file, and an old replica as the store sees one (a member whose
schema is below a feature's, joined in the store as the contract tests
join one). Once a feature is on, the server logs an ERROR naming it and
what to do, marks it in GetTopology (``behind_features``) and counts it in
``chronicle_cluster_members_behind_features``; before, an old member is
simply a replica of a rolling upgrade. Each feature by its own schema: a
member is named behind only those it does not honour."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from chronicle.v1 import cluster_service_pb2 as pb
from chronicle.v1 import cluster_service_pb2_grpc as pb_grpc
from service.app import Application
from service.store.base import StoreAdapter
from service.store.features import FEATURES, TENANT_DOCUMENT_KEYS, Feature
from service.store.postgres.store import PostgresStore
from service.store.sqlite.store import SqliteStore
from tests.contract.test_cluster_features_contract import declare_two, join, since
from tests.support.cluster import LEASE
from tests.support.grpc_client import Client, running_server
from tests.support.metrics import sample, scrape
from tests.support.waiting import eventually

pytestmark = pytest.mark.asyncio

OLD = "old-replica"
WATCH = "service.cluster.features_behind"


class _Seen(logging.Handler):
    """Sets ``event`` at the first ERROR line (awaited: the watch writes it
    after the heartbeat that saw the member, in its own task)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.event = asyncio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.event.set()

    async def lines(self, count: int) -> list[str]:
        """The ERROR lines, once there are ``count`` (written in the
        server's loop, this one: nothing comes between the test and the wait)."""
        while len(self.messages) < count:
            self.event.clear()
            await asyncio.wait_for(self.event.wait(), 20)
        return self.messages


@pytest.fixture
def errors() -> Iterator[_Seen]:
    seen = _Seen()
    logger = logging.getLogger(WATCH)
    logger.addHandler(seen)
    try:
        yield seen
    finally:
        logger.removeHandler(seen)


@dataclass
class Site:
    """A server's store, and another store on the same database that joins
    the old member and turns the feature on, as another process would."""

    kind: str
    url: str

    def server_store(self) -> StoreAdapter:
        return PostgresStore(self.url, pool_size=4) if self.kind == "postgres" else SqliteStore(Path(self.url))

    @asynccontextmanager
    async def server(self) -> AsyncIterator[tuple[Application, Client]]:
        async with running_server(
            self.server_store(), lease_seconds=LEASE, poll_seconds=0.2, metrics_listen="127.0.0.1:0"
        ) as served:
            yield served


@pytest.fixture(params=["postgres", "sqlite"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    if request.param == "postgres":
        return Site("postgres", request.getfixturevalue("postgres_url"))
    return Site("sqlite", str(tmp_path / "events.db"))


@pytest.fixture
async def store(site: Site) -> AsyncIterator[PostgresStore | SqliteStore]:
    opened = PostgresStore(site.url, pool_size=2) if site.kind == "postgres" else SqliteStore(Path(site.url))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def members(client: Client) -> dict[str, pb.Member]:
    stub = pb_grpc.ClusterServiceStub(client.channel)
    response: pb.GetTopologyResponse = await stub.GetTopology(pb.GetTopologyRequest(), timeout=10)
    return {m.member_id: m for m in response.topology.members}


async def behind_metric(app: Application) -> float:
    return sample(await scrape(app), "chronicle_cluster_members_behind_features")


async def test_an_old_member_joining_once_a_feature_is_on_is_logged_marked_and_counted(
    site: Site, store: PostgresStore | SqliteStore, errors: _Seen
) -> None:
    async with site.server() as (app, client):
        assert await store.enable_feature(TENANT_DOCUMENT_KEYS)  # no old replica live: on
        await join(store, app.ownership.group.name, OLD, schema=since(store) - 1)  # then one comes (a rollback)
        await asyncio.wait_for(errors.event.wait(), 20)
        (line,) = errors.messages
        assert f"cluster member {OLD} " in line and f"schema {since(store) - 1}" in line
        assert "tenant_document_keys" in line and "chronicle projection rebuild" in line
        shown = await members(client)
        assert shown[OLD].behind_features
        assert not shown[app.leases.member_id].behind_features
        assert await behind_metric(app) == 1

        await store.leave_group(app.ownership.group.name, OLD)  # gone: no longer counted

        async def cleared() -> bool:
            return OLD not in await members(client) and await behind_metric(app) == 0

        await eventually(cleared, what="the old member gone from the topology and the metric")


async def test_an_old_member_before_any_feature_is_on_is_a_rolling_upgrades_replica(
    site: Site, store: PostgresStore | SqliteStore, errors: _Seen
) -> None:
    async with site.server() as (app, client):
        await join(store, app.ownership.group.name, OLD, schema=since(store) - 1)

        async def joined() -> bool:
            return OLD in await members(client)

        await eventually(joined, what="the old member in the topology")
        assert not (await members(client))[OLD].behind_features
        assert await behind_metric(app) == 0
        assert not await store.enable_feature(TENANT_DOCUMENT_KEYS)  # it holds the feature off
    assert errors.messages == []


async def test_a_member_is_named_behind_only_the_features_its_schema_does_not_honour(
    site: Site, store: PostgresStore | SqliteStore, errors: _Seen, monkeypatch: pytest.MonkeyPatch
) -> None:
    early, later = declare_two(store, monkeypatch)  # before the server starts: it reads them then
    async with site.server() as (app, client):
        assert await store.enable_feature(early)
        assert await store.enable_feature(later)
        # A server of the version before ``later``'s (a rollback): it honours ``early``.
        await join(store, app.ownership.group.name, OLD, schema=since(store, later) - 1)
        (line,) = await errors.lines(1)
        assert f"cluster member {OLD} " in line and f"schema {since(store, later) - 1})" in line
        assert f"({later}, since schema {since(store, later)})" in line and f"it reads {later} as absent" in line
        assert early not in line
        shown = await members(client)
        assert shown[OLD].behind_features
        assert not shown[app.leases.member_id].behind_features
        assert await behind_metric(app) == 1


async def test_a_feature_on_that_only_a_newer_version_declares_is_said_once_and_the_others_still_watched(
    site: Site, store: PostgresStore | SqliteStore, errors: _Seen, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as newer:  # a newer version turned it on, then was rolled back to this one
        newer.setitem(FEATURES, "newer_marks", Feature("newer_marks", since="cluster_features", behind="-"))
        assert await store.enable_feature("newer_marks")
    async with site.server() as (app, client):
        (line,) = await errors.lines(1)
        assert "the cluster feature newer_marks is on in this database, turned on by a newer version" in line
        assert await store.enable_feature(TENANT_DOCUMENT_KEYS)
        await join(store, app.ownership.group.name, OLD, schema=since(store) - 1)
        _, behind = await errors.lines(2)
        assert f"cluster member {OLD} " in behind and "(tenant_document_keys, since schema" in behind
        assert "newer_marks" not in behind
        assert (await members(client))[OLD].behind_features
        assert await behind_metric(app) == 1
    assert len(errors.messages) == 2  # the newer feature said once
