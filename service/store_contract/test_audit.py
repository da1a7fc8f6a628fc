"""The audit part of the store contract: command records and recorded
refusals read back as one log, newest first."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.errors import ConcurrencyConflict
from service.store.base import AuditQuery, StoreAdapter
from service.store.records import ACCEPTED, REFUSED, AuditEntry, Rejection
from service.store_contract.contents import ContentsOf
from service.store_contract.records import command_record, new_event

# Every test here is a coroutine (the plugin runs them on pytest-asyncio).
pytestmark = pytest.mark.asyncio


def refusal(at: int, *, aggregate_id: str = "a-1", principal: str = "eve", reason: str = "SUBMIT_DENIED") -> AuditEntry:
    return AuditEntry(
        recorded_at_us=at,
        command_id=f"cmd-{at}",
        command_type="test.v1.Do",
        aggregate_id=aggregate_id,
        principal=principal,
        user_id=principal,
        origin="tests",
        outcome=REFUSED,
        reason=reason,
        message="no",
    )


async def test_an_accepted_command_is_audited_with_who_where_and_when(store: StoreAdapter) -> None:
    record = replace(command_record("a-1", 1, 1), principal="alice", user_id="ann", origin="web", recorded_at_us=10)
    await store.append("a-1", [new_event()], 0, commands=[record])
    (entry,) = await store.read_audit(AuditQuery())
    assert entry == AuditEntry(
        recorded_at_us=10,
        command_id=record.command_id,
        command_type="test.v1.Do",
        aggregate_id="a-1",
        principal="alice",
        user_id="ann",
        origin="web",
        outcome=ACCEPTED,
    )


async def test_a_refusal_recorded_with_its_command_is_audited_with_its_reason(store: StoreAdapter) -> None:
    rejection = Rejection("ValidationError", "INSUFFICIENT_FUNDS", "balance is 3")
    record = replace(command_record("a-1", 1, 0, rejection=rejection), principal="alice", recorded_at_us=10)
    await store.append("a-1", [], 0, commands=[record])
    (entry,) = await store.read_audit(AuditQuery())
    assert (entry.outcome, entry.reason, entry.message) == (REFUSED, "INSUFFICIENT_FUNDS", "balance is 3")


async def test_a_conflicting_append_leaves_no_audit_entry(store: StoreAdapter, contents: ContentsOf) -> None:
    await store.append("a-1", [new_event()], 0)
    before = await contents()
    with pytest.raises(ConcurrencyConflict):
        await store.append("a-1", [new_event()], 0, commands=[replace(command_record("a-1", 1, 1), recorded_at_us=5)])
    assert await store.read_audit(AuditQuery()) == []
    assert (await contents()).changes_since(before) == {}


async def test_recorded_refusals_and_command_records_read_as_one_log_newest_first(store: StoreAdapter) -> None:
    await store.record_audit_entry(refusal(10))
    await store.append("a-1", [new_event()], 0, commands=[replace(command_record("a-1", 1, 1), recorded_at_us=20)])
    await store.record_audit_entry(refusal(30))
    times = [e.recorded_at_us for e in await store.read_audit(AuditQuery())]
    assert times == [30, 20, 10]


async def test_a_recorded_refusal_reads_back_unchanged(store: StoreAdapter) -> None:
    await store.record_audit_entry(refusal(10))
    assert await store.read_audit(AuditQuery()) == [refusal(10)]


async def test_audit_filters_combine(store: StoreAdapter) -> None:
    await store.record_audit_entry(refusal(10, aggregate_id="a-1", principal="eve"))
    await store.record_audit_entry(refusal(20, aggregate_id="a-2", principal="eve"))
    await store.record_audit_entry(refusal(30, aggregate_id="a-1", principal="mallory"))
    accepted = replace(command_record("a-1", 1, 1), principal="eve", recorded_at_us=40)
    await store.append("a-1", [new_event()], 0, commands=[accepted])

    async def times(**fields: object) -> list[int]:
        return [e.recorded_at_us for e in await store.read_audit(AuditQuery(**fields))]  # type: ignore[arg-type]

    assert await times(aggregate_id="a-1") == [40, 30, 10]
    assert await times(principal="eve") == [40, 20, 10]
    assert await times(principal="eve", aggregate_id="a-1") == [40, 10]
    assert await times(outcome=REFUSED) == [30, 20, 10]
    assert await times(outcome=ACCEPTED) == [40]
    assert await times(since_us=20, until_us=40) == [30, 20]
    assert await times(command_id="cmd-20") == [20]
    assert await times(limit=2) == [40, 30]


async def test_audit_filters_by_aggregate_id_prefix_literally(store: StoreAdapter) -> None:
    """A tenant's administrator reads the entries of its own aggregates:
    ``acme:`` takes ``acme:…`` (command records and the audit's own entries,
    an entry filed under the prefix itself included), never ``acme2:…``,
    an id of no tenant or ``reaction:…``; ``%`` and ``_`` are characters,
    not LIKE's wildcards."""
    for time, aggregate_id in enumerate(["acme:1", "acme2:1", "a-1", "reaction:r", "acme:", "ac%e:1", "acme_1"], 1):
        await store.record_audit_entry(refusal(time * 10, aggregate_id=aggregate_id))
    accepted = replace(command_record("acme:2", 1, 1), recorded_at_us=80)
    await store.append("acme:2", [new_event()], 0, commands=[accepted])
    other = replace(command_record("globex:2", 1, 2), recorded_at_us=90)
    await store.append("globex:2", [new_event()], 0, commands=[other])

    async def ids(**fields: object) -> list[str]:
        return [e.aggregate_id for e in await store.read_audit(AuditQuery(**fields))]  # type: ignore[arg-type]

    assert await ids(aggregate_id_prefix="acme:") == ["acme:2", "acme:", "acme:1"]
    assert await ids(aggregate_id_prefix="ac%e:") == ["ac%e:1"]
    assert await ids(aggregate_id_prefix="acme:", aggregate_id="globex:2") == []
    assert await ids(aggregate_id_prefix="acme:", aggregate_id="acme:1") == ["acme:1"]
    assert await ids(aggregate_id_prefix="acme:", outcome=ACCEPTED) == ["acme:2"]


