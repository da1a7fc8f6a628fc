"""Projection runners on the memory store: each event applied exactly once,
through crashes, failures and a second runner of the same projection."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.bank_account.read_model import account_key, owner_key
from service.errors import ConcurrencyConflict, ProjectionFailed
from service.plugins import Plugin
from service.plugins.projections import Documents, ProjectedEvent
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.projections import DocumentCache, Parking, ProjectionRunner
from service.processing.upcasting import EventReader
from service.store.base import Store
from service.store.encrypted import encrypted
from service.store.encryption import Keyring, MasterKeys, new_master_key
from service.store.leasing import Fencing
from service.store.memory import MemoryStore
from service.store.records import DocumentWrite, ParkedEvent, StoredDocument
from service.transfer.deleting import delete_aggregate
from tests.support.contents import contents
from tests.support.crashing import CrashingStore
from tests.support.fenced import FencedCommits, HandLease
from tests.support.waiting import eventually

REGISTRY = Registry([bank_account.plugin])
READER = EventReader(REGISTRY)


async def run(store: MemoryStore, aggregate_id: str, message: Any) -> None:
    spec = REGISTRY.command(message.DESCRIPTOR.full_name)
    assert spec is not None
    await CommandExecutor(Store.of(store), REGISTRY).execute(
        CommandRequest(command_id=str(uuid.uuid4()), aggregate_id=aggregate_id, spec=spec, message=message), None
    )


async def bank_history(store: MemoryStore) -> None:
    await run(store, "acc-1", bank.OpenAccount(owner="ann"))
    await run(store, "acc-2", bank.OpenAccount(owner="ann"))
    await run(store, "acc-3", bank.OpenAccount(owner="bob"))
    await run(store, "acc-1", bank.Deposit(amount=100))
    await run(store, "acc-2", bank.Deposit(amount=20))
    await run(store, "acc-3", bank.Deposit(amount=7))
    await run(store, "acc-1", bank.Withdraw(amount=30))


async def owner(store: Any, name: str) -> bank.OwnerBalance:
    stored = await store.load_document("bank.balances_by_owner", owner_key(name))
    assert stored is not None
    assert stored.type_name == "bank.v1.OwnerBalance"
    return bank.OwnerBalance.FromString(stored.data)


def runner(store: Any, *, batch_size: int | None = None) -> ProjectionRunner:
    projection = bank_account.balances_by_owner
    if batch_size is not None:
        # Small batches throughout (catching up too): the tests below need
        # several commits, one overlapping the next batch.
        projection.batch_size = projection.catch_up_batch_size = batch_size
    return ProjectionRunner(projection, log=store, documents=store, reader=READER, retry_interval=0.01)


@pytest.fixture(autouse=True)
def _restore_batch_size() -> Any:
    projection = bank_account.balances_by_owner
    sizes = projection.batch_size, projection.catch_up_batch_size
    yield
    projection.batch_size, projection.catch_up_batch_size = sizes


async def test_the_read_model_follows_the_log() -> None:
    store = MemoryStore()
    await bank_history(store)
    position = await runner(store).step(0)
    assert position == await store.log_head()
    assert await owner(store, "ann") == bank.OwnerBalance(owner="ann", balance=90, account_ids=["acc-1", "acc-2"])
    assert await owner(store, "bob") == bank.OwnerBalance(owner="bob", balance=7, account_ids=["acc-3"])
    assert await store.projection_position("bank.balances_by_owner") == position


async def test_small_batches_give_the_same_read_model() -> None:
    store = MemoryStore()
    await bank_history(store)
    await runner(store, batch_size=2).step(0)
    assert (await owner(store, "ann")).balance == 90


async def test_a_crash_before_the_commit_applies_the_batch_again_not_twice() -> None:
    store = CrashingStore(crashes=1)
    await bank_history(store)
    with pytest.raises(RuntimeError):
        await runner(store, batch_size=3).step(0)
    # a new runner (the restarted process) starts from the stored checkpoint
    restarted = runner(store, batch_size=3)
    await restarted.step(await store.projection_position("bank.balances_by_owner"))
    assert (await owner(store, "ann")).balance == 90
    assert (await owner(store, "bob")).balance == 7


async def test_a_running_projection_survives_an_unexpected_failure_and_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A bug's exception (not a ChronicleError) in a batch's commit: the
    # runner logs it, retries from the checkpoint and catches up, rather
    # than ending for good and leaving the read model behind until a restart.
    store = CrashingStore(crashes=1)
    await bank_history(store)
    projection = ProjectionRunner(
        bank_account.balances_by_owner,
        log=store,
        documents=store,
        reader=READER,
        retry_interval=0.01,
        poll_interval=0.01,
    )
    projection.start()
    try:
        await eventually(lambda: projection.status.position == 7, what="caught up")
    finally:
        await projection.stop()
    assert "killed before commit" in caplog.text
    assert (await owner(store, "ann")).balance == 90
    assert (await owner(store, "bob")).balance == 7


class FailingLaterCommit(MemoryStore):
    """The ``fail_at``-th commit fails (after the batches before it, and
    while the next one is being applied)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.commits: list[tuple[int, int]] = []

    async def commit_projection(
        self,
        name: str,
        *,
        expected_position: int,
        new_position: int,
        writes: Sequence[DocumentWrite],
        fencing: Fencing | None = None,
        parked: Sequence[ParkedEvent] = (),
    ) -> None:
        self.commits.append((expected_position, new_position))
        await asyncio.sleep(0)  # the runner applies the next batch meanwhile
        if len(self.commits) == self.fail_at:
            raise RuntimeError("the database went away mid-commit")
        await super().commit_projection(
            name,
            expected_position=expected_position,
            new_position=new_position,
            writes=writes,
            fencing=fencing,
            parked=parked,
        )


