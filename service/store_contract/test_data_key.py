"""The data-key part of the store contract: one key per aggregate, made once,
forgotten for good, rewrapped only if unchanged."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from service.errors import SubjectsForgotten
from service.store.base import AuditQuery, StoreAdapter
from service.store.encryption import ERASED_FINGERPRINT
from service.store.grouping import GroupParkedEvent, GroupSpec
from service.store.records import (
    ACCEPTED,
    MAX_OTHER_SUBJECTS,
    PARKED_COMMAND_TYPE,
    PROCESS_STATE_TYPE,
    REFUSED,
    AuditEntry,
    ClaimChange,
    DataKey,
    DocumentWrite,
    LogFilter,
    OtherSubjects,
    ParkedEvent,
    Rejection,
    Snapshot,
    StoredDocument,
)
from service.store_contract.contents import ContentsOf
from service.store_contract.records import command_record, new_event

# Every test here is a coroutine (the plugin runs them on pytest-asyncio).
pytestmark = pytest.mark.asyncio


def key(aggregate_id: str = "a-1", master: str = "m1", wrapped: bytes = b"w" * 40) -> DataKey:
    return DataKey(aggregate_id, master, wrapped)


async def test_an_aggregate_without_a_key_has_none(store: StoreAdapter) -> None:
    assert await store.load_data_key("a-1") is None


async def test_the_first_key_created_wins(store: StoreAdapter) -> None:
    assert await store.create_data_key(key(wrapped=b"first")) == key(wrapped=b"first")
    assert await store.create_data_key(key(wrapped=b"second")) == key(wrapped=b"first")
    assert await store.load_data_key("a-1") == key(wrapped=b"first")


async def test_concurrent_creators_all_get_the_same_key(store: StoreAdapter) -> None:
    created = await asyncio.gather(*(store.create_data_key(key(wrapped=bytes([n]) * 40)) for n in range(8)))
    assert len(set(created)) == 1
    assert await store.load_data_key("a-1") == created[0]


async def test_forgetting_erases_the_key_and_leaves_a_tombstone(store: StoreAdapter) -> None:
    await store.create_data_key(key())
    assert await store.forget_data_key("a-1") is True
    assert await store.load_data_key("a-1") == DataKey("a-1", None, None)
    assert await store.forget_data_key("a-1") is False


async def test_no_new_key_is_made_for_a_forgotten_aggregate(store: StoreAdapter) -> None:
    await store.create_data_key(key())
    await store.forget_data_key("a-1")
    assert (await store.create_data_key(key(wrapped=b"again"))).forgotten


async def test_forgetting_deletes_the_snapshot(store: StoreAdapter) -> None:
    await store.create_data_key(key())
    await store.save_snapshot(Snapshot("a-1", "Thing", 3, "test.v1.State", 1, b"secret"))
    await store.forget_data_key("a-1")
    assert await store.load_snapshot("a-1") is None


async def test_an_aggregate_without_a_key_cannot_be_forgotten(store: StoreAdapter) -> None:
    assert await store.forget_data_key("a-1") is False


async def test_keys_wrapped_by_an_old_master_key_are_listed_for_rewrapping(store: StoreAdapter) -> None:
    await store.create_data_key(key("a-1", "old"))
    await store.create_data_key(key("a-2", "new"))
    await store.create_data_key(key("a-3", "old"))
    await store.forget_data_key("a-3")
    assert await store.data_keys_to_rewrap("new", 10) == [key("a-1", "old")]
    assert len(await store.data_keys_to_rewrap("other", 1)) == 1


async def test_keys_to_rewrap_page_on_from_an_id(store: StoreAdapter) -> None:
    """A tenant's key rightly wraps its aggregates' data keys though it is
    not the shared active key: rewrapping pages past them by id."""
    for aggregate_id in ("c-1", "a-1", "b-1", "d-1"):
        await store.create_data_key(key(aggregate_id, "old"))
    await store.create_data_key(key("b-2", "new"))
    first = await store.data_keys_to_rewrap("new", 2)
    assert [k.aggregate_id for k in first] == ["a-1", "b-1"]
    rest = await store.data_keys_to_rewrap("new", 10, after=first[-1].aggregate_id)
    assert [k.aggregate_id for k in rest] == ["c-1", "d-1"]
    assert await store.data_keys_to_rewrap("new", 10, after="d-1") == []


async def test_rewrapping_replaces_a_key_only_if_it_is_unchanged(store: StoreAdapter, contents: ContentsOf) -> None:
    old = await store.create_data_key(key("a-1", "old"))
    assert await store.rewrap_data_keys([(old, key("a-1", "new", b"n" * 40))]) == 1
    before = await contents()
    assert await store.rewrap_data_keys([(old, key("a-1", "newer", b"x" * 40))]) == 0
    assert (await contents()).changes_since(before) == {}
    assert await store.load_data_key("a-1") == key("a-1", "new", b"n" * 40)


async def test_a_rewrap_of_several_keys_counts_those_it_replaced(store: StoreAdapter) -> None:
    first = await store.create_data_key(key("a-1", "old"))
    second = await store.create_data_key(key("a-2", "old"))
    changed = key("a-2", "other", b"o" * 40)  # what another replica's rewrap left there
    assert await store.rewrap_data_keys([(second, changed)]) == 1
    rewraps = [(first, key("a-1", "new", b"n" * 40)), (second, key("a-2", "new", b"n" * 40))]
    assert await store.rewrap_data_keys(rewraps) == 1
    assert await store.load_data_key("a-1") == key("a-1", "new", b"n" * 40)
    assert await store.load_data_key("a-2") == changed
    assert await store.rewrap_data_keys([]) == 0


async def test_forgetting_releases_every_claim_the_aggregate_holds(store: StoreAdapter) -> None:
    await store.create_data_key(key("u-1"))
    claims = [ClaimChange("users.email", "ann@example.com"), ClaimChange("users.nickname", "ann")]
    await store.append("u-1", [new_event()], 0, claims=claims)
    await store.append("u-2", [new_event()], 0, claims=[ClaimChange("users.email", "bob@example.com")])
    assert await store.forget_data_key("u-1") is True
    assert await store.claim_owner("users.email", "ann@example.com") is None
    assert await store.claim_owner("users.nickname", "ann") is None
    assert await store.claim_owner("users.email", "bob@example.com") == "u-2"


async def test_forgetting_again_releases_claims_left_behind(store: StoreAdapter) -> None:
    await store.create_data_key(key("u-1"))
    await store.forget_data_key("u-1")
    # As an older version left it: forgotten, still holding a value.
    await store.append("u-1", [new_event()], 0, claims=[ClaimChange("users.email", "ann@example.com")])
    assert await store.forget_data_key("u-1") is False
    assert await store.claim_owner("users.email", "ann@example.com") is None


async def test_an_aggregate_without_a_key_keeps_its_claims(store: StoreAdapter) -> None:
    await store.append("u-1", [new_event()], 0, claims=[ClaimChange("users.email", "ann@example.com")])
    assert await store.forget_data_key("u-1") is False
    assert await store.claim_owner("users.email", "ann@example.com") == "u-1"


# -- read-model documents derived from a forgotten aggregate --------------------


def document(key: str, data: bytes = b"\x0a\x03ann", *subjects: str) -> DocumentWrite:
    return DocumentWrite(key, "t.Doc", data, subjects)


async def test_forgetting_deletes_the_documents_that_name_the_aggregate(store: StoreAdapter) -> None:
    await store.create_data_key(key("acc-1"))
    await store.create_data_key(key("acc-2"))
    writes = [
        document("account:acc-1", b"1", "acc-1"),
        document("owner:ann", b"2", "acc-1", "acc-2"),
        document("account:acc-2", b"3", "acc-2"),
        document("totals", b"4"),
    ]
    await store.commit_projection("p", expected_position=0, new_position=3, writes=writes)
    await store.commit_projection("q", expected_position=0, new_position=3, writes=[document("k", b"5", "acc-1")])
    assert await store.forget_data_key("acc-1") is True
    assert await store.load_document("p", "account:acc-1") is None
    assert await store.load_document("p", "owner:ann") is None  # derived from acc-1 among others
    assert await store.load_document("q", "k") is None
    assert await store.load_document("p", "account:acc-2") == StoredDocument("account:acc-2", "t.Doc", b"3")
    assert await store.load_document("p", "totals") == StoredDocument("totals", "t.Doc", b"4")
    assert await store.projection_position("p") == 3


async def test_forgetting_names_the_other_subjects_of_the_process_states_it_deletes(store: StoreAdapter) -> None:
    """What an operator finishes or compensates by hand: per reaction, the
    other aggregates its deleted processes named, the first
    MAX_OTHER_SUBJECTS by id and how many in all; per projection, the other
    aggregates its deleted documents were derived from too (until their
    next event puts them back); not those of a parked command, or of a
    process that lives on."""
    await store.create_data_key(key("acc-1"))
    many = [f"order-{n:02}" for n in range(MAX_OTHER_SUBJECTS + 5)]
    states = [
        DocumentWrite("state:t-1", PROCESS_STATE_TYPE, b"1", ("acc-1", "acc-2", "t-1")),
        DocumentWrite("state:t-2", PROCESS_STATE_TYPE, b"2", ("acc-1", "acc-3", "t-1")),
        DocumentWrite("state:t-3", PROCESS_STATE_TYPE, b"3", ("acc-4",)),  # does not name acc-1: lives on
        DocumentWrite("parked:c-1", PARKED_COMMAND_TYPE, b"4", ("acc-1", "acc-5")),  # a parked command
    ]
    await store.commit_projection("r", expected_position=0, new_position=1, writes=states)
    big = [DocumentWrite("state:all", PROCESS_STATE_TYPE, b"5", ("acc-1", *reversed(many)))]
    await store.commit_projection("big", expected_position=0, new_position=1, writes=big)
    await store.commit_projection(
        "p", expected_position=0, new_position=1, writes=[document("k", b"6", "acc-1", "acc-6")]
    )
    forgetting = await store.forget_aggregate_data("acc-1")
    assert forgetting.other_subjects == {
        "big": OtherSubjects(tuple(many[:MAX_OTHER_SUBJECTS]), len(many)),
        "p": OtherSubjects(("acc-6",), 1),
        "r": OtherSubjects(("acc-2", "acc-3", "t-1"), 3),
    }
    assert forgetting.documents == {
        ("big", PROCESS_STATE_TYPE): 1,
        ("r", PROCESS_STATE_TYPE): 2,
        ("r", PARKED_COMMAND_TYPE): 1,
        ("p", "t.Doc"): 1,
    }
    assert (await store.forget_aggregate_data("acc-1")).other_subjects == {}  # nothing left to delete


async def test_a_document_put_again_has_the_subjects_of_its_last_put(store: StoreAdapter) -> None:
    await store.create_data_key(key("acc-1"))
    await store.commit_projection("p", expected_position=0, new_position=1, writes=[document("k", b"1", "acc-1")])
    await store.commit_projection("p", expected_position=1, new_position=2, writes=[document("k", b"2", "acc-9")])
    await store.forget_data_key("acc-1")
    assert await store.load_document("p", "k") == StoredDocument("k", "t.Doc", b"2")


async def test_a_deleted_document_leaves_no_subject_behind(store: StoreAdapter) -> None:
    await store.create_data_key(key("acc-1"))
    await store.commit_projection("p", expected_position=0, new_position=1, writes=[document("k", b"1", "acc-1")])
    await store.commit_projection("p", expected_position=1, new_position=2, writes=[DocumentWrite("k")])
    await store.commit_projection("p", expected_position=2, new_position=3, writes=[document("k", b"3")])
    await store.forget_data_key("acc-1")
    assert await store.load_document("p", "k") == StoredDocument("k", "t.Doc", b"3")


async def test_a_commit_that_names_a_forgotten_subject_writes_nothing(
    store: StoreAdapter, contents: ContentsOf
) -> None:
    await store.create_data_key(key("acc-1"))
    await store.forget_data_key("acc-1")
    before = await contents()
    with pytest.raises(SubjectsForgotten) as refused:
        await store.commit_projection(
            "p",
            expected_position=0,
            new_position=4,
            writes=[document("other", b"1", "acc-2"), document("k", b"2", "acc-2", "acc-1")],
        )
    assert refused.value.subjects == {"acc-1"}
    assert (await contents()).changes_since(before) == {}
    await store.commit_projection("p", expected_position=0, new_position=4, writes=[DocumentWrite("k")])
    assert await store.projection_position("p") == 4


async def test_documents_of_an_aggregate_without_a_key_are_kept(store: StoreAdapter) -> None:
    await store.commit_projection("p", expected_position=0, new_position=1, writes=[document("k", b"1", "acc-1")])
    assert await store.forget_data_key("acc-1") is False
    assert await store.load_document("p", "k") == StoredDocument("k", "t.Doc", b"1")


def parked(aggregate_id: str, position: int) -> ParkedEvent:
    return ParkedEvent("p", position, f"e-{position}", "t.Event", aggregate_id, f"no: {aggregate_id}'s secret", 3, 1)


async def test_forgetting_deletes_the_events_a_projection_parked_for_the_aggregate(store: StoreAdapter) -> None:
    """A parked event keeps its handler's error, which may quote the payload."""
    await store.create_data_key(key("acc-1"))
    await store.commit_projection(
        "p", expected_position=0, new_position=2, writes=[], parked=[parked("acc-1", 1), parked("acc-2", 2)]
    )
    await store.forget_data_key("acc-1")
    assert await store.parked_events("p") == [parked("acc-2", 2)]


