"""A live member of a version that does not honour the cluster features on
(service/cluster/features_behind.py): a real server on PostgreSQL, and an
old replica as the store sees one (a member whose schema is below the
features table's, joined in the store as the contract tests join one).
Once a feature is on, the server logs an ERROR naming it and what to do,
marks it in GetTopology (``behind_features``) and counts it in
``chronicle_cluster_members_behind_features``; before, an old member is
simply a replica of a rolling upgrade."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from chronicle.v1 import cluster_service_pb2 as pb
from chronicle.v1 import cluster_service_pb2_grpc as pb_grpc
from service.app import Application
from service.store.features import TENANT_DOCUMENT_KEYS
from service.store.postgres.store import PostgresStore
from tests.contract.test_cluster_features_contract import join, since
from tests.support.cluster import replica
from tests.support.grpc_client import Client
from tests.support.metrics import sample, scrape
from tests.support.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres]

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


@pytest.fixture
def errors() -> Iterator[_Seen]:
    seen = _Seen()
    logger = logging.getLogger(WATCH)
    logger.addHandler(seen)
    try:
        yield seen
    finally:
        logger.removeHandler(seen)


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(postgres_url, pool_size=2)
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
    postgres_url: str, store: PostgresStore, errors: _Seen
) -> None:
    async with replica(postgres_url, metrics_listen="127.0.0.1:0") as (app, client):
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
    postgres_url: str, store: PostgresStore, errors: _Seen
) -> None:
    async with replica(postgres_url, metrics_listen="127.0.0.1:0") as (app, client):
        await join(store, app.ownership.group.name, OLD, schema=since(store) - 1)

        async def joined() -> bool:
            return OLD in await members(client)

        await eventually(joined, what="the old member in the topology")
        assert not (await members(client))[OLD].behind_features
        assert await behind_metric(app) == 0
        assert not await store.enable_feature(TENANT_DOCUMENT_KEYS)  # it holds the feature off
    assert errors.messages == []