async def test_a_failed_commit_while_the_next_batch_is_applied_commits_nothing_after_it() -> None:
    store = FailingLaterCommit(fail_at=2)
    await bank_history(store)
    catching_up = runner(store, batch_size=2)
    with pytest.raises(RuntimeError):
        await catching_up.step(0)
    # the first batch committed; the second failed; nothing after it did
    assert await store.projection_position("bank.balances_by_owner") == store.commits[0][1]
    assert [start for start, _ in store.commits] == [0, store.commits[0][1]]
    # the same runner (its cache emptied) goes on from the stored checkpoint
    await catching_up.step(await store.projection_position("bank.balances_by_owner"))
    assert (await owner(store, "ann")).balance == 90
    assert (await owner(store, "bob")).balance == 7
    # the failed batch again, from the stored checkpoint, then each commit
    # from where the one before ended: none skipped or doubled
    starts, ends = [a for a, _ in store.commits], [b for _, b in store.commits]
    assert starts[2] == ends[0]
    assert starts[3:] == ends[2:-1]
    assert ends[-1] == await store.log_head()


async def test_a_second_runner_of_the_same_projection_never_doubles_an_event() -> None:
    store = MemoryStore()
    await bank_history(store)
    first, second = runner(store), runner(store)
    await first.step(0)
    # the second one still thinks the projection is at 0: its commit must fail
    with pytest.raises(ConcurrencyConflict):
        await second.step(0)
    assert (await owner(store, "ann")).balance == 90


async def test_cached_documents_are_dropped_when_another_runner_moved_the_projection_on() -> None:
    store = MemoryStore()
    await bank_history(store)
    first, second = runner(store, batch_size=3), runner(store, batch_size=3)
    position = await first.step(0)  # the first caches ann's documents as of the whole history
    await run(store, "acc-1", bank.Deposit(amount=1000))
    await second.step(position)  # the second applies the deposit: ann's balance moves on
    await run(store, "acc-2", bank.Deposit(amount=5))
    # the first, still at its old checkpoint, conflicts; from the checkpoint it
    # reloads, it must not apply the next deposit to the balance it cached
    with pytest.raises(ConcurrencyConflict):
        await first.step(position)
    await first.step(await store.projection_position("bank.balances_by_owner"))
    assert (await owner(store, "ann")).balance == 90 + 1000 + 5


async def test_a_runner_reads_each_document_from_the_store_once() -> None:
    store = CountingDocuments()
    await bank_history(store)
    projection_runner = runner(store, batch_size=2)
    await projection_runner.step(0)
    loads = store.loads
    await run(store, "acc-1", bank.Deposit(amount=1))
    await run(store, "acc-3", bank.Deposit(amount=1))
    await projection_runner.step(await store.projection_position("bank.balances_by_owner"))
    assert store.loads == loads  # both accounts and owners were read already
    assert (await owner(store, "ann")).balance == 91


