"""A reaction or projection runner whose position in memory is ahead of a log that went
back under a running server (the SQLite file overwritten with an older copy
of itself: the log, the reaction's checkpoint and its state, consistently,
as a restore or a failover leaves them). Before, it read after its position
in memory, found nothing, and waited for the log to pass that position
again: the events written meanwhile at the reused positions waited with it
(its commit from the old position then failed its compare-and-set, so none
was skipped, only held back). It now sees the log's end below its position
and goes on from its checkpoint as the database holds it, saying so once.
A projection runner went back already (it reads its stored checkpoint again
whenever it finds nothing new), logging it as a rebuild at INFO; it now says
the log went back, at WARNING.
A checkpoint that did not go back with the log (beyond its end too) is the
runner's failure, LOG_REWOUND in its status, where it waited for the log to
pass it and then skipped the events before it.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import psycopg
import pytest

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.client import ChronicleClient
from service.plugins.registry import Registry
from service.store.base import StoreAdapter
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore
from tests.support import plugins, reaction_notes
from tests.support.grpc_client import running_server
from tests.support.waiting import eventually

NOTES = "notes.names"
REGISTRY = Registry([plugins.gates, reaction_notes.plugin])
BALANCES = "bank.balances_by_owner"


class CutLog:
    """A database whose log can be cut back to a position under a running
    server, its events only (the runners' checkpoints left where they were)."""

    def __init__(self, kind: str, where: str) -> None:
        self.kind, self.where = kind, where

    def store(self) -> StoreAdapter:
        return SqliteStore(Path(self.where)) if self.kind == "sqlite" else PostgresStore(self.where, pool_size=4)

    async def cut_to(self, head: int) -> None:
        if self.kind == "sqlite":
            with sqlite3.connect(self.where) as db:
                db.execute("DELETE FROM events WHERE position > ?", (head,))
                db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (head,))
            return
        async with await psycopg.AsyncConnection.connect(self.where, autocommit=True) as conn, conn.transaction():
            await conn.execute("DELETE FROM chronicle.events WHERE position > %s", (head,))
            await conn.execute("UPDATE chronicle.log_head SET last_position = %s", (head,))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def cut_log(request: pytest.FixtureRequest, tmp_path: Path) -> CutLog:
    if request.param == "sqlite":
        return CutLog("sqlite", str(tmp_path / "events.db"))
    return CutLog("postgres", request.getfixturevalue("postgres_url"))


def copy_database(source: Path, target: Path) -> None:
    """``source`` copied onto ``target`` with SQLite's backup API (a running
    server's connections to ``target`` see the copy at their next read)."""
    with sqlite3.connect(source) as reading, sqlite3.connect(target) as writing:
        reading.backup(writing)


async def test_a_reaction_ahead_of_a_restored_log_goes_on_from_its_restored_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live, backup = tmp_path / "events.db", tmp_path / "backup.db"
    async with (
        running_server(SqliteStore(live), registry=REGISTRY, anonymous_admin=True, poll_seconds=0.05) as (app, _),
        ChronicleClient.connect(app.address) as client,
    ):

        async def notes_at(position: int) -> bool:
            return (await client.reactions.get(NOTES)).position == position

        await client.submit("g", box.ArchiveBox())  # 1: the gate open
        for number in range(1, 5):  # 2..5
            await client.submit("g", box.RenameBox(name=f"before-{number}"))
        await eventually(lambda: notes_at(5), what="the reaction at 5")
        copy_database(live, backup)  # the backup: the log and the reaction at 5
        for number in range(1, 6):  # 6..10: lost in the restore
            await client.submit("g", box.RenameBox(name=f"lost-{number}"))
        await eventually(lambda: notes_at(10), what="the reaction at 10")

        caplog.set_level(logging.WARNING, logger="service.processing.reactions")
        copy_database(backup, live)  # restored under the running server: its end is 5
        for number in range(1, 3):  # 6 and 7 again: other events
            await client.submit("g", box.RenameBox(name=f"after-{number}"))
        # Before, it stayed at 10 in memory until the log passed it.
        await eventually(lambda: notes_at(7), what="the reaction at 7, the restored log's end")
    said = [r.getMessage() for r in caplog.records if "notes.names: the log went back" in r.getMessage()]
    # Its end as the runner's read saw it: 5, or up to 7 when the writes came first.
    assert len(said) == 1 and said[0] in {
        f"reaction notes.names: the log went back under its position 10 (its end is now {head}): restored or"
        " failed over? It goes on from its checkpoint as the database holds it, 5"
        for head in (5, 6, 7)
    }


