"""Refusals of unauthenticated callers: recorded up to a rate, the rest
counted into entries that say how many they stand for."""

from __future__ import annotations

from dataclasses import replace

from google.protobuf.empty_pb2 import Empty

from service.audit import AuditLog, AuditMiddleware, SampledRefusals
from service.errors import Overloaded
from service.plugins.middleware import CommandCall
from service.principal import ANONYMOUS, Principal
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


def _overloaded_call(principal: Principal, n: int) -> CommandCall:
    return CommandCall(
        command_id=f"c-{n}",
        command_type="bank.v1.Deposit",
        aggregate_id="acc-1",
        aggregate_type="Account",
        message=Empty(),
        principal=principal,
        error=Overloaded("the aggregate's queue is full", reason="AGGREGATE_QUEUE_FULL"),
    )


async def _refuse_in_the_pipeline(middleware: AuditMiddleware, principal: Principal, count: int) -> None:
    for n in range(count):
        written = middleware.on_error(_overloaded_call(principal, n))
        assert written is not None
        await written


async def test_a_flood_refused_in_the_pipeline_is_sampled_when_nobody_answers_for_it() -> None:
    # With authentication off every caller is anonymous: commands refused
    # for overload each wrote an audit entry, a database write per refusal
    # exactly when the server was overloaded.
    store = MemoryStore()
    audit = AuditLog(store)
    sampled = SampledRefusals(audit, rate=0.001, burst=2, interval=3600)
    await _refuse_in_the_pipeline(AuditMiddleware(audit, sampled=sampled), ANONYMOUS, 10)
    assert len(await store.read_audit(AuditQuery())) == 2  # the burst
    await sampled.close()
    entries = await store.read_audit(AuditQuery())
    assert sorted(e.occurrences for e in entries) == [1, 1, 8]
    assert {e.reason for e in entries} == {"AGGREGATE_QUEUE_FULL"}


async def test_refusals_of_an_authenticated_principal_in_the_pipeline_are_each_recorded() -> None:
    store = MemoryStore()
    audit = AuditLog(store)
    sampled = SampledRefusals(audit, rate=0.001, burst=2, interval=3600)
    ann = Principal("ann", "api-key")
    await _refuse_in_the_pipeline(AuditMiddleware(audit, sampled=sampled), ann, 10)
    entries = await store.read_audit(AuditQuery())
    assert len(entries) == 10 and {e.principal for e in entries} == {"ann"}
