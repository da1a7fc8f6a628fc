"""Which Chronicle a replica runs, and what it owns and runs, as an operator
sees it: ``chronicle --version``, the start-up line, the
``chronicle_build_info`` gauge, each member's version and schema version in
the topology (``Member.version``, ``chronicle cluster``), the state gauges
(store up, serving, schema version, partitions owned, projections and
reactions run here), an INFO line for each projection or reaction lease
taken, and the closing summary at shutdown. A real server on a SQLite file,
scraped over HTTP, the CLI over a real socket."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from chronicle.v1 import cluster_service_pb2 as pb
from chronicle.v1 import cluster_service_pb2_grpc as pb_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service import version
from service.app import describe
from service.store.sqlite import SqliteStore
from service.store.sqlite.migrations import MIGRATIONS
from tests.support.grpc_client import command, running_server
from tests.support.metrics import sample, scrape
from tests.support.processes import cli
from tests.support.waiting import eventually


def test_chronicle_version_says_the_package_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == f"chronicle {version.described()}"
    assert result.stdout.startswith("chronicle 0.5.0")


def test_a_build_s_commit_is_read_from_what_the_build_hook_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    baked = tmp_path / "build_commit.txt"
    baked.write_text("0123456789ab\n")
    monkeypatch.setattr(version, "COMMIT_FILE", baked)
    version.commit.cache_clear()
    try:
        assert version.described() == f"{version.VERSION} (commit 0123456789ab)"
        monkeypatch.setattr(version, "COMMIT_FILE", tmp_path / "none.txt")
        version.commit.cache_clear()
        assert version.described() == version.VERSION  # a checkout without a build: no commit claimed
    finally:
        version.commit.cache_clear()


async def test_a_replica_says_its_version_state_and_what_it_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    store = SqliteStore(tmp_path / "chronicle.db")
    async with running_server(store, metrics_listen="127.0.0.1:0", partitions=8) as (app, client):
        assert f"version {version.described()})" in describe(app).splitlines()[0]
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        text = await scrape(app)
        assert sample(text, "chronicle_build_info", version=version.VERSION, commit=version.commit() or "unknown") == 1
        assert sample(text, "chronicle_store_up") == 1
        assert sample(text, "chronicle_serving") == 1
        assert sample(text, "chronicle_schema_version") == MIGRATIONS[-1].version
        assert sample(text, "chronicle_owned_partitions") == 8
        projections = {p.name for p in app.registry.projections}
        reactions = {r.name for r in app.registry.reactions}
        assert projections and reactions  # the example plugins' (discovered)

        async def runs_all() -> bool:
            text = await scrape(app)
            held = sample(text, "chronicle_held_runner_leases", kind="projection")
            return held == len(projections) and sample(text, "chronicle_held_runner_leases", kind="reaction") == len(
                reactions
            )

        await eventually(runs_all, within=10, what="every projection and reaction run here")
        # Its first holdings are in its start-up lines; changes after, INFO lines.
        assert f"  runs here now: {', '.join(sorted(projections | reactions))}" in describe(app).splitlines()
        moved = sorted(projections)[0]
        app.leases.step_aside("projections", moved)

        def said(start: str) -> list[str]:
            return [r.getMessage() for r in caplog.records if r.getMessage().startswith(start)]

        assert said(f"this replica gave up lease {moved} of group projections (stepping aside)")
        await eventually(
            lambda: bool(said(f"this replica took lease {moved} of group projections")),
            within=20,
            what="the lease taken again once its step aside ended",
        )

        topology = (
            await pb_grpc.ClusterServiceStub(client.channel).GetTopology(pb.GetTopologyRequest(), timeout=10)
        ).topology
        (member,) = topology.members
        assert (member.version, member.schema_version) == (version.described(), MIGRATIONS[-1].version)

        shown = await asyncio.to_thread(cli, "cluster", server=app.address)
        lines = [json.loads(line) for line in shown.stdout.splitlines()]
        assert lines[0]["version"] == version.described()
        assert lines[0]["schema_version"] == MIGRATIONS[-1].version
        assert lines[0]["partitions"] == 8
        assert lines[-1] == {"epoch": topology.epoch, "partition_count": 8}
    (summary,) = [r.getMessage() for r in caplog.records if " stopped: " in r.getMessage()]
    assert summary.startswith(f"Chronicle {version.described()} stopped: 1 commands taken since it started;")
