"""A replica that is serving when a migration raises the schema's
compatibility floor above its code (``chronicle migrate --force`` under it)
notices within a health interval: ``chronicle_schema_version`` follows the
store (it was read once, at start-up), it logs an ERROR naming the versions
and reports NOT_SERVING (reason SCHEMA_TOO_NEW), as it would refuse to
start on that schema. An additive migration ahead only moves the gauge.
Meanwhile it reaches its store: ``chronicle_store_up`` stays 1 (the
ChronicleStoreUnavailable alert of observability.md does not fire, saying
the store is gone) and ``chronicle_schema_compatible`` reads 0 (its own
alert, ChronicleSchemaTooNew); a store out of reach is ``store_up`` 0 with
the schema as last seen.
One replica on a real PostgreSQL; the migrations are rows of
schema_migrations, as ``migrate`` writes them."""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest

from service.store.postgres import migrations as pg_migrations
from tests.support.cluster import replica
from tests.support.metrics import sample, scrape
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

CURRENT = pg_migrations.known_migrations()[-1].version
FLOOR_NOW = pg_migrations.known_migrations()[-1].compatible_from


def record_migration(url: str, version: int, floor: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO chronicle.schema_migrations (version, name, compatible_from) VALUES (%s, %s, %s)",
            (version, f"probe_{version}", floor),
        )


def forget_migration(url: str, version: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM chronicle.schema_migrations WHERE version = %s", (version,))


async def test_a_floor_raised_under_a_serving_replica_turns_it_not_serving_with_an_error(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with replica(postgres_url, health_interval=0.2, metrics_listen="127.0.0.1:0") as (app, _):
        assert sample(await scrape(app), "chronicle_schema_version") == CURRENT

        async def gauge_is(version: int) -> bool:
            return sample(await scrape(app), "chronicle_schema_version") == version

        await asyncio.to_thread(record_migration, postgres_url, CURRENT + 1, FLOOR_NOW)  # additive
        await eventually(lambda: gauge_is(CURRENT + 1), what="the gauge at the additive migration")
        await asyncio.sleep(0.5)
        assert app.health.serving

        await asyncio.to_thread(record_migration, postgres_url, CURRENT + 2, CURRENT + 2)  # raises the floor
        await eventually(lambda: not app.health.serving, what="NOT_SERVING under the raised floor")
        assert await gauge_is(CURRENT + 2)
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, errors
        assert f"version {CURRENT + 2} with compatibility floor {CURRENT + 2}" in errors[0]
        assert f"the newest this replica's code knows ({CURRENT})" in errors[0]
        await asyncio.sleep(0.6)  # more pings: said once, not at each
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1

        await asyncio.to_thread(forget_migration, postgres_url, CURRENT + 2)  # as if rolled back
        await eventually(lambda: app.health.serving, what="SERVING once the floor is within its code")
        await eventually(lambda: gauge_is(CURRENT + 1), what="the gauge following")


async def test_a_replica_below_the_floor_reaches_its_store_and_says_its_schema_is_the_matter(
    postgres_url: str,
) -> None:
    async with replica(postgres_url, health_interval=0.2, metrics_listen="127.0.0.1:0") as (app, _):

        async def gauges() -> tuple[float | None, ...]:
            text = await scrape(app)
            return tuple(sample(text, name) for name in ("chronicle_store_up", "chronicle_schema_compatible"))

        async def serving_gauge() -> float | None:
            return sample(await scrape(app), "chronicle_serving")

        assert await gauges() == (1, 1)
        await asyncio.to_thread(record_migration, postgres_url, CURRENT + 2, CURRENT + 2)  # raises the floor
        try:
            await eventually(lambda: not app.health.serving, what="NOT_SERVING under the raised floor")
            await asyncio.sleep(0.5)  # more pings, all SCHEMA_TOO_NEW
            assert await gauges() == (1, 0)  # reachable; its schema is what is wrong
            assert await serving_gauge() == 0
        finally:
            await asyncio.to_thread(forget_migration, postgres_url, CURRENT + 2)  # as if rolled back
        await eventually(lambda: app.health.serving, what="SERVING once the floor is within its code")
        assert await gauges() == (1, 1)
