"""A replica's death leaves a trace on the survivors: the one that takes its
partitions logs it at WARNING, naming the dead member and its address,
counts them in ``chronicle_partitions_taken_over_total``, and
``chronicle_cluster_members`` drops; a replica that stops (SIGTERM) and
leaves is an INFO line and no take-over. Two server processes on one
PostgreSQL (before, nothing was logged and nothing counted). And a replica
that stops says which projections and reactions it gives up, as
observability.md says of every lease it gives up (it said nothing)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import pytest

from tests.support import cluster
from tests.support.processes import Replica, replica
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

FLAGS = ["--lease-seconds", "1.5"]


def takeover_lines(server: Replica, other: Replica) -> list[str]:
    return [
        line
        for line in server.log_path.read_text(errors="replace").splitlines()
        if "this replica took" in line and other.address in line
    ]


async def test_a_survivor_logs_and_counts_the_partitions_it_takes_from_a_dead_replica(
    postgres_url: str, tmp_path: Path
) -> None:
    with (
        replica(postgres_url, log_path=tmp_path / "survivor.log", extra=FLAGS, metrics=True) as survivor,
        replica(postgres_url, log_path=tmp_path / "other.log", extra=FLAGS, metrics=True) as other,
    ):
        await eventually(lambda: survivor.metric("chronicle_cluster_members") == 2, what="two members seen")
        await eventually(lambda: survivor.metric("chronicle_owned_partitions") == 32, what="the partitions shared")
        await eventually(lambda: other.metric("chronicle_owned_partitions") == 32, what="the partitions shared")
        # A heartbeat of the survivor's since: the view it last saw shows who holds what.
        await asyncio.sleep(1.0)

        other.stop(signal.SIGTERM)  # leaves: its partitions are given up, not taken over
        await eventually(lambda: survivor.metric("chronicle_owned_partitions") == 64, what="all partitions owned")
        (left,) = [line for line in takeover_lines(survivor, other) if "group partitions/" in line]
        assert " INFO " in left and "took 32 lease(s)" in left and "which gave it up" in left, left
        assert survivor.metric("chronicle_partitions_taken_over_total") == 0
        assert survivor.metric("chronicle_cluster_members") == 1

        await asyncio.to_thread(other.start)
        await eventually(lambda: survivor.metric("chronicle_owned_partitions") == 32, what="shared again")
        await eventually(lambda: other.metric("chronicle_owned_partitions") == 32, what="shared again")
        await asyncio.sleep(1.0)
        other.stop(signal.SIGKILL)
        await eventually(lambda: survivor.metric("chronicle_owned_partitions") == 64, what="taken over")
        died = [line for line in takeover_lines(survivor, other) if "expired" in line and "group partitions/" in line]
        assert [line.split("this replica took ")[1].split(" ")[0] for line in died] == ["32"], died
        assert " WARNING " in died[0] and "killed, hung or cut off" in died[0], died[0]
        assert survivor.metric("chronicle_partitions_taken_over_total") == 32
        assert survivor.metric("chronicle_cluster_members") == 1


async def test_a_stopping_replica_logs_the_projection_and_reaction_leases_it_gives_up(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.cluster.leases")
    async with cluster.replica(postgres_url) as (app, _):
        runners = {p.name for p in app.registry.projections} | {r.name for r in app.registry.reactions}
        assert runners  # the example plugins' (discovered)
        await eventually(lambda: set(app.leases.held("projections")) == runners, what="every runner held")
        await app.stop(grace=1.0, drain=0.0)
    said = {
        record.getMessage()
        for record in caplog.records
        if record.getMessage().startswith("this replica gave up lease") and "stopping" in record.getMessage()
    }
    assert said == {
        f"this replica gave up lease {name} of group projections (leaving it: stopping): {name} runs elsewhere now"
        for name in runners
    }