async def test_a_reaction_whose_checkpoint_is_beyond_the_log_s_end_fails_with_log_rewound(cut_log: CutLog) -> None:
    async with (
        running_server(cut_log.store(), registry=REGISTRY, anonymous_admin=True, poll_seconds=0.05) as (app, _),
        ChronicleClient.connect(app.address) as client,
    ):

        async def notes_at(position: int) -> bool:
            return (await client.reactions.get(NOTES)).position == position

        await client.submit("g", box.ArchiveBox())  # 1: the gate open
        for number in range(1, 10):  # 2..10
            await client.submit("g", box.RenameBox(name=f"name-{number}"))
        await eventually(lambda: notes_at(10), what="the reaction at 10")
        # The log cut back to 5, the reactions' checkpoints left at 10: no
        # restore of one database does that, but nothing else says so.
        await cut_log.cut_to(5)

        async def failed() -> bool:
            return "LOG_REWOUND" in (await client.reactions.get(NOTES)).error

        await eventually(failed, what="the reaction failing with LOG_REWOUND")
        status = await client.reactions.get(NOTES)
        assert "its checkpoint 10 is beyond the log's end 5" in status.error


async def test_a_projection_ahead_of_a_restored_log_goes_on_from_its_restored_checkpoint_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live, backup = tmp_path / "events.db", tmp_path / "backup.db"
    async with (
        running_server(SqliteStore(live), registry=Registry([bank_account.plugin]), poll_seconds=0.05) as (app, _),
        ChronicleClient.connect(app.address) as client,
    ):

        async def balances_at(position: int) -> bool:
            status = await client.projections.get(BALANCES)
            return status.position == position and not status.error

        await client.submit("acc-1", bank.OpenAccount(owner="ann"))  # 1
        for amount in range(1, 5):  # 2..5
            await client.submit("acc-1", bank.Deposit(amount=amount))
        await eventually(lambda: balances_at(5), what="the projection at 5")
        copy_database(live, backup)
        for amount in range(1, 6):  # 6..10: lost in the restore
            await client.submit("acc-1", bank.Deposit(amount=amount))
        await eventually(lambda: balances_at(10), what="the projection at 10")

        caplog.set_level(logging.INFO, logger="service.processing.projections")
        copy_database(backup, live)
        for amount in range(1, 3):  # 6 and 7 again: other events
            await client.submit("acc-1", bank.Deposit(amount=amount))
        await eventually(lambda: balances_at(7), what="the projection at 7, the restored log's end")
    said = [(r.levelno, r.getMessage()) for r in caplog.records if BALANCES in r.getMessage()]
    assert len(said) == 1 and said[0] in {
        (
            logging.WARNING,
            f"projection {BALANCES}: the log went back under its position 10 (its end is now {head}): restored or"
            " failed over? It goes on from its checkpoint as the database holds it, 5",
        )
        for head in (5, 6, 7)
    }


async def test_a_projection_whose_checkpoint_is_beyond_the_log_s_end_fails_with_log_rewound(cut_log: CutLog) -> None:
    async with (
        running_server(cut_log.store(), registry=Registry([bank_account.plugin]), poll_seconds=0.05) as (app, _),
        ChronicleClient.connect(app.address) as client,
    ):

        async def balances_at(position: int) -> bool:
            return (await client.projections.get(BALANCES)).position == position

        await client.submit("acc-1", bank.OpenAccount(owner="ann"))  # 1
        for amount in range(1, 10):  # 2..10
            await client.submit("acc-1", bank.Deposit(amount=amount))
        await eventually(lambda: balances_at(10), what="the projection at 10")
        await cut_log.cut_to(5)  # the checkpoints left at 10

        async def failed() -> bool:
            return "LOG_REWOUND" in (await client.projections.get(BALANCES)).error

        await eventually(failed, what="the projection failing with LOG_REWOUND")
        assert "its checkpoint 10 is beyond the log's end 5" in (await client.projections.get(BALANCES)).error