# -- what forgetting erases of the command records and the audit -------------------


def _refusal_text(aggregate_id: str, at: int) -> AuditEntry:
    return AuditEntry(
        recorded_at_us=at,
        command_id=f"cmd-{aggregate_id}-{at}",
        command_type="test.v1.Do",
        aggregate_id=aggregate_id,
        principal="eve",
        user_id="eve",
        origin="tests",
        outcome=REFUSED,
        reason="MIDDLEWARE_REFUSED",
        message=f"{aggregate_id}: Mallory may not",
    )


async def _commands_and_audit_of(store: StoreAdapter, aggregate_id: str) -> None:
    """An accepted command, a refused one and an audit entry of the
    aggregate's, all in the clear (as written before encryption was on, or
    imported from a store without it)."""
    accepted = command_record(aggregate_id, 1, 1, command_id=f"ok-{aggregate_id}")
    refusal = Rejection("ValidationError", "INSUFFICIENT_FUNDS", "Mallory has 12", {"balance": "12"}, (("a", "b"),))
    refused = command_record(aggregate_id, 2, 1, command_id=f"no-{aggregate_id}", rejection=refusal)
    await store.append(aggregate_id, [new_event()], 0, commands=[accepted])
    await store.append(aggregate_id, [], 1, commands=[refused])
    await store.record_audit_entry(_refusal_text(aggregate_id, 10))


