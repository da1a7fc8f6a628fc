"""Forgetting a tenant's aggregates in batches (``KeyStore.live_keys``,
``count_live_keys``, ``forget_aggregates_data``): what is still to forget
under a prefix, in code point order and no further than the prefix, and a
batch forgetting each of its aggregates as ``forget_aggregate_data`` would,
saying the same of each."""

from __future__ import annotations

import pytest

from service.store.base import AuditQuery, StoreAdapter
from service.store.encryption import ERASED_FINGERPRINT
from service.store.records import (
    ACCEPTED,
    PROCESS_STATE_TYPE,
    REFUSED,
    AuditEntry,
    ClaimChange,
    DataKey,
    DocumentWrite,
    Forgetting,
    OtherSubjects,
    Rejection,
)
from service.store_contract.records import command_record, new_event

pytestmark = pytest.mark.asyncio


def key(aggregate_id: str) -> DataKey:
    return DataKey(aggregate_id, "m1", b"w" * 40)


async def test_the_live_keys_under_a_prefix_are_counted_and_walked_in_code_point_order(store: StoreAdapter) -> None:
    for aggregate_id in ["acme:b", "acme:Zed", "acme2:x", "acme", "acme:\U0001f600", "acme:gone", "acmf"]:
        await store.create_data_key(key(aggregate_id))
    await store.forget_data_key("acme:gone")
    assert await store.count_live_keys("acme:") == 3
    assert await store.live_keys("acme:", limit=10) == ["acme:Zed", "acme:b", "acme:\U0001f600"]
    assert await store.live_keys("acme:", after="acme:Zed", limit=1) == ["acme:b"]
    assert await store.count_live_keys("acme") == 5
    assert await store.count_live_keys("") == 6
    assert await store.live_keys("zz", limit=10) == []


async def test_a_batch_forgets_each_aggregate_and_says_what_went_of_each(store: StoreAdapter) -> None:
    for aggregate_id in ["acme:1", "acme:2", "acme:3", "other:1"]:
        await store.create_data_key(key(aggregate_id))
        await store.append(aggregate_id, [new_event()], 0, claims=[ClaimChange("users.email", f"{aggregate_id}@x")])
    await store.forget_data_key("acme:2")  # forgotten before: nothing more to say of it
    writes = [
        DocumentWrite("doc:1", "t.Doc", b"1", ("acme:1",)),
        DocumentWrite("doc:3", "t.Doc", b"3", ("acme:3",)),
        DocumentWrite("doc:o", "t.Doc", b"o", ("other:1",)),
        DocumentWrite("state:1", PROCESS_STATE_TYPE, b"s", ("acme:1", "other:1")),
    ]
    await store.commit_projection("p", expected_position=0, new_position=1, writes=writes)
    first, second, third = await store.forget_aggregates_data(["acme:1", "acme:2", "acme:3"])
    assert (first.erased, second.erased, third.erased) == (True, False, True)
    assert first.documents == {("p", "t.Doc"): 1, ("p", PROCESS_STATE_TYPE): 1}
    assert first.other_subjects == {"p": OtherSubjects(("other:1",), 1)}
    assert third.documents == {("p", "t.Doc"): 1} and third.other_subjects == {}
    assert all(f.forgotten_at_us is not None for f in (first, second, third))
    assert await store.count_live_keys("acme:") == 0
    assert await store.live_keys("", limit=10) == ["other:1"]
    assert [(await store.load_data_key(i)) is not None for i in ["acme:1", "acme:3"]] == [True, True]  # tombstones
    assert await store.load_document("p", "doc:1") is None and await store.load_document("p", "doc:3") is None
    assert await store.load_document("p", "doc:o") is not None  # another's stays
    assert await store.claim_owner("users.email", "acme:1@x") is None
    assert await store.claim_owner("users.email", "other:1@x") == "other:1"
    assert await store.forget_aggregates_data([]) == []
    again = await store.forget_aggregates_data(["acme:1", "never"])
    assert again == [Forgetting(False, {}, {}, first.forgotten_at_us), Forgetting(False)]


async def test_a_batch_erases_the_command_and_audit_texts_of_its_aggregates_only(store: StoreAdapter) -> None:
    refusal = Rejection("ValidationError", "INSUFFICIENT_FUNDS", "Mallory has 12", {"balance": "12"})
    for aggregate_id in ["acme:1", "acme:2", "other:1"]:
        await store.create_data_key(key(aggregate_id))
        await store.append(
            aggregate_id,
            [new_event()],
            0,
            commands=[
                command_record(aggregate_id, 1, 1, command_id=f"ok-{aggregate_id}"),
                command_record(aggregate_id, 2, 1, command_id=f"no-{aggregate_id}", rejection=refusal),
            ],
        )
        await store.record_audit_entry(
            AuditEntry(
                recorded_at_us=1,
                command_id=f"audit-{aggregate_id}",
                command_type="test.v1.Do",
                aggregate_id=aggregate_id,
                principal="eve",
                user_id="eve",
                origin="tests",
                outcome=REFUSED,
                reason="MIDDLEWARE_REFUSED",
                message=f"{aggregate_id}: Mallory may not",
            )
        )
    await store.forget_aggregates_data(["acme:1", "acme:2"])
    for aggregate_id in ["acme:1", "acme:2"]:
        accepted = await store.find_command(f"ok-{aggregate_id}")
        refused = await store.find_command(f"no-{aggregate_id}")
        assert accepted is not None and accepted.fingerprint == ERASED_FINGERPRINT
        assert refused is not None and refused.rejection == Rejection("ValidationError", "INSUFFICIENT_FUNDS", "")
        audited = await store.read_audit(AuditQuery(aggregate_id=aggregate_id))
        assert sorted((e.reason, e.message) for e in audited) == [
            ("", ""),
            ("INSUFFICIENT_FUNDS", ""),
            ("MIDDLEWARE_REFUSED", ""),
        ]
    kept = await store.find_command("no-other:1")
    assert kept is not None and kept.fingerprint == b"\x01" * 32 and kept.rejection == refusal
    assert {e.message for e in await store.read_audit(AuditQuery(aggregate_id="other:1"))} == {
        "",
        "Mallory has 12",
        "other:1: Mallory may not",
    }


def batch_entry(message: str) -> AuditEntry:
    return AuditEntry(
        recorded_at_us=1,
        command_id="",
        command_type="chronicle.v1.AdminService/ForgetAggregates",
        aggregate_id="acme:",
        principal="root",
        user_id="root",
        origin="admin",
        outcome=ACCEPTED,
        message=message,
    )


async def test_a_batch_records_its_audit_entry_with_it_when_it_erases_a_key(store: StoreAdapter) -> None:
    """In the batch's transaction (a batch is forgotten with its entry or not
    at all); a batch that erases nothing (every key forgotten already)
    records none."""
    for aggregate_id in ["acme:1", "acme:2"]:
        await store.create_data_key(key(aggregate_id))
    await store.forget_data_key("acme:2")
    await store.forget_aggregates_data(["acme:1", "acme:2"], audit=batch_entry("batch: acme:1 to acme:2"))
    await store.forget_aggregates_data(["acme:1", "acme:2"], audit=batch_entry("batch: again"))
    audited = await store.read_audit(AuditQuery(aggregate_id="acme:"))
    assert [(e.command_type, e.outcome, e.message) for e in audited] == [
        ("chronicle.v1.AdminService/ForgetAggregates", ACCEPTED, "batch: acme:1 to acme:2")
    ]
