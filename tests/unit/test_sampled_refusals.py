"""Refusals of unauthenticated callers: recorded up to a rate, the rest
counted into entries that say how many they stand for."""

from __future__ import annotations

from dataclasses import replace

from service.audit import AuditLog, SampledRefusals
from service.store.base import AuditQuery
from service.store.memory import MemoryStore
from service.store.records import REFUSED, AuditEntry

ENTRY = AuditEntry(
    recorded_at_us=1,
    command_id="",
    command_type="chronicle.v1.EventService/GetAggregate",
    aggregate_id="x",
    principal="",
    user_id="",
    origin="",
    outcome=REFUSED,
    reason="NO_CREDENTIALS",
    peer="ipv4:10.0.0.9:4242",
)


async def test_a_burst_is_recorded_and_the_rest_counted_into_one_entry_per_reason() -> None:
    store = MemoryStore()
    sampled: list[str] = []
    refusals = SampledRefusals(AuditLog(store), rate=0.001, burst=5, interval=3600, on_sampled=sampled.append)
    for n in range(12):
        await refusals.record(replace(ENTRY, recorded_at_us=n))
    await refusals.record(replace(ENTRY, reason="TOKEN_EXPIRED"))
    assert len(await store.read_audit(AuditQuery())) == 6  # the burst of each reason
    assert sampled == ["NO_CREDENTIALS"] * 7
    await refusals.close()  # what was counted is recorded, not lost
    entries = await store.read_audit(AuditQuery())
    assert sorted(e.occurrences for e in entries) == [1, 1, 1, 1, 1, 1, 7]
    (summary,) = [e for e in entries if e.occurrences > 1]
    assert (summary.reason, summary.recorded_at_us, summary.peer) == ("NO_CREDENTIALS", 11, ENTRY.peer)
    assert sum(e.occurrences for e in entries) == 13
