"""Subscription groups across replicas on PostgreSQL: three consumers of
one group over two replicas share 5,000 events on 200 aggregates; one, a
process of its own, is killed (SIGKILL) mid-stream, and what it held
unacknowledged goes to the others. Checked by the
group ledger (tests/support/groups.py): nothing skipped, each event counted
once by the group, every aggregate in order at each consumer."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient, Command
from service.client.results import Event
from tests.support.cluster import replica
from tests.support.groups import GroupLedger, consume_into
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

AGGREGATES = 200
EVENTS = 5000
SEGMENTS = 16


async def test_three_consumers_on_two_replicas_share_a_group_and_a_killed_one_loses_nothing(
    postgres_url: str,
) -> None:
    async with (
        replica(postgres_url, anonymous_admin=True) as (first, _),
        replica(postgres_url, anonymous_admin=True) as (second, _),
        ChronicleClient.connect(first.address) as admin,
        ChronicleClient.connect(first.address) as on_first,
        ChronicleClient.connect(second.address) as on_second,
    ):
        await admin.groups.create("ledger", aggregate_types=["Account"], segments=SEGMENTS, ack_timeout=30)
        ledger = GroupLedger()
        doomed = ledger.consumer("doomed")
        tasks = [
            asyncio.ensure_future(consume_into(on_first, "ledger", ledger.consumer("one"), ledger)),
            asyncio.ensure_future(consume_into(on_second, "ledger", ledger.consumer("two"), ledger)),
        ]
        # The doomed consumer is a process of its own on the second replica:
        # it acks its first 300 events, then holds what it receives.
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.group_consumer",
            second.address,
            "ledger",
            "doomed",
            "300",
            stdout=asyncio.subprocess.PIPE,
        )
        held_enough = asyncio.Event()

        async def follow_doomed() -> None:
            assert process.stdout is not None
            async for line in process.stdout:
                seen = json.loads(line)
                doomed.received.append(_Seen(seen["event_id"], seen["aggregate_id"], seen["version"]))
                if seen["acked"]:
                    doomed.acked.add(seen["event_id"])
                elif len(doomed.unacked()) >= 20:
                    held_enough.set()

        following = asyncio.ensure_future(follow_doomed())

        async def shared_fairly() -> bool:
            group = await admin.groups.get("ledger")
            return sorted(len(c.segments) for c in group.consumers) == [5, 5, 6]

        await eventually(shared_fairly, what="three consumers holding the 16 segments fairly")

        async def commands() -> list[Command]:
            built = [Command(f"acc-{n}", bank.OpenAccount(owner=f"owner-{n % 7}")) for n in range(AGGREGATES)]
            built += [
                Command(f"acc-{n % AGGREGATES}", bank.Deposit(amount=1 + n % 5)) for n in range(EVENTS - AGGREGATES)
            ]
            return built

        writer = asyncio.ensure_future(_write(admin, await commands()))
        await asyncio.wait_for(held_enough.wait(), 60)
        process.kill()  # SIGKILL mid-stream, holding events it did not ack
        await process.wait()
        await following
        held = doomed.unacked()
        assert len(held) >= 20
        await writer

        expected = {e.event_id: e for e in await _all_events(admin)}
        assert len(expected) == EVENTS

        async def all_acknowledged() -> bool:
            return set(expected) <= ledger.acked()

        await eventually(all_acknowledged, within=60, what="every event acknowledged by the live consumers")

        async def counted() -> bool:
            group = await admin.groups.get("ledger")
            return group.acknowledged == EVENTS and group.position == group.log_head

        await eventually(counted, what="the group's checkpoints past every event")
        group = await admin.groups.get("ledger")
        ledger.check_complete(expected, group)
        ledger.check_order()
        ledger.check_redelivered(doomed)
        live = {c.consumer.split("#")[0] for c in group.consumers}
        assert live == {"one", "two"} and sum(len(c.segments) for c in group.consumers) == SEGMENTS
        # The work was shared: each consumer had a good part of it.
        for name in ("one", "two", "doomed"):
            assert len(ledger.consumers[name].received) > 300, name
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True)
class _Seen:
    """An event as the doomed consumer's process reported it."""

    event_id: str
    aggregate_id: str
    version: int


async def _write(client: ChronicleClient, commands: list[Command]) -> None:
    async for result in client.submit_stream(commands):
        result.result()


async def _all_events(client: ChronicleClient) -> list[Event]:
    """The log, by a plain subscription (it never skips)."""
    events: list[Event] = []
    async for event in client.subscribe(aggregate_types=["Account"]):
        events.append(event)
        if len(events) == EVENTS:
            return events
    raise AssertionError("the subscription ended")