async def test_forgetting_erases_the_fingerprints_and_refusal_texts_of_its_commands_and_audit(
    store: StoreAdapter,
) -> None:
    """A command record's fingerprint (a hash of its payload: a guess list
    confirms it) and a refusal's text (which may quote the state) are sealed
    under the aggregate's key with encryption on, so forgetting makes them
    unreadable; those stored in the clear are erased by the forget itself.
    Kinds and reasons stay, like the envelope."""
    await store.create_data_key(key("acc-1"))
    await _commands_and_audit_of(store, "acc-1")
    await _commands_and_audit_of(store, "acc-2")  # another aggregate's: kept
    assert await store.forget_data_key("acc-1") is True
    for command_id in ("ok-acc-1", "no-acc-1"):
        record = await store.find_command(command_id)
        assert record is not None
        assert record.fingerprint == ERASED_FINGERPRINT
    refused = await store.find_command("no-acc-1")
    assert refused is not None and refused.rejection == Rejection("ValidationError", "INSUFFICIENT_FUNDS", "")
    audited = await store.read_audit(AuditQuery(aggregate_id="acc-1"))
    assert sorted((e.reason, e.message) for e in audited) == [
        ("", ""),
        ("INSUFFICIENT_FUNDS", ""),
        ("MIDDLEWARE_REFUSED", ""),
    ]
    kept = await store.find_command("no-acc-2")
    assert kept is not None and kept.fingerprint == b"\x01" * 32
    assert kept.rejection is not None and kept.rejection.message == "Mallory has 12"
    assert kept.rejection.metadata == {"balance": "12"}
    assert {e.message for e in await store.read_audit(AuditQuery(aggregate_id="acc-2"))} == {
        "",
        "Mallory has 12",
        "acc-2: Mallory may not",
    }


