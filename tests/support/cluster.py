"""Replicas in this process on one PostgreSQL database, with leases short
enough that the cluster changes shape in a second or two."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace

from service.app import Application, start
from service.cluster.leases import fair_shares
from service.plugins.registry import Registry
from service.store.postgres import PostgresStore
from tests.support.grpc_client import TEST_SETTINGS, Client, connect
from tests.support.waiting import eventually

# A heartbeat every 0.5 s: changes of shape take a second or two, and a
# replica's leases lapse only if its event loop stalls for a whole second
# (the suite shares two cores with whatever else runs on the machine).
LEASE = 1.5


@asynccontextmanager
async def replica(
    postgres_url: str, *, registry: Registry | None = None, **overrides: object
) -> AsyncIterator[tuple[Application, Client]]:
    """A server on a free port over its own store on ``postgres_url``, and a
    plain client of it; stopped (leaving its leases) at the end."""
    settings = replace(
        TEST_SETTINGS,
        lease_seconds=LEASE,
        database_url=postgres_url,
        poll_seconds=0.2,
        **overrides,  # type: ignore[arg-type]
    )
    app = await start(settings, store=PostgresStore(postgres_url, pool_size=4), registry=registry)
    try:
        async with connect(app.address) as client:
            yield app, client
    finally:
        await app.stop(grace=1.0, drain=0.0)


def fair(apps: Sequence[Application], partitions: int = 64) -> bool:
    """Every replica holds exactly its fair share (so no partition moves
    any more while the replicas stay): shares within one of each other is
    not enough, the larger ones must be where every replica expects them."""
    shares = fair_shares([app.leases.member_id for app in apps], partitions)
    return [len(app.ownership.owned()) for app in apps] == [shares[app.leases.member_id] for app in apps]


async def settled(apps: Sequence[Application], partitions: int = 64) -> None:
    await eventually(lambda: fair(apps, partitions), within=20, what="the partitions shared out fairly")


def runners_of(apps: Sequence[Application], projection: str) -> list[Application]:
    """The replicas running ``projection`` now."""
    return [app for app in apps if app.projections.runners[projection].holds_lease]


def projections_settled(apps: Sequence[Application], registry: Registry, projection: str) -> bool:
    """Every projection and reaction of ``registry`` held, each replica at
    its fair share of them, one replica running ``projection``: the leases
    stay where they are from now on. (Until then a replica above its share
    gives one up at its next heartbeat, and a batch it applied but had not
    committed is applied again by the next holder: handlers run at least
    once, their writes exactly once.)"""
    shares = fair_shares([app.leases.member_id for app in apps], len(registry.projections) + len(registry.reactions))
    held = [app.leases.held("projections") for app in apps]
    fair_held = [len(h) for h in held] == [shares[app.leases.member_id] for app in apps]
    return fair_held and len(runners_of(apps, projection)) == 1
