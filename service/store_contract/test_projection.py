"""Projection checkpoints and documents, as every store keeps them."""

from __future__ import annotations

import asyncio

import pytest

from service.errors import ConcurrencyConflict
from service.store.base import StoreAdapter
from service.store.records import (
    PARKED_COMMAND_TYPE,
    DataKey,
    DocumentRange,
    DocumentWrite,
    ParkedEvent,
    StoredDocument,
)
from service.store_contract.contents import ContentsOf

# Every test here is a coroutine (the plugin runs them on pytest-asyncio).
pytestmark = pytest.mark.asyncio


async def test_a_new_projection_starts_at_zero_with_no_documents(store: StoreAdapter) -> None:
    assert await store.projection_position("p") == 0
    assert await store.load_document("p", "k") is None


async def test_documents_and_checkpoint_commit_together(store: StoreAdapter) -> None:
    await store.commit_projection(
        "p",
        expected_position=0,
        new_position=7,
        writes=[DocumentWrite("k", "t.Doc", b"\x01"), DocumentWrite("j", "t.Doc", b"")],
    )
    assert await store.projection_position("p") == 7
    assert await store.load_document("p", "k") == StoredDocument("k", "t.Doc", b"\x01")
    assert await store.load_document("p", "j") == StoredDocument("j", "t.Doc", b"")


async def test_documents_are_counted_by_key_prefix_up_to_a_limit(store: StoreAdapter) -> None:
    keys = ["owner:a", "owner:b", "owner:\U0001f600", "owner", "ownes:x", "account:1", "owner:\uffff"]
    writes = [DocumentWrite(key, "t.Doc", b"") for key in keys]
    await store.commit_projection("p", expected_position=0, new_position=1, writes=writes)
    await store.commit_projection("q", expected_position=0, new_position=1, writes=[DocumentWrite("owner:q")])

    assert await store.count_documents("p", "owner:", limit=100) == 4  # code points: the emoji and \uffff too
    assert await store.count_documents("p", "owner", limit=100) == 5
    assert await store.count_documents("p", "", limit=100) == 7
    assert await store.count_documents("p", "owner:", limit=2) == 2
    assert await store.count_documents("p", "nobody", limit=100) == 0
    assert await store.count_documents("r", "", limit=100) == 0


async def test_documents_are_read_together(store: StoreAdapter) -> None:
    # Keys that an array literal or a JSON text must quote or escape.
    keys = ["k", "a,b", 'quote"d', "back\\slash", "{braces}", "ünï", " spaced ", "NULL", ""]
    writes = [DocumentWrite(key, "t.Doc", key.encode()) for key in keys]
    await store.commit_projection("p", expected_position=0, new_position=3, writes=writes)
    await store.commit_projection(
        "q", expected_position=0, new_position=1, writes=[DocumentWrite("only-q", "t.Doc", b"")]
    )

    found = await store.load_documents("p", [*keys, "absent", "only-q", "k"])

    assert sorted(found, key=lambda document: document.key) == sorted(
        (StoredDocument(key, "t.Doc", key.encode()) for key in keys), key=lambda document: document.key
    )
    assert await store.load_documents("p", []) == []
    assert await store.load_documents("q", keys) == []


async def test_a_commit_from_a_stale_checkpoint_writes_nothing(store: StoreAdapter, contents: ContentsOf) -> None:
    await store.commit_projection("p", expected_position=0, new_position=5, writes=[DocumentWrite("k", "t.Doc", b"a")])
    before = await contents()
    with pytest.raises(ConcurrencyConflict):
        await store.commit_projection(
            "p",
            expected_position=0,
            new_position=9,
            writes=[DocumentWrite("k", "t.Doc", b"b"), DocumentWrite("j", "t.Doc", b"j")],
        )
    assert (await contents()).changes_since(before) == {}
    assert await store.projection_position("p") == 5
    assert await store.load_document("p", "k") == StoredDocument("k", "t.Doc", b"a")


async def test_documents_are_replaced_and_deleted(store: StoreAdapter) -> None:
    await store.commit_projection("p", expected_position=0, new_position=1, writes=[DocumentWrite("k", "t.A", b"a")])
    await store.commit_projection("p", expected_position=1, new_position=2, writes=[DocumentWrite("k", "t.B", b"b")])
    assert await store.load_document("p", "k") == StoredDocument("k", "t.B", b"b")
    await store.commit_projection("p", expected_position=2, new_position=3, writes=[DocumentWrite("k")])
    assert await store.load_document("p", "k") is None


