"""The retention part of the store contract: old command records and
refusals pruned oldest first, a batch at a time, and nothing else."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.store.base import AuditQuery, StoreAdapter
from service.store.records import ACCEPTED, REFUSED, AuditEntry
from service.store_contract.contents import ContentsOf
from service.store_contract.records import command_record

# Every test here is a coroutine (the plugin runs them on pytest-asyncio).
pytestmark = pytest.mark.asyncio


def entry(at_us: int, outcome: str = REFUSED, command_id: str = "c") -> AuditEntry:
    return AuditEntry(
        recorded_at_us=at_us,
        command_id=command_id,
        command_type="test.v1.Do",
        aggregate_id="a-1",
        principal="p",
        user_id="u",
        origin="tests",
        outcome=outcome,
        reason="SUBMIT_DENIED" if outcome == REFUSED else "",
    )


async def test_command_records_older_than_the_cutoff_go_oldest_first_a_batch_at_a_time(
    store: StoreAdapter, contents: ContentsOf
) -> None:
    records = [
        replace(command_record("a-1", 1, 0, command_id=f"c-{t}"), recorded_at_us=t) for t in (300, 100, 200, 400)
    ]
    await store.import_commands(records)
    before = await contents()
    assert await store.prune_commands(350, 2) == 2
    assert [await store.find_command(f"c-{t}") is None for t in (100, 200, 300, 400)] == [True, True, False, False]
    assert await store.prune_commands(350, 2) == 1
    assert await store.prune_commands(350, 2) == 0
    assert await store.find_command("c-400") is not None
    changes = (await contents()).changes_since(before)
    # (the audit log, where a view of the store shows it, loses the same records)
    assert set(changes) <= {"commands", "audit"} and len(changes["commands"].removed) == 3
    audited = await store.read_audit(AuditQuery(limit=10))
    assert [e.command_id for e in audited] == ["c-400"]  # a pruned command is out of the audit too


async def test_refusals_older_than_the_cutoff_go_and_administrators_actions_stay(store: StoreAdapter) -> None:
    for recorded in (entry(200, command_id="late"), entry(100, command_id="early"), entry(500, command_id="new")):
        await store.record_audit_entry(recorded)
    await store.record_audit_entry(entry(50, ACCEPTED, command_id=""))  # an administrator's action
    await store.record_audit_entry(replace(entry(150, ACCEPTED, command_id="tried"), dry_run=True))  # wrote nothing
    assert await store.prune_refusals(300, 1) == 1
    assert await store.prune_refusals(300, 10) == 2
    assert await store.prune_refusals(300, 10) == 0
    left = await store.read_audit(AuditQuery(limit=10))
    assert [(e.command_id, e.outcome) for e in left] == [("new", REFUSED), ("", ACCEPTED)]