async def test_audit_filters_by_command_type_in_command_records_and_the_audits_own_entries(
    store: StoreAdapter,
) -> None:
    await store.record_audit_entry(refusal(10))  # test.v1.Do
    action = replace(refusal(20), command_type="chronicle.v1.AdminService/ForgetAggregate", outcome=ACCEPTED, reason="")
    await store.record_audit_entry(action)
    other = replace(command_record("a-1", 1, 1), command_type="test.v1.Other", recorded_at_us=30)
    await store.append("a-1", [new_event()], 0, commands=[other])
    same = replace(command_record("a-1", 2, 2), recorded_at_us=40)  # test.v1.Do
    await store.append("a-1", [new_event()], 1, commands=[same])

    async def times(**fields: object) -> list[int]:
        return [e.recorded_at_us for e in await store.read_audit(AuditQuery(**fields))]  # type: ignore[arg-type]

    assert await times(command_type="test.v1.Do") == [40, 10]
    assert await times(command_type="test.v1.Other") == [30]
    assert await times(command_type="chronicle.v1.AdminService/ForgetAggregate") == [20]
    assert await times(command_type="test.v1.Do", outcome=REFUSED) == [10]
    assert await times(command_type="test.v1.None") == []


async def test_an_accepted_entry_outside_command_records_keeps_its_outcome(store: StoreAdapter) -> None:
    action = replace(refusal(10), command_type="chronicle.v1.AdminService/ForgetAggregate", outcome=ACCEPTED, reason="")
    await store.record_audit_entry(action)
    await store.record_audit_entry(refusal(20))
    assert await store.read_audit(AuditQuery(outcome=ACCEPTED)) == [action]
    assert [e.recorded_at_us for e in await store.read_audit(AuditQuery(outcome=REFUSED))] == [20]