def _parked_command(command_id: str, *subjects: str) -> DocumentWrite:
    return DocumentWrite(f"parked:{command_id}", PARKED_COMMAND_TYPE, b"\x0a\x01c", subjects)


async def test_a_reactions_parked_commands_are_counted_by_their_type(store: StoreAdapter) -> None:
    # Its index, its states and another reaction's parked commands are not
    # counted; the count follows parking, replaying (a delete) and resets.
    assert await store.count_parked_commands("r") == 0
    writes = [_parked_command(f"c-{n}") for n in range(5)]
    others = [DocumentWrite("parked", "chronicle.v1.ParkedCommands", b""), DocumentWrite("state:a", "t.State", b"")]
    await store.commit_projection("r", expected_position=0, new_position=3, writes=[*writes, *others])
    await store.commit_projection("q", expected_position=0, new_position=2, writes=[_parked_command("c-0")])
    assert await store.count_parked_commands("r") == 5
    await store.commit_projection(
        "r", expected_position=3, new_position=3, writes=[DocumentWrite("parked:c-1"), DocumentWrite("parked:c-2")]
    )
    assert await store.count_parked_commands("r") == 3
    # A document that stops being a parked command stops being counted.
    await store.commit_projection(
        "r", expected_position=3, new_position=4, writes=[DocumentWrite("parked:c-3", "t.A", b"a")]
    )
    assert await store.count_parked_commands("r") == 2
    assert await store.count_parked_commands("q") == 1
    await store.reset_projection("r")
    assert await store.count_parked_commands("r") == 0
    assert await store.count_parked_commands("q") == 1


async def test_a_parked_command_of_a_forgotten_aggregate_is_not_counted(store: StoreAdapter) -> None:
    await store.create_data_key(DataKey("acc-1", "m1", b"w" * 40))
    writes = [_parked_command("c-1", "acc-1", "order-1"), _parked_command("c-2", "acc-2")]
    await store.commit_projection("r", expected_position=0, new_position=3, writes=writes)
    await store.forget_data_key("acc-1")
    assert await store.count_parked_commands("r") == 1


def _due(key: str, due_us: int, *subjects: str) -> DocumentWrite:
    return DocumentWrite(key, "chronicle.v1.Deadline", key.encode(), subjects, due_us)


async def test_due_documents_come_soonest_first_up_to_a_time(store: StoreAdapter) -> None:
    # A reaction's deadlines: only documents written with a due time, only
    # this projection's, those due by ``until_us``, soonest first (then by
    # key), at most ``limit``.
    writes = [_due("deadline:c", 300), _due("deadline:a", 100), _due("deadline:b", 300), _due("deadline:z", 900)]
    others = [DocumentWrite("state:a", "t.State", b"s"), DocumentWrite("parked", "t.Index", b"")]
    await store.commit_projection("r", expected_position=0, new_position=2, writes=[*writes, *others])
    await store.commit_projection("q", expected_position=0, new_position=1, writes=[_due("deadline:q", 50)])

    found = await store.due_documents("r", until_us=300, limit=10)
    assert found == [
        StoredDocument("deadline:a", "chronicle.v1.Deadline", b"deadline:a"),
        StoredDocument("deadline:b", "chronicle.v1.Deadline", b"deadline:b"),
        StoredDocument("deadline:c", "chronicle.v1.Deadline", b"deadline:c"),
    ]
    assert [d.key for d in await store.due_documents("r", until_us=10**15, limit=2)] == ["deadline:a", "deadline:b"]
    assert await store.due_documents("r", until_us=99, limit=10) == []
    assert await store.due_summary("r") == (4, 100)
    assert await store.due_summary("q") == (1, 50)
    assert await store.due_summary("none") == (0, None)


async def test_a_due_time_is_replaced_cleared_and_deleted_with_its_document(store: StoreAdapter) -> None:
    await store.commit_projection(
        "r", expected_position=0, new_position=1, writes=[_due("deadline:a", 100), _due("deadline:b", 200)]
    )
    # Rescheduled later; the other deleted (fired, or cancelled).
    await store.commit_projection(
        "r", expected_position=1, new_position=1, writes=[_due("deadline:a", 500), DocumentWrite("deadline:b")]
    )
    assert await store.due_summary("r") == (1, 500)
    assert [d.key for d in await store.due_documents("r", until_us=400, limit=10)] == []
    # Written again without one: it is no longer due (nor counted).
    await store.commit_projection(
        "r", expected_position=1, new_position=2, writes=[DocumentWrite("deadline:a", "t.Other", b"x")]
    )
    assert await store.due_summary("r") == (0, None)
    assert await store.due_documents("r", until_us=10**15, limit=10) == []
    assert await store.load_document("r", "deadline:a") == StoredDocument("deadline:a", "t.Other", b"x")
    # And with one again.
    await store.commit_projection("r", expected_position=2, new_position=2, writes=[_due("deadline:a", 700)])
    assert await store.due_summary("r") == (1, 700)
    await store.reset_projection("r")
    assert await store.due_summary("r") == (0, None)


