"""A routing Python client given its seed spelt otherwise than the replica
advertises itself (``localhost:PORT`` for ``127.0.0.1:PORT``) knows them
for one member, by the member id the seed answers with
(``Topology.answered_by``), not by the address's spelling: two replica
processes on one PostgreSQL, the seed killed (SIGKILL). A command its
member owned and the reads after it cost one failed attempt in all, not one
under each name (``Routes.adopt``, ``seed_member``)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient, RetryPolicy
from tests.support.processes import Replica, replica
from tests.support.routes import record_marks

pytestmark = pytest.mark.postgres

FAST = RetryPolicy(initial_backoff=0.02, max_backoff=0.2, retry_for=15.0)


@pytest.fixture
def two(postgres_url: str, tmp_path: Path) -> Iterator[list[Replica]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                replica(postgres_url, log_path=tmp_path / f"replica-{n}.log", extra=["--lease-seconds", "2"])
            )
            for n in range(2)
        ]


def shared_by_two(topology: Any) -> bool:
    owners = set(topology.partition_owners)
    return len(topology.members) == 2 and "" not in owners and len(owners) == 2


async def test_a_seed_spelt_otherwise_is_the_member_it_reaches(
    two: list[Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    seed, survivor = two
    given = seed.address.replace("127.0.0.1", "localhost")
    async with ChronicleClient.connect(given, routing=True, retry=FAST) as client:
        routes = client.routes
        assert routes is not None
        await asyncio.wait_for(routes.wait_for_topology(shared_by_two), 30)
        topology = routes.topology
        assert topology is not None
        (seed_id,) = [member.member_id for member in topology.members if member.address == seed.address]
        assert routes.seed_member == seed_id
        tag = uuid.uuid4().hex[:8]
        ids = [f"acc-{tag}-{n}" for n in range(64)]
        # The seed's partitions are owned by the address given; the other's as it advertises itself.
        assert {routes.owner_of(aggregate_id) for aggregate_id in ids} == {given, survivor.address}
        on_seed = next(aggregate_id for aggregate_id in ids if routes.owner_of(aggregate_id) == given)
        opened = await client.submit(on_seed, bank.OpenAccount(owner="ann"))
        assert routes.failovers == 0
        assert [routes.reader() for _ in range(3)] == [given] * 3  # reads stay on the seed while it is up

        marked = record_marks(routes, monkeypatch)
        seed.stop(signal.SIGKILL)
        deposited = await client.submit(on_seed, bank.Deposit(amount=5))  # its owner is dead: the survivor runs it
        state = await client.get_aggregate(on_seed, bank.Account, min_position=deposited.position)
        events = await client.read_all(on_seed)
        # One failed attempt for the dead replica, under the name given; the
        # reads went to the survivor at once, not to the seed's other name.
        assert marked == [given]
        assert (opened.version, state.version, state.state.balance, len(events)) == (1, 2, 5, 2)
