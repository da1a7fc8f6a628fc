"""The aggregate loader's two ways: one round trip where the store offers
it (``SnapshotAndEvents``: PostgreSQL, tested in
tests/integration/test_snapshots_postgres.py), the snapshot then the events
otherwise, and back to those when the one-round-trip read could not be
made consistent."""

from __future__ import annotations

import uuid
from dataclasses import replace

from google.protobuf.message import Message

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.observability.metrics import Metrics
from service.observability.store_timing import timed
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.state import AggregateLoader
from service.store.base import AggregateQuery, SnapshotKind, Store
from service.store.memory import MemoryStore
from service.store.records import RecordedEvent, Snapshot

REGISTRY = Registry([bank_account.plugin])


class UnluckyStore(MemoryStore):
    """Offers the one-round-trip load, and always finds that a snapshot was
    saved meanwhile (None)."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    async def load_from_snapshot(
        self, aggregate_id: str, kind: SnapshotKind, *, to_version: int | None = None
    ) -> tuple[Snapshot | None, list[RecordedEvent]] | None:
        self.attempts += 1
        return None


def request(aggregate_id: str, message: Message) -> CommandRequest:
    spec = REGISTRY.command(message.DESCRIPTOR.full_name)
    assert spec is not None
    return CommandRequest(command_id=str(uuid.uuid4()), aggregate_id=aggregate_id, spec=spec, message=message)


async def test_a_load_that_could_not_be_read_in_one_round_trip_is_read_in_two() -> None:
    store = UnluckyStore()
    executor = CommandExecutor(Store.of(store), REGISTRY)
    cached = None
    for message in [bank.OpenAccount(owner="ann"), bank.Deposit(amount=5), bank.Deposit(amount=7)]:
        _, cached = await executor.execute(request("acc-1", message), cached)
    assert cached is not None
    await store.save_snapshot(
        Snapshot(
            "acc-1",
            "Account",
            2,
            cached.type.snapshot_state_type,
            cached.type.state_schema_version,
            # not the truth (5): a value that shows the snapshot was read
            bank.Account(owner="ann", balance=100).SerializeToString(),
        )
    )
    store.attempts = 0
    loaded = await AggregateLoader(Store.of(store), REGISTRY).load("acc-1", bank_account.account)
    assert store.attempts == 1
    # the snapshot at version 2, then the deposit of 7 after it
    assert (loaded.version, loaded.state) == (3, bank.Account(owner="ann", balance=107))


async def test_a_store_wrapped_in_one_role_only_is_read_in_two() -> None:
    # A wrapper of the events (encryption, say) must see the events read:
    # the one-round-trip read would go around it.
    store = UnluckyStore()
    wrapped = replace(Store.of(store), events=MemoryStore())
    await AggregateLoader(wrapped, REGISTRY).load("acc-1", bank_account.account)
    assert store.attempts == 0


class OneTripStore(MemoryStore):
    """Offers the one-round-trip load (as the snapshot, then the events
    after it), and counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    async def load_from_snapshot(
        self, aggregate_id: str, kind: SnapshotKind, *, to_version: int | None = None
    ) -> tuple[Snapshot | None, list[RecordedEvent]] | None:
        self.loads += 1
        snapshot = await self.load_snapshot(aggregate_id, at_most=to_version)
        after = snapshot.version if snapshot is not None and kind.usable(snapshot) else 0
        query = AggregateQuery(from_version=after + 1, to_version=to_version)
        return snapshot, await self.read_aggregate(aggregate_id, query)


async def test_timing_the_store_keeps_the_one_round_trip_load() -> None:
    # With metrics on (the server's default with a metrics or console
    # address), the store's roles are wrapped to be timed: one wrapper must
    # play both, or every cold load would take two round trips again.
    store = OneTripStore()
    metrics = Metrics()
    roles = timed(Store.of(store), metrics.store_duration, metrics.conflicts)
    executor = CommandExecutor(roles, REGISTRY)
    _, cached = await executor.execute(request("acc-1", bank.OpenAccount(owner="ann")), None)
    await executor.execute(request("acc-1", bank.Deposit(amount=5)), cached)
    store.loads = 0
    loaded = await AggregateLoader(roles, REGISTRY).load("acc-1", bank_account.account)
    assert store.loads == 1
    assert (loaded.version, loaded.state) == (2, bank.Account(owner="ann", balance=5))
    timed_loads = metrics.registry.get_sample_value(
        "chronicle_store_operation_duration_seconds_count", {"operation": "load_from_snapshot"}
    )
    assert timed_loads == 2  # the first command's load, and this one
