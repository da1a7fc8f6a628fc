"""Where a reaction added after events exist starts (docs/plugins.md, "Where
a reaction starts"), over a real socket on a SQLite file served twice: first
by a server without the reaction, then by one that declares it.

- ``start_from="end"``: nothing sent for the events there were, and the
  next one reacted to; ``GetReaction`` shows where it started;
- ``start_from="beginning"``: every event reacted to;
- the start is fixed while its server starts, before it serves: commands
  accepted while the runner is held (it has not read its checkpoint yet)
  are reacted to, not skipped;
- the bank's transfers reaction registered under a new name (a rename)
  does not do a completed transfer again."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import reaction_service_pb2 as reaction_pb
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.bank_account.transfers import compensate, credit, debit, finish, transfer_of
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.plugins import Plugin, ProjectedEvent, Send
from service.plugins.reactions import Reaction, StartFrom
from service.plugins.registry import Registry
from service.store.sqlite import SqliteStore
from tests.support import plugins
from tests.support.cluster import replica
from tests.support.grpc_client import TEST_SETTINGS, Client, command, running_server
from tests.support.waiting import eventually

SETTINGS = replace(TEST_SETTINGS, poll_seconds=0.05)
late = Plugin("late")


def relay_to(target: str, start_from: StartFrom) -> Reaction[None]:
    """Sends each name "source" lets through on to ``target``."""
    reaction = late.reaction(f"late.{target.replace('-', '_')}", aggregate_types=["Gate"], start_from=start_from)

    @reaction.on(box.BoxRenamed)
    def pass_on(event: box.BoxRenamed, envelope: ProjectedEvent, state: None) -> Send | None:
        return Send(target, box.RenameBox(name=event.name)) if envelope.aggregate_id == "source" else None

    return reaction


AT_END = relay_to("to-end", start_from="end")
AT_BEGINNING = relay_to("to-all", start_from="beginning")
BEFORE = Registry([plugins.gates])
AFTER = Registry([plugins.gates, late])


async def names_in(store: SqliteStore, gate: str) -> list[str]:
    return [
        box.BoxRenamed.FromString(e.payload).name
        for e in await store.read_aggregate(gate)
        if e.event_type.endswith("BoxRenamed")
    ]


async def history(path: Path) -> int:
    """A store whose log has "ann" let through "source" (the gates open),
    served by a server that does not declare the late reactions; its head."""
    store = SqliteStore(path)
    async with running_server(store, settings=SETTINGS, registry=BEFORE) as (_, client):
        for gate in ("source", "gated", "to-end", "to-all"):
            await client.submit(command(gate, box.ArchiveBox()))  # open
        await client.submit(command("source", box.RenameBox(name="ann")))

        async def relayed() -> bool:  # gates.relay's command for ann too: the log stands still
            relay = await client.reactions.GetReaction(reaction_pb.GetReactionRequest(name="gates.relay"))
            return await names_in(store, "gated") == ["ann"] and relay.position == relay.log_head

        await eventually(relayed, what="ann relayed by gates.relay")
        return await store.log_head()


async def status(client: Client, reaction: Reaction[Any]) -> reaction_pb.ReactionStatus:
    answer: reaction_pb.ReactionStatus = await client.reactions.GetReaction(
        reaction_pb.GetReactionRequest(name=reaction.name)
    )
    return answer


async def test_a_reaction_added_after_events_reacts_from_where_its_start_from_says(tmp_path: Path) -> None:
    head = await history(tmp_path / "chronicle.db")
    store = SqliteStore(tmp_path / "chronicle.db")
    async with running_server(store, settings=SETTINGS, registry=AFTER) as (_, client):
        at_end, at_beginning = await status(client, AT_END), await status(client, AT_BEGINNING)
        assert (at_end.start_position, at_end.start_from) == (head, "end")
        assert (at_beginning.start_position, at_beginning.start_from) == (0, "beginning")
        await client.submit(command("source", box.RenameBox(name="bob")))

        async def both_relayed_bob() -> bool:
            return "bob" in await names_in(store, "to-end") and "bob" in await names_in(store, "to-all")

        await eventually(both_relayed_bob, what="both late reactions relaying bob")
        assert await names_in(store, "to-end") == ["bob"]  # ann came before it: nothing sent for her
        assert await names_in(store, "to-all") == ["ann", "bob"]
        at_end = await status(client, AT_END)
        assert (at_end.accepted, at_end.replayed) == (1, 0)


class HeldRunner(SqliteStore):
    """A SQLite store on which the late "end" reaction's runner cannot read
    its checkpoint until ``go`` is set: the server serves, the runner waits."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.go = asyncio.Event()
        self.waiting = 0

    async def projection_position(self, name: str) -> int:
        if name == AT_END.name:
            self.waiting += 1
            await self.go.wait()
        return await super().projection_position(name)