async def test_a_due_document_of_a_forgotten_aggregate_goes(store: StoreAdapter) -> None:
    await store.create_data_key(DataKey("acc-1", "m1", b"w" * 40))
    writes = [_due("deadline:a", 100, "acc-1", "order-1"), _due("deadline:b", 200, "acc-2")]
    await store.commit_projection("r", expected_position=0, new_position=3, writes=writes)
    await store.forget_data_key("acc-1")
    assert await store.due_summary("r") == (1, 200)
    assert [d.key for d in await store.due_documents("r", until_us=10**15, limit=10)] == ["deadline:b"]


async def test_projections_are_namespaces_of_their_own(store: StoreAdapter) -> None:
    await store.commit_projection("p", expected_position=0, new_position=4, writes=[DocumentWrite("k", "t.A", b"p")])
    await store.commit_projection("q", expected_position=0, new_position=2, writes=[DocumentWrite("k", "t.A", b"q")])
    assert (await store.projection_position("p"), await store.projection_position("q")) == (4, 2)
    assert await store.load_document("q", "k") == StoredDocument("k", "t.A", b"q")


# -- listing documents by key prefix -------------------------------------------------

KEYS = ["a", "ab", "abc", "abd", "ac", "b", "b\U0010ffff", "b\U0010ffffz", "c", "é", "é1", "\ud7ff", "\ue000", "\uff5a"]


async def _with_documents(store: StoreAdapter, keys: list[str], *, projection: str = "p") -> None:
    writes = [DocumentWrite(key, "t.Doc", key.encode()) for key in keys]
    await store.commit_projection(projection, expected_position=0, new_position=1, writes=writes)


async def _listed(store: StoreAdapter, listing: DocumentRange, projection: str = "p") -> list[str]:
    return [d.key for d in await store.list_documents(projection, listing)]


@pytest.mark.parametrize(
    "prefix", ["", "a", "ab", "abc", "b", "b\U0010ffff", "é", "\ud7ff", "\ue000", "z", "abcd", "\uff5a"]
)
async def test_documents_are_listed_by_key_prefix_in_code_point_order(store: StoreAdapter, prefix: str) -> None:
    await _with_documents(store, KEYS)
    expected = sorted(k for k in KEYS if k.startswith(prefix))
    assert await _listed(store, DocumentRange(prefix=prefix, limit=100)) == expected
    assert await _listed(store, DocumentRange(prefix=prefix, descending=True, limit=100)) == expected[::-1]


async def test_documents_are_listed_in_pages_after_a_key(store: StoreAdapter) -> None:
    await _with_documents(store, KEYS)
    for descending in (False, True):
        expected = sorted((k for k in KEYS if k.startswith("a")), reverse=descending)
        pages, after = [], None
        while True:
            page = await _listed(store, DocumentRange(prefix="a", after=after, descending=descending, limit=2))
            if not page:
                break
            assert len(page) <= 2
            pages.extend(page)
            after = page[-1]
        assert pages == expected


async def test_listing_stays_in_its_projection_and_sees_deletes(store: StoreAdapter) -> None:
    await _with_documents(store, ["a1", "a2", "a3"])
    await _with_documents(store, ["a0", "a4"], projection="q")
    await store.commit_projection("p", expected_position=1, new_position=2, writes=[DocumentWrite("a2")])
    listed = await store.list_documents("p", DocumentRange(prefix="a"))
    assert listed == [StoredDocument("a1", "t.Doc", b"a1"), StoredDocument("a3", "t.Doc", b"a3")]
    assert await _listed(store, DocumentRange(), projection="q") == ["a0", "a4"]
    assert await _listed(store, DocumentRange(), projection="none") == []


# -- rebuilding from the start --------------------------------------------------------


def _parked(position: int, event_id: str = "e", projection: str = "p") -> ParkedEvent:
    return ParkedEvent(
        projection, position, event_id, "t.Happened", "agg-1", "ValueError: no", 3, 1_700_000_000_000_000
    )