async def test_forgetting_again_erases_command_texts_left_behind(store: StoreAdapter) -> None:
    await store.create_data_key(key("acc-1"))
    await store.forget_data_key("acc-1")
    await _commands_and_audit_of(store, "acc-1")  # as an older version left it
    assert await store.forget_data_key("acc-1") is False
    record = await store.find_command("no-acc-1")
    assert record is not None and record.fingerprint == ERASED_FINGERPRINT
    assert record.rejection is not None and (record.rejection.message, record.rejection.metadata) == ("", {})
    assert {e.message for e in await store.read_audit(AuditQuery(aggregate_id="acc-1"))} == {""}


async def test_forgetting_again_says_when_the_first_forgot_and_leaves_what_it_recorded(store: StoreAdapter) -> None:
    """A second forget is answered with the first one's time (the
    tombstone's, written once), and rewrites nothing of what was recorded
    of the first: the entry its caller filed under the reaction, in the
    clear, naming the aggregate, stays as it was."""
    await store.create_data_key(key("acc-1"))
    before_us = time.time_ns() // 1000
    first = await store.forget_aggregate_data("acc-1")
    filed = replace(
        _refusal_text("reaction:r", 20),
        outcome=ACCEPTED,
        reason="",
        message="forgetting aggregate acc-1 deleted: r: 1 process state",
    )
    await store.record_audit_entry(filed)
    await asyncio.sleep(0.01)
    again = await store.forget_aggregate_data("acc-1")
    assert (first.erased, again.erased) == (True, False)
    assert first.forgotten_at_us is not None
    assert before_us - 1_000_000 <= first.forgotten_at_us <= before_us + 60_000_000  # the store's clock: about now
    assert again.forgotten_at_us == first.forgotten_at_us
    kept = await store.read_audit(AuditQuery(aggregate_id="reaction:r"))
    assert [(e.aggregate_id, e.outcome, e.message) for e in kept] == [(filed.aggregate_id, ACCEPTED, filed.message)]
    assert (await store.forget_aggregate_data("acc-never")).forgotten_at_us is None  # no key, no tombstone