async def test_commands_accepted_before_the_runner_gets_going_are_not_skipped(tmp_path: Path) -> None:
    await history(tmp_path / "chronicle.db")
    store = HeldRunner(tmp_path / "chronicle.db")
    async with running_server(store, settings=SETTINGS, registry=AFTER) as (_, client):
        await eventually(lambda: store.waiting > 0, what="the runner waiting for its checkpoint")
        await client.submit(command("source", box.RenameBox(name="bob")))  # served while the runner waits
        assert await names_in(store, "to-end") == []
        store.go.set()

        async def relayed_bob() -> bool:
            return await names_in(store, "to-end") == ["bob"]

        await eventually(relayed_bob, what="bob relayed: its event is after the start")
        at_end = await status(client, AT_END)
        bob = (await store.read_aggregate("source"))[-1]
        assert at_end.start_position < bob.position  # fixed before the server took bob's command


# -- a rename (the walkthrough's t16): the bank's transfers under a new name -----------

bank_v2 = Plugin("bank_v2")
RENAMED = bank_v2.reaction(
    "bank.transfers_v2",
    aggregate_types=["Transfer", "Account"],
    state=bank.TransferProgress,
    state_key=transfer_of,
)
RENAMED.on(bank.TransferRequested)(debit)
RENAMED.on(bank.MoneyWithdrawn)(credit)
RENAMED.on(bank.MoneyDeposited)(finish)
RENAMED.on_refused(compensate)


async def balances(client: Client) -> dict[str, int]:
    found = {}
    for account in ("ann", "bob"):
        answer = await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id=account))
        state = bank.Account()
        answer.state.Unpack(state)
        found[account] = state.balance
    return found


async def test_the_bank_s_transfers_renamed_do_not_move_a_completed_transfer_s_money_again(tmp_path: Path) -> None:
    path = tmp_path / "chronicle.db"
    async with running_server(SqliteStore(path), settings=SETTINGS, registry=Registry([bank_account.plugin])) as (
        _,
        client,
    ):
        await client.submit(command("ann", bank.OpenAccount(owner="ann")))
        await client.submit(command("ann", bank.Deposit(amount=100)))
        await client.submit(command("bob", bank.OpenAccount(owner="bob")))
        await client.submit(
            command("t-1", bank.TransferMoney(source_account_id="ann", target_account_id="bob", amount=40))
        )

        async def done() -> bool:
            # the transfer over, and the reaction through its last event
            reaction = await status(client, bank_account.transfers)
            return reaction.position == reaction.log_head and await balances(client) == {"ann": 60, "bob": 40}

        await eventually(done, what="the transfer done")
        answer = await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="t-1"))
        transfer = bank.Transfer()
        answer.state.Unpack(transfer)
        assert transfer.status == bank.TRANSFER_STATUS_COMPLETED
        head = (await status(client, bank_account.transfers)).log_head
    store = SqliteStore(path)
    registry = Registry([bank_account.plugin, bank_v2])
    async with running_server(store, settings=SETTINGS, registry=registry) as (_, client):

        async def caught_up() -> bool:
            renamed = await status(client, RENAMED)
            return renamed.running and renamed.position == renamed.log_head

        await eventually(caught_up, what="the renamed reaction caught up")
        renamed = await status(client, RENAMED)
        assert (renamed.start_position, renamed.start_from) == (head, "")  # the head when it started
        assert (renamed.accepted, renamed.replayed) == (0, 0)
        assert await balances(client) == {"ann": 60, "bob": 40}  # not 20 and 80


# -- replicas on PostgreSQL: the first to start fixes it, the others find it -----------


@pytest.mark.postgres
async def test_on_postgresql_the_first_replica_to_start_fixes_the_start_and_a_later_one_finds_it(
    postgres_url: str,
) -> None:
    async with replica(postgres_url, registry=BEFORE) as (_, before):
        for gate in ("source", "gated", "to-end"):
            await before.submit(command(gate, box.ArchiveBox()))  # open
        await before.submit(command("source", box.RenameBox(name="ann")))
        head = (await status(before, plugins.relaying)).log_head  # ann's relay may come after: the start is later
        async with replica(postgres_url, registry=AFTER) as (_, first):
            fixed = (await status(first, AT_END)).start_position
            assert fixed >= head
            await first.submit(command("source", box.RenameBox(name="bob")))  # after the start: reacted to
            async with replica(postgres_url, registry=AFTER) as (_, later):
                assert (await status(later, AT_END)).start_position == fixed  # found, not the head now

                async def to_end() -> tuple[int, str]:
                    answer = await later.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="to-end"))
                    gate = box.Box()
                    answer.state.Unpack(gate)
                    return answer.version, gate.name

                async def relayed_bob() -> bool:
                    return (await to_end())[1] == "bob"

                await eventually(relayed_bob, what="bob relayed to to-end, by whichever replica runs it")
                assert await to_end() == (2, "bob")  # opened, then bob: ann was before the start