async def test_a_reset_clears_documents_parked_events_and_the_checkpoint_together(store: StoreAdapter) -> None:
    await store.commit_projection(
        "p", expected_position=0, new_position=5, writes=[DocumentWrite("k", "t.A", b"a")], parked=[_parked(3)]
    )
    await store.commit_projection("q", expected_position=0, new_position=4, writes=[DocumentWrite("k", "t.A", b"q")])
    await store.reset_projection("p")
    assert await store.projection_position("p") == 0
    assert await store.load_document("p", "k") is None
    assert await store.parked_events("p") == []
    assert await store.count_parked_events("p") == 0
    # Other projections keep theirs.
    assert await store.projection_position("q") == 4
    assert await store.load_document("q", "k") == StoredDocument("k", "t.A", b"q")
    # And it is applied again from the start.
    await store.commit_projection("p", expected_position=0, new_position=2, writes=[DocumentWrite("j", "t.A", b"j")])
    assert await store.load_document("p", "j") == StoredDocument("j", "t.A", b"j")


async def test_a_commit_applied_before_a_reset_writes_nothing_after_it(
    store: StoreAdapter, contents: ContentsOf
) -> None:
    await store.commit_projection("p", expected_position=0, new_position=5, writes=[DocumentWrite("k", "t.A", b"a")])
    await store.reset_projection("p")
    before = await contents()
    with pytest.raises(ConcurrencyConflict):
        await store.commit_projection(
            "p", expected_position=5, new_position=9, writes=[DocumentWrite("k", "t.A", b"old")], parked=[_parked(7)]
        )
    assert (await contents()).changes_since(before) == {}


async def test_a_reset_of_a_projection_that_never_ran_changes_nothing(
    store: StoreAdapter, contents: ContentsOf
) -> None:
    before = await contents()
    await store.reset_projection("never")
    assert (await contents()).changes_since(before) == {}
    assert await store.projection_position("never") == 0


# -- parked events -------------------------------------------------------------------


async def test_parked_events_commit_with_the_checkpoint_and_list_in_log_order(store: StoreAdapter) -> None:
    await store.commit_projection("p", expected_position=0, new_position=4, writes=[], parked=[_parked(4), _parked(2)])
    await store.commit_projection(
        "p", expected_position=4, new_position=9, writes=[], parked=[_parked(7, "b"), _parked(7, "a")]
    )
    await store.commit_projection("q", expected_position=0, new_position=3, writes=[], parked=[_parked(3, "x", "q")])
    everything = await store.parked_events("p")
    assert [(e.position, e.event_id) for e in everything] == [(2, "e"), (4, "e"), (7, "a"), (7, "b")]
    assert everything[0] == _parked(2)
    assert await store.count_parked_events("p") == 4
    page = await store.parked_events("p", after=(4, "e"), limit=1)
    assert [(e.position, e.event_id) for e in page] == [(7, "a")]
    assert [(e.position, e.event_id) for e in await store.parked_events("p", after=(7, "a"))] == [(7, "b")]
    assert await store.parked_events("q") == [_parked(3, "x", "q")]


async def test_a_stale_commit_parks_nothing(store: StoreAdapter) -> None:
    await store.commit_projection("p", expected_position=0, new_position=4, writes=[])
    with pytest.raises(ConcurrencyConflict):
        await store.commit_projection("p", expected_position=0, new_position=6, writes=[], parked=[_parked(5)])
    assert await store.count_parked_events("p") == 0


async def test_a_start_fixes_a_new_checkpoint_once(store: StoreAdapter) -> None:
    # A reaction's start_from: fixed at the position given when it has no
    # checkpoint, found (and kept) by every later start.
    assert await store.start_projection("r", 12) is None
    assert await store.projection_position("r") == 12
    assert await store.start_projection("r", 40) == 12
    assert await store.start_projection("r", 0) == 12
    assert await store.projection_position("r") == 12
    # and the runner goes on from there as from any checkpoint
    await store.commit_projection("r", expected_position=12, new_position=15, writes=[])
    assert await store.start_projection("r", 99) == 15


async def test_a_start_keeps_a_checkpoint_a_commit_made_even_at_zero(store: StoreAdapter) -> None:
    await store.commit_projection("p", expected_position=0, new_position=9, writes=[DocumentWrite("k", "t.A", b"a")])
    assert await store.start_projection("p", 30) == 9
    assert await store.load_document("p", "k") == StoredDocument("k", "t.A", b"a")
    # a start at 0 is a checkpoint like any other: a later start does not move it
    assert await store.start_projection("b", 0) is None
    assert await store.start_projection("b", 30) == 0
    assert await store.projection_position("b") == 0
    await store.commit_projection("b", expected_position=0, new_position=3, writes=[])
    assert await store.projection_position("b") == 3


