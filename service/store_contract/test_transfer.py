"""The transfer part of the store contract: everything a store holds read
out in key order, and written into another as it was (ids, versions,
timestamps, log order), idempotently, refusing what does not fit with
nothing written."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.errors import ConcurrencyConflict, ImportConflict
from service.store.base import StoreAdapter
from service.store.encryption import ERASED_FINGERPRINT
from service.store.grouping import GroupParkedEvent, GroupSpec
from service.store.records import (
    TOMBSTONE_EVENT_TYPE,
    AggregateHead,
    ClaimChange,
    DataKey,
    DocumentWrite,
    HeldClaim,
    LogFilter,
    NewEvent,
    ParkedEvent,
    RecordedEvent,
    Rejection,
    Snapshot,
    StoredDocument,
)
from service.store_contract.contents import ContentsOf
from service.store_contract.records import command_record, new_event, recorded_event

# Every test here is a coroutine (the plugin runs them on pytest-asyncio).
pytestmark = pytest.mark.asyncio


def snapshot(aggregate_id: str, version: int) -> Snapshot:
    return Snapshot(aggregate_id, "Thing", version, "test.v1.State", 1, bytes([version]) * 3)


async def log_of(store: StoreAdapter) -> list[RecordedEvent]:
    return list((await store.read_log(0, LogFilter(), 1000)).events)


def without_positions(events: list[RecordedEvent]) -> list[RecordedEvent]:
    return [replace(e, position=0) for e in events]


async def test_pages_read_every_record_in_key_order(store: StoreAdapter) -> None:
    for name in ("a-3", "a-1", "a-2"):
        await store.create_data_key(DataKey(name, "m1", name.encode() * 8))
        await store.append(name, [new_event()], 0, claims=[ClaimChange("users.email", f"{name}@x")])
        await store.save_snapshot(snapshot(name, 1))
    await store.forget_data_key("a-2")  # a tombstone is exported too (its snapshot and claim went)
    records = [command_record("a-1", 1, 0, command_id=f"c-{n}") for n in (3, 1, 2)]
    await store.append("a-1", [], 1, commands=records)

    keys = await store.data_keys_page("", 2)
    keys += await store.data_keys_page(keys[-1].aggregate_id, 2)
    assert [(k.aggregate_id, k.forgotten) for k in keys] == [("a-1", False), ("a-2", True), ("a-3", False)]
    snapshots = await store.snapshots_page(("", 0), 1)
    snapshots += await store.snapshots_page((snapshots[-1].aggregate_id, snapshots[-1].version), 5)
    assert [(s.aggregate_id, s.version) for s in snapshots] == [("a-1", 1), ("a-3", 1)]
    claims = await store.claims_page(("", ""), 1)
    claims += await store.claims_page((claims[-1].scope, claims[-1].value), 5)
    assert claims == [HeldClaim("users.email", "a-1@x", "a-1"), HeldClaim("users.email", "a-3@x", "a-3")]
    commands = await store.commands_page("", 2)
    commands += await store.commands_page(commands[-1].command_id, 2)
    assert [c.command_id for c in commands] == ["c-1", "c-2", "c-3"]


async def test_pages_of_one_aggregate(store: StoreAdapter) -> None:
    for name in ("a-1", "a-2"):
        await store.append(
            name, [new_event()], 0, claims=[ClaimChange("s", f"{name}-1"), ClaimChange("s", f"{name}-2")]
        )
        for version in (1, 2):
            await store.save_snapshot(snapshot(name, version))
    snapshots = await store.snapshots_page(("a-2", 1), 10, aggregate_id="a-2")
    assert [(s.aggregate_id, s.version) for s in snapshots] == [("a-2", 2)]
    claims = await store.claims_page(("", ""), 10, aggregate_id="a-1")
    assert [c.value for c in claims] == ["a-1-1", "a-1-2"]


async def test_imported_events_keep_their_envelopes_and_log_order_at_new_positions(store: StoreAdapter) -> None:
    await store.append("local", [new_event()], 0)
    head = await store.log_head()
    imported = [
        recorded_event("a-1", 1, position=10, metadata={"k": "välue"}),
        recorded_event("a-2", 1, position=11),
        recorded_event("a-1", 2, position=12, payload=b"\x00\xff"),
    ]
    assert await store.import_events(imported) == 3
    written = (await store.read_log(head, LogFilter(), 10)).events
    assert without_positions(list(written)) == without_positions(imported)
    assert [e.position for e in written] == sorted(e.position for e in written)
    assert written[0].position > head
    assert await store.read_aggregate("a-1") == [written[0], written[2]]
    assert await store.log_head() == written[-1].position


async def test_importing_again_writes_nothing(store: StoreAdapter, contents: ContentsOf) -> None:
    imported = [recorded_event("a-1", 1), recorded_event("a-1", 2), recorded_event("a-2", 1)]
    await store.import_events(imported)
    before = await contents()
    assert await store.import_events(imported) == 0
    assert (await contents()).changes_since(before) == {}


async def test_an_import_resumed_mid_batch_writes_only_the_rest(store: StoreAdapter) -> None:
    imported = [recorded_event("a-1", v) for v in (1, 2, 3, 4)]
    await store.import_events(imported[:2])
    assert await store.import_events(imported) == 2
    assert [e.event_id for e in await store.read_aggregate("a-1")] == [e.event_id for e in imported]


@pytest.mark.parametrize(
    ("reason", "batch"),
    [
        ("VERSION_GAP", lambda held: [recorded_event("a-2", 1), recorded_event("a-2", 3)]),
        ("VERSION_GAP", lambda held: [recorded_event("a-1", 3)]),
        ("AGGREGATE_NOT_EMPTY", lambda held: [recorded_event("a-2", 1), recorded_event("a-1", 1)]),
        ("EVENT_ID_TAKEN", lambda held: [recorded_event("a-2", 1), recorded_event("a-2", 2, event_id=held.event_id)]),
        ("AGGREGATE_NOT_EMPTY", lambda held: [recorded_event("a-1", 2, event_type=TOMBSTONE_EVENT_TYPE)]),
    ],
)
async def test_an_event_that_does_not_fit_refuses_its_batch_and_writes_nothing(
    store: StoreAdapter, reason: str, batch: object, contents: ContentsOf
) -> None:
    (held,) = await store.append("a-1", [new_event()], 0)
    before = await contents()
    events = batch(held)  # type: ignore[operator]
    with pytest.raises(ImportConflict) as refused:
        await store.import_events(events)
    assert refused.value.reason == reason
    assert refused.value.metadata["aggregate_id"] == events[-1].aggregate_id
    assert refused.value.metadata["version"] == str(events[-1].version)
    assert (await contents()).changes_since(before) == {}


async def test_a_tombstone_stands_alone_above_the_versions_it_replaced(store: StoreAdapter) -> None:
    tombstone = recorded_event("a-1", 8, event_type=TOMBSTONE_EVENT_TYPE)
    assert await store.import_events([tombstone]) == 1
    head = await store.head("a-1")
    assert head is not None and (head.version, head.deleted) == (8, True)


async def test_snapshots_and_command_records_are_imported_once(store: StoreAdapter, contents: ContentsOf) -> None:
    snapshots = [snapshot("a-1", 1), snapshot("a-1", 2), snapshot("a-2", 5)]
    fields = Rejection("ValidationError", "INVALID", "two fields", {}, (("amount", "negative"), ("to", "empty")))
    records = [
        command_record("a-1", 1, 1, command_id="c-1"),
        replace(command_record("a-2", 1, 0, command_id="c-2", rejection=fields), issued_at_us=1_767_225_600_000_001),
    ]
    # A snapshot is of a version its aggregate has: the events come first.
    await store.import_events(
        [recorded_event("a-1", v) for v in (1, 2)] + [recorded_event("a-2", v) for v in range(1, 6)]
    )
    assert await store.import_snapshots(snapshots) == 3
    assert await store.import_commands(records) == 2
    before = await contents()
    assert await store.import_snapshots(snapshots) == 0
    assert await store.import_commands(records) == 0
    assert (await contents()).changes_since(before) == {}
    assert await store.load_snapshot("a-1") == snapshot("a-1", 2)
    assert await store.find_command("c-2") == records[1]  # when it was issued, the fields at fault


async def test_a_snapshot_beyond_its_aggregates_events_or_of_another_type_is_refused_whole(
    store: StoreAdapter, contents: ContentsOf
) -> None:
    await store.import_events([recorded_event("a-1", 1), recorded_event("a-1", 2)])
    before = await contents()
    for bad, reason in (
        (snapshot("a-1", 3), "SNAPSHOT_AHEAD"),
        (snapshot("a-2", 1), "SNAPSHOT_AHEAD"),  # an aggregate without events
        (replace(snapshot("a-1", 2), aggregate_type="Other"), "AGGREGATE_TYPE_MISMATCH"),
    ):
        with pytest.raises(ImportConflict) as refused:
            await store.import_snapshots([snapshot("a-1", 1), bad])
        assert refused.value.reason == reason
        assert refused.value.metadata["aggregate_id"] == bad.aggregate_id
    assert (await contents()).changes_since(before) == {}  # not even the good snapshot at version 1


async def test_an_event_of_another_type_than_its_aggregates_is_refused_whole(
    store: StoreAdapter, contents: ContentsOf
) -> None:
    await store.import_events([recorded_event("a-1", 1)])
    before = await contents()
    other = replace(recorded_event("a-1", 2), aggregate_type="Other")
    for batch in ([other], [recorded_event("a-2", 1), replace(recorded_event("a-2", 2), aggregate_type="Other")]):
        with pytest.raises(ImportConflict) as refused:
            await store.import_events(batch)
        assert refused.value.reason == "AGGREGATE_TYPE_MISMATCH"
        assert refused.value.metadata["event_id"] == batch[-1].event_id
    assert (await contents()).changes_since(before) == {}


async def test_claims_are_imported_unless_another_aggregate_holds_one(
    store: StoreAdapter, contents: ContentsOf
) -> None:
    await store.append("a-1", [new_event()], 0, claims=[ClaimChange("users.email", "ann@x")])
    assert (
        await store.import_claims([HeldClaim("users.email", "ann@x", "a-1"), HeldClaim("users.email", "bob@x", "a-2")])
        == 1
    )
    before = await contents()
    with pytest.raises(ImportConflict) as refused:
        await store.import_claims([HeldClaim("users.email", "eve@x", "a-3"), HeldClaim("users.email", "ann@x", "a-3")])
    assert refused.value.reason == "CLAIM_HELD"
    assert refused.value.metadata == {"scope": "users.email", "aggregate_id": "a-3", "holder": "a-1"}
    assert "ann@x" not in refused.value.message
    assert (await contents()).changes_since(before) == {}


async def test_an_import_releases_an_aggregates_old_claims_as_it_takes_the_new_in_one_transaction(
    store: StoreAdapter, contents: ContentsOf
) -> None:
    """What an incremental import needs to make an aggregate's claims what
    its state declares: list them, then give up the values its imported
    history released while taking the new ones, all or nothing."""
    email, name = "users.email", "users.name"
    await store.append("u-1", [new_event()], 0, claims=[ClaimChange(email, "old@x"), ClaimChange(name, "ann")])
    await store.append("u-2", [new_event()], 0, claims=[ClaimChange(email, "bob@x")])
    await store.append("u-3", [new_event()], 0, claims=[ClaimChange(email, "cy@x")])
    assert await store.claims_page(("", ""), 10, aggregate_id="u-1") == [
        HeldClaim(email, "old@x", "u-1"),
        HeldClaim(name, "ann", "u-1"),
    ]
    # A value another aggregate holds: refused, and nothing released either.
    before = await contents()
    with pytest.raises(ImportConflict) as refused:
        await store.import_claims([HeldClaim(email, "bob@x", "u-1")], released=[HeldClaim(email, "old@x", "u-1")])
    assert refused.value.metadata == {"scope": email, "aggregate_id": "u-1", "holder": "u-2"}
    assert (await contents()).changes_since(before) == {}
    # Released and taken together; a released claim the aggregate does not
    # hold (u-2's value) is left to its holder.
    taken = await store.import_claims(
        [HeldClaim(email, "new@x", "u-1"), HeldClaim(name, "ann", "u-1")],
        released=[HeldClaim(email, "old@x", "u-1"), HeldClaim(email, "bob@x", "u-1")],
    )
    assert taken == 1
    assert await store.claims_page(("", ""), 10, aggregate_id="u-1") == [
        HeldClaim(email, "new@x", "u-1"),
        HeldClaim(name, "ann", "u-1"),
    ]
    assert (await store.claim_owner(email, "old@x"), await store.claim_owner(email, "bob@x")) == (None, "u-2")
    # Two aggregates swapping values in one call: each release comes before the takes.
    swapped = [HeldClaim(email, "cy@x", "u-2"), HeldClaim(email, "bob@x", "u-3")]
    assert (
        await store.import_claims(swapped, released=[HeldClaim(email, "bob@x", "u-2"), HeldClaim(email, "cy@x", "u-3")])
        == 2
    )
    assert (await store.claim_owner(email, "bob@x"), await store.claim_owner(email, "cy@x")) == ("u-3", "u-2")


async def test_data_keys_are_imported_and_forgotten_ones_stay_forgotten(store: StoreAdapter) -> None:
    await store.create_data_key(DataKey("live", "m1", b"k" * 40))
    await store.create_data_key(DataKey("gone", "m1", b"g" * 40))
    await store.forget_data_key("gone")
    await store.append("live", [new_event()], 0, claims=[ClaimChange("s", "v")])
    await store.save_snapshot(snapshot("live", 1))
    # What a read model derived from it, and what a projection parked of it.
    documents = [DocumentWrite("k", "t.Doc", b"1", ("live",)), DocumentWrite("other", "t.Doc", b"2", ("new",))]
    parked = [_parked_by_projection("live", 1)]
    await store.commit_projection("p", expected_position=0, new_position=1, writes=documents, parked=parked)
    written = await store.import_data_keys(
        [
            DataKey("new", "m1", b"n" * 40),
            DataKey("gone", "m1", b"g" * 40),  # a forgotten key does not come back
            DataKey("live", None, None),  # forgotten in the export: forgotten here too
            DataKey("new-gone", None, None),
        ]
    )
    assert written == 3
    assert await store.load_data_key("new") == DataKey("new", "m1", b"n" * 40)
    assert (await store.load_data_key("gone")) == DataKey("gone", None, None)
    assert (await store.load_data_key("live")) == DataKey("live", None, None)
    assert (await store.load_data_key("new-gone")) == DataKey("new-gone", None, None)
    assert await store.load_snapshot("live") is None
    assert await store.claim_owner("s", "v") is None
    assert await store.load_document("p", "k") is None
    assert await store.load_document("p", "other") == StoredDocument("other", "t.Doc", b"2")
    assert await store.parked_events("p") == []


async def test_an_imported_tombstone_drops_what_groups_parked_of_the_aggregate_as_a_forget_does(
    store: StoreAdapter,
) -> None:
    await store.create_data_key(DataKey("live", "m1", b"k" * 40))
    await store.create_group(GroupSpec(name="g", log_filter=LogFilter(), start_position=0, segments=1))
    await store.park("g", [_parked_by_group("live", 1), _parked_by_group("kept", 2)])
    assert await store.import_data_keys([DataKey("live", None, None)]) == 1
    assert [e.aggregate_id for e in await store.list_parked("g")] == ["kept"]


async def test_what_forgetting_removed_is_not_imported_again(store: StoreAdapter, contents: ContentsOf) -> None:
    """A forgotten aggregate's snapshots and claims (which forgetting
    removed) are not written by an import of an export taken before the
    forget: not its snapshot, not its claim, nor is its claim held against
    the aggregate that took the value since (before the fix, both came back
    and the value could not be registered again)."""
    await store.create_data_key(DataKey("gone", "m1", b"g" * 40))
    await store.create_data_key(DataKey("live", "m1", b"k" * 40))
    await store.append("gone", [new_event()], 0, claims=[ClaimChange("users.email", "zelda@x")])
    await store.append("live", [new_event()], 0)
    await store.forget_data_key("gone")
    await store.append("other", [new_event()], 0, claims=[ClaimChange("users.email", "zelda@x")])
    before = await contents()
    assert await store.import_snapshots([snapshot("gone", 1)]) == 0
    claims = [HeldClaim("users.email", "zelda@x", "gone"), HeldClaim("users.email", "zelda-2@x", "gone")]
    assert await store.import_claims(claims) == 0
    assert (await contents()).changes_since(before) == {}
    assert await store.load_snapshot("gone") is None
    assert await store.claim_owner("users.email", "zelda@x") == "other"
    # The live aggregate beside it in the same batches is written.
    assert await store.import_snapshots([snapshot("gone", 1), snapshot("live", 1)]) == 1
    assert await store.import_claims([*claims, HeldClaim("users.email", "kim@x", "live")]) == 1
    assert await store.load_snapshot("live") == snapshot("live", 1)
    assert await store.claim_owner("users.email", "kim@x") == "live"
    # Which aggregates are forgotten, for the importer to leave their records out and say so.
    assert await store.forgotten_aggregates(["gone", "live", "other", "unknown"]) == {"gone"}
    assert await store.forgotten_aggregates([]) == set()


async def test_another_live_data_key_refuses_the_batch(store: StoreAdapter, contents: ContentsOf) -> None:
    await store.create_data_key(DataKey("a-1", "m1", b"k" * 40))
    before = await contents()
    with pytest.raises(ImportConflict) as refused:
        await store.import_data_keys([DataKey("a-2", "m1", b"2" * 40), DataKey("a-1", "m1", b"x" * 40)])
    assert (refused.value.reason, refused.value.metadata) == ("DATA_KEY_CONFLICT", {"aggregate_id": "a-1"})
    assert (await contents()).changes_since(before) == {}
    assert await store.import_data_keys([DataKey("a-1", "m1", b"k" * 40)]) == 0


async def test_removing_an_aggregate_leaves_the_others_and_the_log_moves_on(store: StoreAdapter) -> None:
    record = command_record("a-1", 1, 2)
    await store.append("a-1", [new_event(), new_event()], 0, commands=[record], claims=[ClaimChange("s", "v")])
    (other,) = await store.append("a-2", [new_event()], 0)
    await store.save_snapshot(snapshot("a-1", 2))
    head = await store.log_head()
    assert await store.remove_aggregate("a-1") == 2
    assert await store.read_aggregate("a-1") == []
    assert await store.head("a-1") is None
    assert await store.load_snapshot("a-1") is None
    assert await store.claim_owner("s", "v") is None
    assert await store.find_command(record.command_id) == record
    assert await log_of(store) == [other]
    (again,) = await store.append("a-1", [new_event()], 0)
    assert again.position > head


async def test_a_batch_replacing_an_aggregate_removes_it_and_writes_in_one_transaction(
    store: StoreAdapter, contents: ContentsOf
) -> None:
    await store.append("a-1", [new_event() for _ in range(3)], 0, claims=[ClaimChange("s", "v")])
    await store.save_snapshot(snapshot("a-1", 3))
    before = await contents()
    # Refused (a-2's event is a version ahead): a-1 is not removed either.
    with pytest.raises(ImportConflict) as refused:
        await store.import_events([recorded_event("a-1", 1), recorded_event("a-2", 2)], replacing=["a-1"])
    assert refused.value.reason == "VERSION_GAP"
    assert (await contents()).changes_since(before) == {}

    replacing = [recorded_event("a-1", 1), recorded_event("a-1", 2), recorded_event("a-2", 1)]
    assert await store.import_events(replacing, replacing=["a-1"]) == 3
    assert without_positions(await store.read_aggregate("a-1")) == without_positions(replacing[:2])
    assert await store.claim_owner("s", "v") is None
    assert await store.load_snapshot("a-1") is None


async def test_removing_the_last_aggregate_of_the_log_leaves_its_end_where_it_was(store: StoreAdapter) -> None:
    """The log's end never goes back but with the database: a live reader
    that finds it below what it read takes the log for a restored one
    (LOG_REWOUND). Removing the aggregate whose events end the log (an
    import replacing it) must not look like that."""
    await store.append("a-2", [new_event()], 0)
    await store.append("a-1", [new_event(), new_event()], 0)
    head = await store.log_head()
    assert await store.remove_aggregate("a-1") == 2
    assert await store.log_head() == head
    assert (await store.read_log(0, LogFilter(), 10)).head == head


def tombstone() -> NewEvent:
    return replace(new_event(TOMBSTONE_EVENT_TYPE, aggregate_type=""), payload=b"\x1a\x03why")


async def test_deleting_an_aggregate_leaves_its_tombstone_at_the_end_of_the_log(store: StoreAdapter) -> None:
    record = command_record("a-1", 1, 3)
    await store.append("a-1", [new_event() for _ in range(3)], 0, commands=[record], claims=[ClaimChange("s", "v")])
    (other,) = await store.append("a-2", [new_event()], 0)
    await store.save_snapshot(snapshot("a-1", 3))
    head = await store.log_head()
    marker = tombstone()
    recorded = await store.delete_aggregate("a-1", marker)
    assert recorded is not None
    assert (recorded.version, recorded.event_id, recorded.event_type) == (4, marker.event_id, TOMBSTONE_EVENT_TYPE)
    assert recorded.aggregate_type == "Thing"  # the aggregate's, whatever the tombstone said
    assert recorded.position > head
    assert await store.read_aggregate("a-1") == [recorded]
    assert await store.head("a-1") == AggregateHead("Thing", 4, deleted=True)
    assert await log_of(store) == [other, recorded]
    assert await store.log_head() == recorded.position
    assert (await store.load_snapshot("a-1"), await store.claim_owner("s", "v")) == (None, None)
    assert await store.find_command(record.command_id) == record
    with pytest.raises(ConcurrencyConflict):
        await store.append("a-1", [new_event()], 3)  # a writer that decided before the deletion


def _parked_by_projection(aggregate_id: str, position: int) -> ParkedEvent:
    return ParkedEvent("p", position, f"00000000-0000-4000-8000-{position:012}", "t.A", aggregate_id, "boom", 3, 1)


def _parked_by_group(aggregate_id: str, position: int) -> GroupParkedEvent:
    return GroupParkedEvent(
        event_id=f"00000000-0000-4000-8000-{position:012}",
        position=position,
        segment=0,
        aggregate_id=aggregate_id,
        attempts=3,
        reason="boom",
    )


async def test_deleting_an_aggregate_drops_what_projections_and_groups_parked_of_it(store: StoreAdapter) -> None:
    # Its events are gone, so a parked one can never be replayed, and a
    # parked event's error may quote its payload. Documents stay: a read
    # model learns of the deletion from the tombstone (and may keep what
    # other aggregates contributed to a document).
    await store.append("a-1", [new_event(), new_event()], 0)
    await store.append("a-2", [new_event()], 0)
    await store.create_group(GroupSpec(name="g", log_filter=LogFilter(), start_position=0, segments=1))
    await store.park("g", [_parked_by_group("a-1", 1), _parked_by_group("a-2", 3)])
    document = DocumentWrite("k", "t.Doc", b"1", ("a-1",))
    parked = [_parked_by_projection("a-1", 2), _parked_by_projection("a-2", 3)]
    await store.commit_projection("p", expected_position=0, new_position=3, writes=[document], parked=parked)
    with pytest.raises(ConcurrencyConflict):
        await store.delete_aggregate("a-1", tombstone(), expected_version=1)
    assert len(await store.parked_events("p")) == len(await store.list_parked("g")) == 2  # refused: kept
    await store.delete_aggregate("a-1", tombstone())
    assert [e.aggregate_id for e in await store.parked_events("p")] == ["a-2"]
    assert [e.aggregate_id for e in await store.list_parked("g")] == ["a-2"]
    assert await store.load_document("p", "k") == StoredDocument("k", "t.Doc", b"1")


async def test_deleting_at_another_version_conflicts_and_changes_nothing(
    store: StoreAdapter, contents: ContentsOf
) -> None:
    await store.append("a-1", [new_event(), new_event()], 0)
    before = await contents()
    with pytest.raises(ConcurrencyConflict) as conflict:
        await store.delete_aggregate("a-1", tombstone(), expected_version=1)
    assert conflict.value.metadata["current_version"] == "2"
    assert (await contents()).changes_since(before) == {}
    assert await store.delete_aggregate("a-1", tombstone(), expected_version=2) is not None


async def test_deleting_again_or_what_has_no_events_changes_nothing(store: StoreAdapter, contents: ContentsOf) -> None:
    await store.append("a-1", [new_event()], 0)
    first = await store.delete_aggregate("a-1", tombstone())
    before = await contents()
    assert await store.delete_aggregate("a-1", tombstone()) == first
    assert await store.delete_aggregate("a-1", tombstone(), expected_version=1) == first
    assert await store.delete_aggregate("nobody", tombstone()) is None
    assert (await contents()).changes_since(before) == {}


async def test_aggregates_are_listed_by_id_with_their_last_event(store: StoreAdapter) -> None:
    await store.append("b", [new_event("x.v1.One")], 0)
    await store.append("a", [new_event("x.v1.One"), new_event("x.v1.Two", timestamp_us=5_000)], 0)
    await store.append("c", [new_event("x.v1.Three")], 0)
    first = await store.aggregates_page("", 2)
    assert [(s.aggregate_id, s.version, s.last_event_type) for s in first] == [
        ("a", 2, "x.v1.Two"),
        ("b", 1, "x.v1.One"),
    ]
    assert first[0].last_timestamp_us == 5_000 and first[0].aggregate_type == "Thing"
    rest = await store.aggregates_page("b", 2)
    assert [s.aggregate_id for s in rest] == ["c"]


async def test_a_snapshot_saved_after_a_deletion_does_not_bring_the_state_back(store: StoreAdapter) -> None:
    """Snapshots are saved in the background after the append they follow:
    one that arrives after the aggregate was deleted is not kept (on
    PostgreSQL a save under way and a deletion also wait for each other:
    sql.SNAPSHOT_LOCK_LAST_EVENT)."""
    await store.append("a-1", [new_event() for _ in range(3)], 0)
    assert await store.delete_aggregate("a-1", tombstone()) is not None
    await store.save_snapshot(snapshot("a-1", 3))
    assert await store.load_snapshot("a-1") is None
    await store.save_snapshot(snapshot("a-2", 1))  # an aggregate with no events keeps its own
    assert await store.load_snapshot("a-2") == snapshot("a-2", 1)


async def test_a_snapshot_is_kept_only_through_the_event_it_was_built_through(store: StoreAdapter) -> None:
    """A save in the background after an append names the event it was
    built through (``through_event_id``): when an import replaced the
    aggregate's history meanwhile (other events, other ids at the same
    versions), the snapshot would be the old history's state over the new
    one, and is not kept."""
    old = await store.append("a-1", [new_event() for _ in range(3)], 0)
    assert await store.remove_aggregate("a-1") == 3
    replacing = [recorded_event("a-1", version) for version in (1, 2, 3)]
    await store.import_events(replacing)
    await store.save_snapshot(replace(snapshot("a-1", 3), through_event_id=old[-1].event_id))
    assert await store.load_snapshot("a-1") is None
    await store.save_snapshot(replace(snapshot("a-1", 2), through_event_id=replacing[2].event_id))
    assert await store.load_snapshot("a-1") is None  # the event at its version is another
    through = replace(snapshot("a-1", 3), through_event_id=replacing[2].event_id)
    await store.save_snapshot(through)
    assert await store.load_snapshot("a-1") == replace(through, through_event_id=None)
    await store.save_snapshot(snapshot("a-2", 1))  # none named: only the deletion's rule applies
    assert await store.load_snapshot("a-2") == snapshot("a-2", 1)


async def test_an_imported_tombstone_erases_the_aggregates_command_texts_as_a_forget_does(store: StoreAdapter) -> None:
    refusal = Rejection("ValidationError", "INSUFFICIENT_FUNDS", "Mallory has 12", {"balance": "12"})
    await store.create_data_key(DataKey("live", "m1", b"k" * 40))
    await store.append("live", [], 0, commands=[command_record("live", 1, 0, command_id="c-1", rejection=refusal)])
    await store.append("kept", [], 0, commands=[command_record("kept", 1, 0, command_id="c-2", rejection=refusal)])
    assert await store.import_data_keys([DataKey("live", None, None)]) == 1
    erased = await store.find_command("c-1")
    assert erased is not None and erased.fingerprint == ERASED_FINGERPRINT
    assert erased.rejection == Rejection("ValidationError", "INSUFFICIENT_FUNDS", "")
    assert await store.find_command("c-2") == command_record("kept", 1, 0, command_id="c-2", rejection=refusal)