async def test_an_aggregate_without_a_key_keeps_its_command_texts(store: StoreAdapter) -> None:
    await _commands_and_audit_of(store, "acc-1")
    assert await store.forget_data_key("acc-1") is False
    record = await store.find_command("no-acc-1")
    assert record is not None and record.fingerprint == b"\x01" * 32
    assert record.rejection is not None and record.rejection.message == "Mallory has 12"


def _group_parked(aggregate_id: str, position: int) -> GroupParkedEvent:
    return GroupParkedEvent(
        event_id=f"00000000-0000-4000-8000-{position:012}",
        position=position,
        segment=0,
        aggregate_id=aggregate_id,
        attempts=3,
        reason=f"nack: {aggregate_id}'s owner Mallory is not on file",
    )


async def test_forgetting_deletes_the_events_subscription_groups_parked_for_the_aggregate(
    store: StoreAdapter,
) -> None:
    """A group's parked event keeps its consumer's nack reason, which may
    quote the payload, in the clear; forgetting deletes it as deleting the
    aggregate does (again too: what an older version left behind)."""
    await store.create_data_key(key("acc-1"))
    await store.create_group(GroupSpec(name="g", log_filter=LogFilter(), start_position=0, segments=1))
    await store.park("g", [_group_parked("acc-1", 1), _group_parked("acc-2", 2)])
    await store.forget_data_key("acc-1")
    assert await store.list_parked("g") == [_group_parked("acc-2", 2)]
    group = await store.load_group("g")
    assert group is not None and group.parked == 1
    await store.park("g", [_group_parked("acc-1", 3)])  # as an older version left it
    assert await store.forget_data_key("acc-1") is False
    assert await store.list_parked("g") == [_group_parked("acc-2", 2)]


async def test_an_aggregate_without_a_key_keeps_what_groups_parked_of_it(store: StoreAdapter) -> None:
    await store.create_group(GroupSpec(name="g", log_filter=LogFilter(), start_position=0, segments=1))
    await store.park("g", [_group_parked("acc-1", 1)])
    assert await store.forget_data_key("acc-1") is False
    assert await store.list_parked("g") == [_group_parked("acc-1", 1)]
