"""Forgetting an aggregate deletes the reactions' process states and
parked commands that name it (docs/plugins.md, "Forgetting"): a saga in
flight stops there, what it did stays done. Through a real server over a
real socket, on SQLite and on a real PostgreSQL, the operator is told what
went: ForgetAggregate's answer counts it per reaction, the CLI prints it
(and warns on standard error), the audit entry says it and a WARNING log
line names it. The plugin is ``test_reaction_state_type_change.shifting``:
``shifting.steps`` keeps a process per Feed box."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from chronicle.v1 import admin_service_pb2 as admin_pb
from chronicle.v1 import reaction_service_pb2 as reaction_pb
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.app import Application
from service.plugins import CommandContext, Plugin, ProjectedEvent, Send
from service.plugins.registry import Registry
from service.store.base import StoreAdapter
from service.store.encryption import new_master_key
from service.store.postgres import PostgresStore
from service.store.records import MAX_OTHER_SUBJECTS
from service.store.sqlite import SqliteStore
from tests.integration.test_reaction_state_type_change import STEPS, caught_up, shifting
from tests.support.grpc_client import Client, command, running_server
from tests.support.processes import cli
from tests.support.security import write
from tests.support.waiting import eventually

Opener = Callable[[], Awaitable[StoreAdapter]]


@pytest.fixture(params=["sqlite", "postgres"])
async def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    url = await request.getfixturevalue("postgres_current")() if request.param == "postgres" else None

    async def opened() -> StoreAdapter:
        store: StoreAdapter = PostgresStore(url, pool_size=4) if url else SqliteStore(tmp_path / "events.db")
        await store.open()
        return store

    return opened


@asynccontextmanager
async def serving(
    reopen: Opener, tmp_path: Path, plugin: Plugin | None = None
) -> AsyncIterator[tuple[Application, Client]]:
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    registry = Registry([plugin or shifting(1)])
    store = await reopen()
    try:
        async with running_server(
            store, registry=registry, anonymous_admin=True, poll_seconds=0.05, master_key_file=keys
        ) as running:
            yield running
    finally:
        await store.close()


# An order reserves as many stock items as its name says (one Stock
# aggregate each), then waits for a shipment that never comes: in flight,
# its state naming the order and every stock item.
reserving = Plugin("reserving")
RESERVE = "reserving.stock"
_order = reserving.aggregate("Order", state=box.Box)
_stock = reserving.aggregate("Stock", state=box.Box)


@_order.command(box.CreateBox)
def _place(command: box.CreateBox, state: box.Box, context: CommandContext) -> box.BoxCreated:
    return box.BoxCreated(name=command.name)


@_order.apply(box.BoxCreated)
def _placed(state: box.Box, event: box.BoxCreated) -> None:
    state.name = event.name


@_stock.command(box.ArchiveBox)
def _hold(command: box.ArchiveBox, state: box.Box, context: CommandContext) -> box.BoxArchived:
    return box.BoxArchived()


@_stock.apply(box.BoxArchived)
def _held(state: box.Box, event: box.BoxArchived) -> None:
    state.archived = True


def _the_order(envelope: ProjectedEvent) -> str:
    return envelope.aggregate_id


_reserve = reserving.reaction(RESERVE, aggregate_types=["Order"], state=box.Box, state_key=_the_order)


@_reserve.on(box.BoxCreated)
def _reserve_each(event: box.BoxCreated, envelope: ProjectedEvent, waiting: box.Box) -> list[Send]:
    waiting.name = event.name  # kept until the shipment (never): in flight
    return [Send(f"stock-{envelope.aggregate_id}-{n:02}", box.ArchiveBox()) for n in range(int(event.name))]


async def test_forgetting_says_which_reactions_processes_it_deleted_in_flight(
    reopen: Opener, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(reopen, tmp_path) as (app, client):
        for name in ("ann", "bob", "cy"):
            await client.submit(command(f"feed-{name}", box.CreateBox(name=name)))
        await caught_up(client)  # a process waits for each feed's rename

        with caplog.at_level(logging.WARNING, logger="service.api.admin_service"):
            answer = await client.admin.ForgetAggregate(admin_pb.ForgetAggregateRequest(aggregate_id="feed-ann"))
        assert not answer.already_forgotten
        assert list(answer.deleted_documents) == [admin_pb.ForgottenDocuments(name=STEPS, process_states=1)]
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert (
            f"forgetting aggregate feed-ann deleted: {STEPS}: 1 process state (in flight: what it did stays done)"
            in said
        )

        # The CLI prints the same, and warns a person reading its output.
        printed = await asyncio.to_thread(cli, "forget", "feed-bob", server=app.address)
        shown = json.loads(printed.stdout)
        assert isinstance(shown.pop("forgotten_at"), str)  # now (RFC 3339)
        assert shown == {
            "aggregate_id": "feed-bob",
            "already_forgotten": False,
            "deleted": [
                {
                    "name": STEPS,
                    "process_states": 1,
                    "parked_commands": 0,
                    "documents": 0,
                    "other_subjects": [],  # its processes named only their feed
                    "other_subjects_omitted": 0,
                    "other_subjects_withheld": 0,
                }
            ],
        }
        assert f"warning: reaction {STEPS}: 1 process state(s) that named feed-bob deleted in flight" in printed.stderr

        # The forgotten aggregate's own entry keeps no text (forgetting erases
        # it): what went is filed under the reaction, as its states' reads are.
        audit = await client.admin.QueryAudit(admin_pb.QueryAuditRequest(aggregate_id=f"reaction:{STEPS}"))
        deleted = f"deleted: {STEPS}: 1 process state (in flight: what it did stays done)"
        assert sorted((e.command_type, e.message) for e in audit.entries) == [
            (_FORGET, f"forgetting aggregate feed-ann {deleted}"),
            (_FORGET, f"forgetting aggregate feed-bob {deleted}"),
        ]

        # Again: nothing left to delete, and none said to be.
        again = await client.admin.ForgetAggregate(admin_pb.ForgetAggregateRequest(aggregate_id="feed-ann"))
        assert (again.already_forgotten, list(again.deleted_documents)) == (True, [])
        # The feed no one forgot keeps its process.
        kept = await client.admin.ForgetAggregate(admin_pb.ForgetAggregateRequest(aggregate_id="feed-cy"))
        assert list(kept.deleted_documents) == [admin_pb.ForgottenDocuments(name=STEPS, process_states=1)]


_FORGET = "chronicle.v1.AdminService/ForgetAggregate"


async def test_forgetting_names_the_other_aggregates_of_the_processes_it_deleted(
    reopen: Opener, tmp_path: Path
) -> None:
    """What the operator finishes or compensates by hand: the other
    aggregates the deleted processes named (their stock items), in the
    answer, the CLI's output and warning, and the reaction's audit entry;
    at most MAX_OTHER_SUBJECTS of them, the rest counted."""
    async with serving(reopen, tmp_path, reserving) as (app, client):
        await client.submit(command("order-1", box.CreateBox(name="3")))
        await client.submit(command("order-2", box.CreateBox(name=str(MAX_OTHER_SUBJECTS + 2))))

        async def reserved() -> bool:
            now = await client.reactions.GetReaction(reaction_pb.GetReactionRequest(name=RESERVE))
            return bool(now.position == now.log_head and now.accepted == MAX_OTHER_SUBJECTS + 5)

        await eventually(reserved, what="both orders' stock reserved")

        answer = await client.admin.ForgetAggregate(admin_pb.ForgetAggregateRequest(aggregate_id="order-1"))
        stock = [f"stock-order-1-{n:02}" for n in range(3)]
        assert list(answer.deleted_documents) == [
            admin_pb.ForgottenDocuments(name=RESERVE, process_states=1, other_subjects=stock)
        ]
        audit = await client.admin.QueryAudit(admin_pb.QueryAuditRequest(aggregate_id=f"reaction:{RESERVE}"))
        (entry,) = audit.entries
        assert entry.message == (
            f"forgetting aggregate order-1 deleted: {RESERVE}: 1 process state (in flight: what it did stays done;"
            f" the other aggregates named: {', '.join(stock)})"
        )

        printed = await asyncio.to_thread(cli, "forget", "order-2", server=app.address)
        many = [f"stock-order-2-{n:02}" for n in range(MAX_OTHER_SUBJECTS + 2)]
        (deleted,) = json.loads(printed.stdout)["deleted"]
        assert (deleted["other_subjects"], deleted["other_subjects_omitted"]) == (many[:MAX_OTHER_SUBJECTS], 2)
        assert (
            f"warning: reaction {RESERVE}: the other aggregates they named, to finish or compensate by hand:"
            f" {', '.join(many[:MAX_OTHER_SUBJECTS])} and 2 more"
        ) in printed.stderr


async def test_forgetting_again_answers_when_the_first_forgot_and_rewrites_nothing_it_recorded(
    reopen: Opener, tmp_path: Path
) -> None:
    """A second ForgetAggregate is idempotent: already forgotten, the first
    call's time, nothing deleted; every audit entry recorded before it
    (the first call's under the aggregate, text erased, and under the
    reaction, in the clear) stays as it was, and it adds only its own."""
    async with serving(reopen, tmp_path, reserving) as (app, client):
        await client.submit(command("order-1", box.CreateBox(name="2")))

        async def reserved() -> bool:
            now = await client.reactions.GetReaction(reaction_pb.GetReactionRequest(name=RESERVE))
            return bool(now.position == now.log_head and now.accepted == 2)

        await eventually(reserved, what="the order's stock reserved")
        first = await client.admin.ForgetAggregate(admin_pb.ForgetAggregateRequest(aggregate_id="order-1"))
        assert not first.already_forgotten and first.HasField("forgotten_time")
        before = list((await client.admin.QueryAudit(admin_pb.QueryAuditRequest())).entries)

        again = await client.admin.ForgetAggregate(admin_pb.ForgetAggregateRequest(aggregate_id="order-1"))
        assert (again.already_forgotten, list(again.deleted_documents)) == (True, [])
        assert again.forgotten_time == first.forgotten_time
        after = list((await client.admin.QueryAudit(admin_pb.QueryAuditRequest())).entries)
        assert [e for e in after if e in before] == before  # none rewritten
        added = [(e.command_type, e.aggregate_id, e.message) for e in after if e not in before]
        assert added == [(_FORGET, "order-1", "")]
        # The reaction's entry of the first call still says what it deleted.
        (filed,) = [e for e in after if e.aggregate_id == f"reaction:{RESERVE}"]
        assert "forgetting aggregate order-1 deleted" in filed.message
        # Of the aggregate's ForgetAggregate entries (no text), the one up to
        # forgotten_time is the call that forgot it (its entry is written in
        # the forget's transaction, stamped as the call began), the one after
        # it the second call's.
        forgets = sorted(
            e.time.ToMicroseconds() for e in after if (e.command_type, e.aggregate_id) == (_FORGET, "order-1")
        )
        assert len(forgets) == 2 and forgets[0] <= first.forgotten_time.ToMicroseconds() < forgets[1]

        # The command line says the same, as often as it is asked.
        printed = json.loads((await asyncio.to_thread(cli, "forget", "order-1", server=app.address)).stdout)
        assert (printed["already_forgotten"], printed["forgotten_at"], printed["deleted"]) == (
            True,
            first.forgotten_time.ToJsonString(),
            [],
        )