class CountingDocuments(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    async def load_documents(self, projection: str, keys: Sequence[str]) -> Any:
        self.loads += len(keys)
        return await super().load_documents(projection, keys)


sloppy = Plugin("sloppy")
counted = sloppy.projection("sloppy.counts", aggregate_types=["Account"])


@counted.on(bank.MoneyDeposited)
def _count(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    if event.amount == 13:
        raise ValueError("unlucky")
    total = documents.get("total", bank.AccountBalance) or bank.AccountBalance()
    total.balance += event.amount
    documents.put("total", total)
    # reading a document after writing it in the same call sees the write
    again = documents.get("total", bank.AccountBalance)
    assert again == total


async def test_a_failing_handler_stops_the_projection_at_that_event_with_the_batch_before_it_committed() -> None:
    store = MemoryStore()
    await run(store, "acc-1", bank.OpenAccount(owner="ann"))
    await run(store, "acc-1", bank.Deposit(amount=5))
    await run(store, "acc-1", bank.Deposit(amount=13))
    await run(store, "acc-1", bank.Deposit(amount=7))
    (_, _, unlucky, _) = await store.read_aggregate("acc-1")
    projection_runner = ProjectionRunner(counted, log=store, documents=store, reader=READER)
    with pytest.raises(ProjectionFailed) as raised:
        await projection_runner.step(0)
    assert raised.value.reason == "PROJECTION_FAILED"
    # One batch, committed up to just before the event its handler failed on:
    # the deposit of 5 is in, neither 13 nor the 7 after it.
    assert await store.projection_position("sloppy.counts") == unlucky.position - 1
    assert projection_runner.status.position == unlucky.position - 1
    total = await store.load_document("sloppy.counts", "total")
    assert total is not None and bank.AccountBalance.FromString(total.data).balance == 5
    # Tried again, it fails on the same event and changes nothing more.
    before = await contents(store)
    with pytest.raises(ProjectionFailed):
        await projection_runner.step(unlucky.position - 1)
    assert (await contents(store)).changes_since(before) == {}


async def test_documents_read_within_a_batch_see_the_batch_s_own_writes() -> None:
    store = MemoryStore()
    await run(store, "acc-1", bank.OpenAccount(owner="ann"))
    for amount in (1, 2, 3):
        await run(store, "acc-1", bank.Deposit(amount=amount))
    await ProjectionRunner(counted, log=store, documents=store, reader=READER).step(0)
    total = await store.load_document("sloppy.counts", "total")
    assert total is not None
    assert bank.AccountBalance.FromString(total.data).balance == 6


async def test_account_documents_track_each_account() -> None:
    store = MemoryStore()
    await bank_history(store)
    await runner(store).step(0)
    stored = await store.load_document("bank.balances_by_owner", account_key("acc-1"))
    assert stored is not None
    assert bank.AccountBalance.FromString(stored.data) == bank.AccountBalance(owner="ann", balance=70)


class ClosedUnderneath(MemoryStore):
    """A store closed by someone else while a runner still uses it (two
    servers in one process sharing a store: the first to stop closes it)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = asyncio.Event()

    async def projection_position(self, name: str) -> int:
        self.failed.set()  # the runner retries until it is stopped
        raise RuntimeError("Cannot operate on a closed database.")


async def test_stopping_a_runner_whose_store_failed_under_it_does_not_stop_the_shutdown() -> None:
    store = ClosedUnderneath()
    stopping = runner(store)
    stopping.start()
    await store.failed.wait()
    await stopping.stop()  # logs the failure; the rest of the shutdown goes on
    assert not stopping.status.running


# -- forgetting: documents named after their subjects ----------------------------


@pytest.mark.parametrize("batch_size", [None, 1], ids=["one batch", "commits overlapping the next batch"])
async def test_a_forgotten_accounts_documents_do_not_come_back_from_a_runners_cache(batch_size: int | None) -> None:
    raw = MemoryStore()
    keyring = Keyring(raw, MasterKeys.parse(f"k1:{new_master_key()}", source="test"))
    roles = encrypted(Store.of(raw), keyring)

    async def submit(aggregate_id: str, message: Any) -> None:
        spec = REGISTRY.command(message.DESCRIPTOR.full_name)
        assert spec is not None
        request = CommandRequest(command_id=str(uuid.uuid4()), aggregate_id=aggregate_id, spec=spec, message=message)
        await CommandExecutor(roles, REGISTRY).execute(request, None)

    for aggregate_id, message in [
        ("acc-1", bank.OpenAccount(owner="ann")),
        ("acc-2", bank.OpenAccount(owner="ann")),
        ("acc-1", bank.Deposit(amount=100)),
        ("acc-2", bank.Deposit(amount=20)),
    ]:
        await submit(aggregate_id, message)
    projection = bank_account.balances_by_owner
    cached = ProjectionRunner(projection, log=roles.log, documents=roles.projections, reader=READER)
    position = await cached.step(0)  # holds ann's documents, acc-1's balance in them, in its cache
    assert (await owner(roles.projections, "ann")).balance == 120

    await keyring.forget("acc-1")
    assert await roles.projections.load_document(projection.name, account_key("acc-1")) is None
    assert await roles.projections.load_document(projection.name, owner_key("ann")) is None
    assert await roles.projections.load_document(projection.name, account_key("acc-2")) is not None

    if batch_size is not None:
        projection.batch_size = projection.catch_up_batch_size = batch_size
    await submit("acc-2", bank.Deposit(amount=5))
    await submit("acc-3", bank.OpenAccount(owner="bob"))
    await submit("acc-2", bank.Deposit(amount=1))
    # The commit of ann's stale document is refused (SubjectsForgotten): the
    # batches are applied again from the stored checkpoint, without the cache.
    assert await cached.step(position) == await raw.log_head()
    # Made again at acc-2's next event, from acc-2's own document (its whole
    # balance, as a rebuild counts it), as a runner without a cache would have.
    assert await owner(roles.projections, "ann") == bank.OwnerBalance(owner="ann", balance=26, account_ids=["acc-2"])
    assert await owner(roles.projections, "bob") == bank.OwnerBalance(owner="bob", balance=0, account_ids=["acc-3"])
    assert await roles.projections.load_document(projection.name, account_key("acc-1")) is None
    assert cached.status.error == ""


async def test_documents_read_together_through_encryption_come_back_under_their_keys_in_plaintext() -> None:
    raw = MemoryStore()
    keyring = Keyring(raw, MasterKeys.parse(f"k1:{new_master_key()}", source="test"))
    roles = encrypted(Store.of(raw), keyring)
    writes = [DocumentWrite(f"owner:{name}", "t.Doc", name.encode()) for name in ("ann", "bob")]
    await roles.projections.commit_projection("p", expected_position=0, new_position=1, writes=writes)

    found = await roles.projections.load_documents("p", ["owner:ann", "owner:bob", "owner:eve"])

    assert sorted(found, key=lambda document: document.key) == [
        StoredDocument("owner:ann", "t.Doc", b"ann"),
        StoredDocument("owner:bob", "t.Doc", b"bob"),
    ]
    # Below the encryption, neither the keys nor the documents are in the clear.
    assert await raw.load_documents("p", ["owner:ann", "owner:bob"]) == []
    assert all(b"ann" not in document.data for document in raw._documents.values())


async def test_after_a_deleted_account_its_owner_s_document_names_the_others_and_goes_with_them() -> None:
    # The read model drops a deleted account from its owner's document; the
    # document still names the owner's other accounts as its subjects, so
    # that forgetting one of them deletes it.
    raw = MemoryStore()
    keyring = Keyring(raw, MasterKeys.parse(f"k1:{new_master_key()}", source="test"))
    roles = encrypted(Store.of(raw), keyring)
    for aggregate_id, message in [
        ("acc-1", bank.OpenAccount(owner="ann")),
        ("acc-2", bank.OpenAccount(owner="ann")),
        ("acc-1", bank.Deposit(amount=100)),
        ("acc-2", bank.Deposit(amount=20)),
    ]:
        spec = REGISTRY.command(message.DESCRIPTOR.full_name)
        assert spec is not None
        request = CommandRequest(command_id=str(uuid.uuid4()), aggregate_id=aggregate_id, spec=spec, message=message)
        await CommandExecutor(roles, REGISTRY).execute(request, None)
    projection = bank_account.balances_by_owner
    applied = ProjectionRunner(projection, log=roles.log, documents=roles.projections, reader=READER)
    position = await applied.step(0)
    assert (await owner(roles.projections, "ann")).account_ids == ["acc-1", "acc-2"]
    await delete_aggregate(Store.of(raw), "acc-1", reason="closed")
    await applied.step(position)  # the tombstone
    assert await owner(roles.projections, "ann") == bank.OwnerBalance(owner="ann", balance=20, account_ids=["acc-2"])
    assert await roles.projections.load_document(projection.name, account_key("acc-1")) is None
    await keyring.forget("acc-2")
    assert await roles.projections.load_document(projection.name, owner_key("ann")) is None


async def test_deleting_an_owner_s_last_account_deletes_its_documents() -> None:
    """What the read model's docstring promises: a deleted account leaves
    none of its owner's documents behind once it was the owner's last."""
    raw = MemoryStore()
    roles = encrypted(Store.of(raw), Keyring(raw, MasterKeys.parse(f"k1:{new_master_key()}", source="test")))
    for message in (bank.OpenAccount(owner="ann"), bank.Deposit(amount=100)):
        spec = REGISTRY.command(message.DESCRIPTOR.full_name)
        assert spec is not None
        request = CommandRequest(command_id=str(uuid.uuid4()), aggregate_id="acc-1", spec=spec, message=message)
        await CommandExecutor(roles, REGISTRY).execute(request, None)
    projection = bank_account.balances_by_owner
    applied = ProjectionRunner(projection, log=roles.log, documents=roles.projections, reader=READER)
    position = await applied.step(0)
    assert (await owner(roles.projections, "ann")).balance == 100
    await delete_aggregate(Store.of(raw), "acc-1", reason="closed")
    await applied.step(position)  # the tombstone
    for key in (owner_key("ann"), account_key("acc-1")):
        assert await roles.projections.load_document(projection.name, key) is None, key


async def test_a_projection_rebuilt_after_a_forget_skips_the_redacted_events() -> None:
    raw = MemoryStore()
    keyring = Keyring(raw, MasterKeys.parse(f"k1:{new_master_key()}", source="test"))
    roles = encrypted(Store.of(raw), keyring)
    executor = CommandExecutor(roles, REGISTRY)
    for aggregate_id, message in [
        ("acc-1", bank.OpenAccount(owner="ann")),
        ("acc-2", bank.OpenAccount(owner="ann")),
        ("acc-1", bank.Deposit(amount=100)),
        ("acc-2", bank.Deposit(amount=20)),
    ]:
        spec = REGISTRY.command(message.DESCRIPTOR.full_name)
        assert spec is not None
        request = CommandRequest(command_id=str(uuid.uuid4()), aggregate_id=aggregate_id, spec=spec, message=message)
        await executor.execute(request, None)
    await keyring.forget("acc-1")
    rebuilt = ProjectionRunner(
        bank_account.balances_by_owner, log=roles.log, documents=roles.projections, reader=READER
    )
    assert await rebuilt.step(0) == await raw.log_head()  # not stuck on acc-1's redacted events
    assert await owner(roles.projections, "ann") == bank.OwnerBalance(owner="ann", balance=20, account_ids=["acc-2"])


async def test_without_its_lease_a_runner_applies_nothing_and_with_it_commits_under_the_token() -> None:
    store = FencedCommits()
    await bank_history(store)
    lease = HandLease()
    held = ProjectionRunner(bank_account.balances_by_owner, log=store, documents=store, reader=READER, lease=lease)
    assert not held.holds_lease
    assert await held.step(0) == 0  # another replica runs it
    assert await store.projection_position("bank.balances_by_owner") == 0
    lease.token = Fencing("projections", "bank.balances_by_owner", "me", 3)
    assert held.holds_lease
    head = await held.step(0)
    assert head == await store.log_head()
    assert store.tokens == [lease.token]


async def test_a_runner_that_gains_its_lease_starts_from_the_stored_checkpoint() -> None:
    store = MemoryStore()
    await bank_history(store)
    lease = HandLease()
    lease.token = Fencing("projections", "bank.balances_by_owner", "me", 1)
    first = ProjectionRunner(bank_account.balances_by_owner, log=store, documents=store, reader=READER, lease=lease)
    # Another replica ran the projection to the end while this one did not hold it.
    await runner(store).step(0)
    lease.token = Fencing("projections", "bank.balances_by_owner", "me", 3)
    # Given a stale position, it reads the checkpoint instead of applying again.
    assert await first.step(0) == await store.log_head()
    assert await owner(store, "ann") == bank.OwnerBalance(owner="ann", balance=90, account_ids=["acc-1", "acc-2"])


# -- parking events a handler keeps failing on -----------------------------------

picky = Plugin("picky")
parking = picky.projection(
    "picky.deposits", aggregate_types=["Account"], on_failure="park", max_attempts=2, retry_seconds=0.01
)
stopping = picky.projection("picky.stops", aggregate_types=["Account"])


def _count_deposit(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    if event.amount == 20:
        raise ValueError("twenty is unlucky")
    total = documents.get("total", bank.OwnerBalance) or bank.OwnerBalance(owner="all")
    total.balance += event.amount
    documents.put("total", total)


parking.on(bank.MoneyDeposited)(_count_deposit)
stopping.on(bank.MoneyDeposited)(_count_deposit)


async def test_a_projection_that_parks_skips_an_event_after_its_attempts_and_goes_on() -> None:
    store = MemoryStore()
    await bank_history(store)
    head = await store.log_head()
    parks = ProjectionRunner(parking, log=store, documents=store, reader=READER)
    with pytest.raises(ProjectionFailed):
        await parks.step(0)  # the first attempt fails and stops the batch
    assert await store.count_parked_events("picky.deposits") == 0
    assert await parks.step(await store.projection_position("picky.deposits")) == head  # the second parks it
    total = await store.load_document("picky.deposits", "total")
    assert total is not None and bank.OwnerBalance.FromString(total.data).balance == 107
    (parked,) = await store.parked_events("picky.deposits")
    deposit = next(e for e in await store.read_aggregate("acc-2") if e.event_type == "bank.v1.MoneyDeposited")
    assert (parked.position, parked.event_id, parked.event_type, parked.aggregate_id, parked.attempts) == (
        deposit.position,
        deposit.event_id,
        "bank.v1.MoneyDeposited",
        "acc-2",
        2,
    )
    assert "ValueError: twenty is unlucky" in parked.error


async def test_a_projection_that_stops_never_parks() -> None:
    store = MemoryStore()
    await bank_history(store)
    stops = ProjectionRunner(stopping, log=store, documents=store, reader=READER)
    for _ in range(4):
        with pytest.raises(ProjectionFailed):
            await stops.step(await store.projection_position("picky.stops"))
    assert await store.count_parked_events("picky.stops") == 0
    assert await store.projection_position("picky.stops") < await store.log_head()


unlucky = picky.projection(
    "picky.unlucky", aggregate_types=["Account"], on_failure="park", max_attempts=2, retry_seconds=0.01
)


@unlucky.on(bank.MoneyDeposited)
def _refuse_small(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    if event.amount < 100:
        raise ValueError(f"{event.amount} is too small")


async def test_a_parked_event_is_said_once_when_a_later_event_fails_the_batch_that_parks_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """acc-2's deposit and acc-3's, one batch: the first is set aside at its
    second attempt, then the second's first failure fails the batch, which
    is tried again (and sets the first aside again) before it commits. Each
    is parked once, and said once: when the commit that parks it is in."""
    store = MemoryStore()
    await bank_history(store)
    parks = ProjectionRunner(unlucky, log=store, documents=store, reader=READER)
    position = 0
    for _ in range(2):
        with pytest.raises(ProjectionFailed):
            await parks.step(position)
        position = await store.projection_position("picky.unlucky")
    assert await parks.step(position) == await store.log_head()
    parked = [e.position for e in await store.parked_events("picky.unlucky")]
    said = [r.getMessage() for r in caplog.records if "picky.unlucky parks" in r.getMessage()]
    assert len(parked) == 2
    assert [sum(f"at position {p} " in line for line in said) for p in parked] == [1, 1], said


async def test_a_runner_reports_a_failure_as_current_only_while_it_runs_the_projection_here() -> None:
    """A failure holds the projection here while this replica runs it; once
    another replica holds the lease it is over here (``error`` and
    ``error_now`` empty), kept as ``last_error`` with its time."""
    store = MemoryStore()
    await bank_history(store)
    lease = HandLease()
    lease.token = Fencing("projections", "picky.stops", "me", 1)
    stops = ProjectionRunner(stopping, log=store, documents=store, reader=READER, retry_interval=0.01, lease=lease)
    stops.start()
    try:
        await eventually(lambda: "twenty is unlucky" in stops.status.error, what="the failure")
        assert stops.error_now == stops.status.error and stops.status.parking is None
        lease.token = None  # another replica runs it now
        assert stops.error_now == ""  # at once, whatever the runner is doing
        await eventually(lambda: stops.status.error == "", what="the failure over here")
        assert stops.status.running and "twenty is unlucky" in stops.status.last_error
        assert time.time() - 60 < stops.status.last_error_at <= time.time()
    finally:
        await stops.stop()
    assert not stops.status.running and stops.error_now == ""


async def test_a_projection_that_parks_reports_the_event_it_will_park_while_it_tries_it_again() -> None:
    store = MemoryStore()
    await bank_history(store)
    parks = ProjectionRunner(parking, log=store, documents=store, reader=READER, retry_interval=60)
    parks.start()
    try:
        await eventually(lambda: parks.status.error != "", what="the first failed attempt")
        deposit = next(e for e in await store.read_aggregate("acc-2") if e.event_type == "bank.v1.MoneyDeposited")
        assert parks.status.parking == Parking(deposit.position, 1, 2)
    finally:
        await parks.stop()
    assert parks.status.parking is None


class LoadRounds(MemoryStore):
    """Counts the documents loaded, and the reads (rounds) that loaded them."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = self.rounds = 0

    async def load_documents(self, projection: str, keys: Sequence[str]) -> Any:
        self.rounds += 1
        self.loads += len(keys)
        await asyncio.sleep(0)  # a round trip
        return await super().load_documents(projection, keys)


async def test_a_runner_with_a_cold_cache_loads_a_batch_s_documents_in_a_few_rounds() -> None:
    store = LoadRounds()
    accounts = [f"acc-{n}" for n in range(60)]
    for n, account in enumerate(accounts):
        await run(store, account, bank.OpenAccount(owner=f"owner-{n}"))
    opened = await runner(store).step(0)
    for account in accounts:
        await run(store, account, bank.Deposit(amount=3))
    cold = runner(store)  # a new runner (a restart): nothing cached
    store.loads = store.rounds = 0

    await cold.step(opened)

    # 60 accounts, then their 60 owners (known once the accounts are read):
    # each document read once, in a few rounds rather than one per document.
    assert store.loads == 120
    assert store.rounds <= 3
    assert [(await owner(store, f"owner-{n}")).balance for n in range(60)] == [3] * 60


async def test_a_rare_miss_in_a_warm_cache_looks_only_a_little_way_ahead() -> None:
    store = LoadRounds()
    for n in range(3):
        await run(store, f"acc-{n}", bank.OpenAccount(owner="ann"))
    warm = runner(store)
    position = await warm.step(0)
    for _ in range(100):
        await run(store, "acc-0", bank.Deposit(amount=1))
    await run(store, "acc-1", bank.Deposit(amount=1))
    warm._cache.clear()  # as if acc-0 and ann had left the cache
    store.loads = store.rounds = 0
    probes = 0
    probe = warm._probe

    def counted(*args: Any) -> Any:
        nonlocal probes
        probes += 1
        return probe(*args)

    warm._probe = counted  # type: ignore[method-assign,assignment]
    await warm.step(position)

    # acc-0, then ann (known once acc-0 is read), then acc-1: its deposit
    # comes 100 events later, beyond the look-ahead, and is read on its own.
    assert (store.loads, store.rounds) == (3, 3)
    assert probes == 2 * 32  # two looks ahead, each stopped after 32 events that needed nothing new
    assert (await owner(store, "ann")).balance == 101


async def test_a_handler_that_needs_more_documents_than_the_cache_holds_is_applied() -> None:
    # Each deposit's handler reads five documents; the cache holds two. The
    # documents a batch loaded stay with the batch whatever the cache evicts
    # (without that, the runner loaded, lost and loaded them for ever).
    store = MemoryStore()
    await run(store, "acc-1", bank.OpenAccount(owner="ann"))
    for _ in range(3):
        await run(store, "acc-1", bank.Deposit(amount=1))
    projection = Plugin("wide").projection("wide.reads", aggregate_types=["Account"])
    keys = [f"shelf-{n}" for n in range(5)]

    @projection.on(bank.MoneyDeposited)
    def _deposited(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
        seen = [documents.get(key, bank.OwnerBalance) for key in keys]
        total = documents.get("total", bank.OwnerBalance) or bank.OwnerBalance()
        total.balance += event.amount + sum(1 for found in seen if found is None)
        documents.put("total", total)

    wide = ProjectionRunner(projection, log=store, documents=store, reader=READER)
    wide._cache = DocumentCache(size=2)
    assert await asyncio.wait_for(wide.step(0), timeout=30) == 4
    stored = await store.load_document("wide.reads", "total")
    assert stored is not None
    assert bank.OwnerBalance.FromString(stored.data).balance == 3 * (1 + len(keys))


class CommitSizes(MemoryStore):
    """Records how far each projection commit moved the checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.moves: list[int] = []

    async def commit_projection(self, name: str, *, expected_position: int, new_position: int, **rest: Any) -> None:
        await super().commit_projection(name, expected_position=expected_position, new_position=new_position, **rest)
        self.moves.append(new_position - expected_position)


async def test_a_projection_far_behind_commits_in_catch_up_batches_then_in_its_own() -> None:
    store = CommitSizes()
    for n in range(1, 6):
        await run(store, f"acc-{n}", bank.OpenAccount(owner=f"owner-{n % 2}"))
    for _ in range(9):
        for n in range(1, 6):
            await run(store, f"acc-{n}", bank.Deposit(amount=n))
    projection = bank_account.balances_by_owner
    projection.batch_size, projection.catch_up_batch_size = 4, 20
    catching_up = ProjectionRunner(projection, log=store, documents=store, reader=READER)

    position = await catching_up.step(0)

    # The first page is a live one; the pages after a full one are bigger.
    assert store.moves == [4, 20, 20, 6]
    assert (await owner(store, "owner-1")).balance == 9 * (1 + 3 + 5)
    store.moves.clear()
    await run(store, "acc-1", bank.Deposit(amount=1))
    await run(store, "acc-2", bank.Deposit(amount=1))
    assert await catching_up.step(position) == await store.log_head()
    assert store.moves == [2]


class SlowCommits(MemoryStore):
    """Commits that take a while (several turns of the loop), counting the
    document loads made while one is under way. Each commit empties the
    runner's cache as it starts (``evict``), as a read model far larger than
    the cache would: the next batch must read even what this one wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.evict: Callable[[], None] = lambda: None
        self.committing = False
        self.loads_during_commits = 0

    async def commit_projection(self, name: str, **rest: Any) -> None:
        self.evict()
        self.committing = True
        try:
            for _ in range(20):
                await asyncio.sleep(0)
            await super().commit_projection(name, **rest)
        finally:
            self.committing = False

    async def load_documents(self, projection: str, keys: Sequence[str]) -> Any:
        self.loads_during_commits += self.committing
        return await super().load_documents(projection, keys)


async def slow_commits_runner(store: SlowCommits, accounts: int) -> tuple[ProjectionRunner, int]:
    """A runner that has applied ``accounts`` openings, and from now on
    finds nothing in its cache after each commit."""
    for n in range(accounts):
        await run(store, f"acc-{n}", bank.OpenAccount(owner=f"owner-{n}"))
    catching_up = runner(store, batch_size=2)
    position = await catching_up.step(0)
    store.evict = catching_up._cache.clear
    return catching_up, position


async def test_a_document_the_commit_in_flight_writes_is_read_once_it_is_in() -> None:
    store = SlowCommits()
    catching_up, position = await slow_commits_runner(store, 6)
    # Every batch deposits into acc-0 (written by the batch before, whose
    # commit is still under way, and gone from the one-document cache).
    for n in range(1, 6):
        await run(store, "acc-0", bank.Deposit(amount=10))
        await run(store, f"acc-{n}", bank.Deposit(amount=1))

    await catching_up.step(position)

    # Read before the commit that wrote it was in, acc-0's document would
    # have lost deposits.
    assert (await owner(store, "owner-0")).balance == 50
    assert [(await owner(store, f"owner-{n}")).balance for n in range(1, 6)] == [1] * 5


async def test_documents_the_commit_in_flight_does_not_write_are_read_while_it_commits() -> None:
    store = SlowCommits()
    catching_up, position = await slow_commits_runner(store, 10)
    for n in range(10):
        await run(store, f"acc-{n}", bank.Deposit(amount=n + 1))

    await catching_up.step(position)

    # Each batch's accounts differ from the one before: their documents are
    # read while that one commits (PostgreSQL works on both at once).
    assert store.loads_during_commits > 0
    assert [(await owner(store, f"owner-{n}")).balance for n in range(10)] == list(range(1, 11))


def test_a_projection_s_catch_up_batches_are_no_smaller_than_its_batches() -> None:
    assert Plugin("x").projection("x.p", batch_size=500).catch_up_batch_size == 2_000
    assert Plugin("x").projection("x.p", batch_size=5_000).catch_up_batch_size == 5_000
    assert Plugin("x").projection("x.p", catch_up_batch_size=300).catch_up_batch_size == 300
    with pytest.raises(ValueError, match="catch_up_batch_size"):
        Plugin("x").projection("x.p", batch_size=100, catch_up_batch_size=50)


def test_a_projection_declares_how_it_fails() -> None:
    with pytest.raises(ValueError, match="on_failure"):
        Plugin("x").projection("x.p", on_failure="skip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_attempts"):
        Plugin("x").projection("x.p", on_failure="park", max_attempts=0)


# -- rebuilding ---------------------------------------------------------------------


async def test_an_idle_runner_finds_its_projection_rebuilt_and_applies_the_log_again() -> None:
    store = MemoryStore()
    await bank_history(store)
    idle = runner(store)
    head = await idle.step(0)
    before = await contents(store)
    await store.reset_projection("bank.balances_by_owner")
    assert await owner_or_none(store, "ann") is None
    # Nothing new in the log: the runner looks at the checkpoint, finds 0,
    # forgets its cache and starts again.
    assert await idle.step(head) == 0
    assert await idle.step(0) == head
    assert (await contents(store)).changes_since(before) == {}


async def test_a_batch_applied_before_a_rebuild_is_not_committed_after_it() -> None:
    store = ResetDuringCommit()
    await bank_history(store)
    racing = runner(store, batch_size=3)
    position = await racing.step(0)
    await run(store, "acc-1", bank.Deposit(amount=1000))
    store.reset_before_next_commit = True
    with pytest.raises(ConcurrencyConflict):
        await racing.step(position)
    assert await store.projection_position("bank.balances_by_owner") == 0
    assert await owner_or_none(store, "ann") is None
    assert await racing.step(0) == await store.log_head()
    assert (await owner(store, "ann")).balance == 1090


async def owner_or_none(store: Any, name: str) -> Any:
    return await store.load_document("bank.balances_by_owner", owner_key(name))


class ResetDuringCommit(MemoryStore):
    """An administrator rebuilds the projection while a batch is applied."""

    reset_before_next_commit = False

    async def commit_projection(
        self,
        name: str,
        *,
        expected_position: int,
        new_position: int,
        writes: Sequence[DocumentWrite],
        fencing: Fencing | None = None,
        parked: Sequence[ParkedEvent] = (),
    ) -> None:
        if self.reset_before_next_commit:
            self.reset_before_next_commit = False
            await self.reset_projection(name)
        await super().commit_projection(
            name,
            expected_position=expected_position,
            new_position=new_position,
            writes=writes,
            fencing=fencing,
            parked=parked,
        )


async def test_a_projection_keeps_as_many_documents_between_batches_as_its_cache_size() -> None:
    store = LoadRounds()
    for n in range(3):
        await run(store, f"acc-{n}", bank.OpenAccount(owner=f"owner-{n}"))
    plugin = Plugin("sized")
    roomy = plugin.projection("sized.roomy", aggregate_types=["Account"])
    tight = plugin.projection("sized.tight", aggregate_types=["Account"], cache_size=1)
    runners = {}
    for projection in (roomy, tight):

        @projection.on(bank.MoneyDeposited)
        def _count(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
            total = documents.get(envelope.aggregate_id, bank.AccountBalance) or bank.AccountBalance()
            total.balance += event.amount
            documents.put(envelope.aggregate_id, total)

        runners[projection.name] = ProjectionRunner(projection, log=store, documents=store, reader=READER)
    loads = {}
    for round_ in range(2):
        for n in range(3):
            await run(store, f"acc-{n}", bank.Deposit(amount=1))
        for name, projection_runner in runners.items():
            store.loads = 0
            await projection_runner.step(projection_runner.status.position)
            loads[name, round_] = store.loads

    # The first batch finds nothing either way; the second finds the three
    # accounts' documents in a cache of 10,000, and reads them all again
    # through a cache of one (the two it reads first push out the third).
    assert loads == {("sized.roomy", 0): 3, ("sized.tight", 0): 3, ("sized.roomy", 1): 0, ("sized.tight", 1): 3}
    with pytest.raises(ValueError, match="cache_size"):
        plugin.projection("sized.negative", cache_size=-1)


class CommitWrites(MemoryStore):
    """Records the document writes of each projection commit."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[DocumentWrite] = []

    async def commit_projection(self, name: str, *, writes: Sequence[DocumentWrite], **rest: Any) -> None:
        await super().commit_projection(name, writes=writes, **rest)
        self.writes.extend(writes)


async def test_a_documents_subjects_are_kept_in_the_order_given_each_once() -> None:
    store = CommitWrites()
    await run(store, "acc-1", bank.OpenAccount(owner="ann"))
    projection = Plugin("subjects").projection("subjects.named", aggregate_types=["Account"])

    @projection.on(bank.AccountOpened)
    def _opened(event: bank.AccountOpened, envelope: ProjectedEvent, documents: Documents) -> None:
        # A repeated field of the document itself, with repeats; a generator; one id; none repeated.
        listed = bank.OwnerBalance(owner="ann", account_ids=["acc-9", "acc-1", "acc-9", "acc-5", "acc-1"])
        documents.put("listed", listed, subject=listed.account_ids)
        documents.put("generated", listed, subject=(f"acc-{n}" for n in (3, 2, 3)))
        documents.put("one", listed, subject="acc-1")
        documents.put("distinct", listed, subject=["acc-2", "acc-1"])

    await ProjectionRunner(projection, log=store, documents=store, reader=READER).step(0)
    assert {write.key: write.subjects for write in store.writes} == {
        "listed": ("acc-9", "acc-1", "acc-5"),
        "generated": ("acc-3", "acc-2"),
        "one": ("acc-1",),
        "distinct": ("acc-2", "acc-1"),
    }


async def test_a_document_is_stored_as_it_was_put_whatever_the_handler_does_with_its_message_after() -> None:
    store = CommitWrites()
    await run(store, "acc-1", bank.OpenAccount(owner="ann"))
    await run(store, "acc-1", bank.Deposit(amount=5))
    projection = Plugin("snapshots").projection("snapshots.put", aggregate_types=["Account"])
    seen: list[int] = []

    @projection.on(bank.AccountOpened)
    def _opened(event: bank.AccountOpened, envelope: ProjectedEvent, documents: Documents) -> None:
        held = bank.AccountBalance(owner="ann", balance=1)
        documents.put("held", held)
        held.balance = 999  # after the put: not what was put
        read = documents.get("held", bank.AccountBalance)
        assert read is not None
        seen.append(read.balance)
        read.balance = 555  # a read's message is the handler's own: not written unless put
        documents.put("other", bank.AccountBalance(owner="bob", balance=2))

    @projection.on(bank.MoneyDeposited)
    def _deposited(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
        read = documents.get("held", bank.AccountBalance)  # from the batch (or the cache)
        assert read is not None
        seen.append(read.balance)
        read.balance = 777  # not put

    await ProjectionRunner(projection, log=store, documents=store, reader=READER).step(0)
    assert seen == [1, 1]
    held = await store.load_document("snapshots.put", "held")
    assert held is not None and bank.AccountBalance.FromString(held.data).balance == 1
    assert [write.key for write in store.writes] == ["held", "other"]


async def test_a_document_of_another_type_names_both_types_by_full_name_in_message_and_metadata() -> None:
    store = MemoryStore()
    await bank_history(store)
    await store.start_projection("picky.stops", 0)
    stored = bank.AccountBalance(balance=1).SerializeToString()
    await store.commit_projection(
        "picky.stops",
        expected_position=0,
        new_position=0,
        writes=[DocumentWrite("total", "bank.v1.AccountBalance", stored)],
    )
    stops = ProjectionRunner(stopping, log=store, documents=store, reader=READER)
    with pytest.raises(ProjectionFailed) as raised:
        await stops.step(0)
    assert raised.value.reason == "DOCUMENT_TYPE_MISMATCH"
    assert raised.value.message == (
        "document 'total' of projection picky.stops is a bank.v1.AccountBalance, not a bank.v1.OwnerBalance"
    )
    # The same forms in the metadata as in a reaction's DOCUMENT_TYPE_MISMATCH.
    assert raised.value.metadata == {
        "projection": "picky.stops",
        "key": "total",
        "stored_type": "bank.v1.AccountBalance",
        "expected_type": "bank.v1.OwnerBalance",
    }