async def test_concurrent_starts_agree_on_the_first(store: StoreAdapter) -> None:
    starts = await asyncio.gather(*(store.start_projection("r", position) for position in (5, 6, 7, 8)))
    assert starts.count(None) == 1
    fixed = await store.projection_position("r")
    assert fixed in (5, 6, 7, 8)
    assert all(start in (None, fixed) for start in starts)


# -- stored projections: listed, and deleted a page at a time -------------------------


async def test_stored_projections_are_every_name_with_a_checkpoint_documents_or_parked_events(
    store: StoreAdapter,
) -> None:
    await store.commit_projection("p.b", expected_position=0, new_position=5, writes=[DocumentWrite("k", "t.A", b"a")])
    await store.start_projection("p.a", 7)  # a checkpoint alone
    await store.commit_projection(
        "p.c", expected_position=0, new_position=2, writes=[], parked=[_parked(1, projection="p.c")]
    )
    await store.commit_projection("p.d", expected_position=0, new_position=3, writes=[DocumentWrite("k", "t.A", b"d")])
    await store.delete_projection("p.d", limit=0)  # its checkpoint goes, its document stays (a cut deletion)
    assert await store.stored_projections() == [("p.a", 7), ("p.b", 5), ("p.c", 2), ("p.d", 0)]


async def test_a_deletion_goes_a_page_at_a_time_and_leaves_other_projections(store: StoreAdapter) -> None:
    writes = [DocumentWrite(f"k{i}", "t.A", b"x", subjects=("acc-1",)) for i in range(5)]
    await store.commit_projection("p", expected_position=0, new_position=9, writes=writes, parked=[_parked(3)])
    await store.commit_projection("q", expected_position=0, new_position=4, writes=[DocumentWrite("k", "t.A", b"q")])
    assert await store.delete_projection("p", limit=2) == 3  # two documents and the parked event
    assert await store.projection_position("p") == 0
    assert len(await store.list_documents("p", DocumentRange(prefix="", limit=10))) == 3
    assert await store.delete_projection("p", limit=2) == 2
    assert await store.delete_projection("p", limit=2) == 1
    assert await store.delete_projection("p", limit=2) == 0  # idempotent: nothing left
    assert await store.stored_projections() == [("q", 4)]
    assert await store.load_document("q", "k") == StoredDocument("k", "t.A", b"q")


async def test_a_commit_from_before_a_deletion_writes_nothing(store: StoreAdapter, contents: ContentsOf) -> None:
    await store.commit_projection("p", expected_position=0, new_position=5, writes=[DocumentWrite("k", "t.A", b"a")])
    await store.delete_projection("p", limit=10)
    before = await contents()
    with pytest.raises(ConcurrencyConflict):
        await store.commit_projection(
            "p", expected_position=5, new_position=9, writes=[DocumentWrite("k", "t.A", b"b")]
        )
    assert (await contents()).changes_since(before) == {}


async def test_a_first_run_records_its_version_and_later_ones_find_it(store: StoreAdapter) -> None:
    assert await store.projection_version("p") is None
    assert await store.start_projection_version("p", 3) == 3
    assert (await store.projection_position("p"), await store.projection_version("p")) == (0, 3)
    # another declaration's first run finds the version the first recorded
    assert await store.start_projection_version("p", 4) == 3
    await store.commit_projection("p", expected_position=0, new_position=6, writes=[])
    assert (await store.projection_position("p"), await store.projection_version("p")) == (6, 3)


async def test_a_checkpoint_made_without_a_version_is_version_1(store: StoreAdapter) -> None:
    # What a server before versions (or a reaction) committed: the default.
    await store.commit_projection("p", expected_position=0, new_position=2, writes=[])
    assert await store.projection_version("p") == 1
    assert await store.start_projection_version("p", 2) == 1


async def test_a_rebuild_records_the_new_version_with_the_reset(store: StoreAdapter) -> None:
    assert await store.start_projection_version("p", 1) == 1
    await store.commit_projection("p", expected_position=0, new_position=5, writes=[DocumentWrite("k", "t.A", b"a")])
    await store.reset_projection("p", version=2)
    assert (await store.projection_position("p"), await store.projection_version("p")) == (0, 2)
    assert await store.load_document("p", "k") is None
    # a reset without a version keeps the stored one
    await store.reset_projection("p")
    assert await store.projection_version("p") == 2
    # and a deleted projection's version goes with its checkpoint
    await store.delete_projection("p", limit=100)
    assert await store.projection_version("p") is None
