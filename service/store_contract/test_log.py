"""The global log as every store serves it to subscriptions."""

from __future__ import annotations

import asyncio

import pytest

from service.store.base import StoreAdapter
from service.store.records import LogFilter
from service.store_contract.records import new_event

# Every test here is a coroutine (the plugin runs them on pytest-asyncio).
pytestmark = pytest.mark.asyncio

EVERYTHING = LogFilter()


async def test_an_empty_log_has_head_zero_and_nothing_to_read(store: StoreAdapter) -> None:
    assert await store.log_head() == 0
    page = await store.read_log(0, EVERYTHING, 10)
    assert (page.events, page.scanned_to) == ((), 0)


async def test_the_log_reads_every_aggregate_in_position_order(store: StoreAdapter) -> None:
    await store.append("a-1", [new_event(), new_event()], 0)
    await store.append("a-2", [new_event()], 0)
    await store.append("a-1", [new_event()], 2)
    page = await store.read_log(0, EVERYTHING, 10)
    assert [(e.aggregate_id, e.version) for e in page.events] == [("a-1", 1), ("a-1", 2), ("a-2", 1), ("a-1", 3)]
    assert page.scanned_to == await store.log_head() == page.events[-1].position


async def test_reading_after_a_position_resumes_exactly_there(store: StoreAdapter) -> None:
    recorded = await store.append("a-1", [new_event() for _ in range(5)], 0)
    page = await store.read_log(recorded[1].position, EVERYTHING, 10)
    assert [e.version for e in page.events] == [3, 4, 5]


async def test_a_full_page_was_scanned_up_to_its_last_event(store: StoreAdapter) -> None:
    await store.append("a-1", [new_event() for _ in range(5)], 0)
    page = await store.read_log(0, EVERYTHING, 2)
    assert [e.version for e in page.events] == [1, 2]
    assert page.scanned_to == page.events[-1].position


async def test_a_page_ends_with_the_event_that_reaches_its_size(store: StoreAdapter) -> None:
    # Events of 10 KB and 2 KB; a page takes whole events until
    # their sizes reach the limit (22,000), the event that reaches it included.
    sizes = [10_000, 2_000, 10_000, 2_000, 10_000, 2_000]
    await store.append("a-1", [new_event(payload=b"x" * n) for n in sizes], 0)
    page = await store.read_log(0, EVERYTHING, 100, max_bytes=22_000)
    counted = [e.stored_size() for e in page.events]
    assert [len(e.payload) for e in page.events] == [10_000, 2_000, 10_000]
    assert sum(counted[:-1]) < 22_000 <= sum(counted)
    # a page cut by size is full: it was examined up to its last event only
    assert page.scanned_to == page.events[-1].position < await store.log_head()
    rest = await store.read_log(page.scanned_to, EVERYTHING, 100, max_bytes=22_000)
    assert [e.version for e in rest.events] == [4, 5, 6]
    assert rest.scanned_to == await store.log_head()


async def test_an_event_larger_than_the_page_is_a_page_of_its_own(store: StoreAdapter) -> None:
    await store.append("a-1", [new_event(payload=b"x" * 50_000), new_event()], 0)
    page = await store.read_log(0, EVERYTHING, 100, max_bytes=1_000)
    assert [e.version for e in page.events] == [1]
    assert page.scanned_to == page.events[0].position


async def test_metadata_counts_toward_a_page_s_size(store: StoreAdapter) -> None:
    heavy = {f"key-{i}": "v" * 1_000 for i in range(10)}
    await store.append("a-1", [new_event(metadata=heavy) for _ in range(4)], 0)
    page = await store.read_log(0, EVERYTHING, 100, max_bytes=15_000)
    assert [e.version for e in page.events] == [1, 2]


async def test_a_filter_that_matches_nothing_still_reports_how_far_it_looked(store: StoreAdapter) -> None:
    await store.append("a-1", [new_event("t.A") for _ in range(4)], 0)
    page = await store.read_log(0, LogFilter(event_types=frozenset({"t.Nope"})), 10)
    assert page.events == ()
    assert page.scanned_to == await store.log_head()
    assert page.scanned_to > 0


async def test_log_filters_are_applied_by_the_store(store: StoreAdapter) -> None:
    await store.append("a-1", [new_event("t.A", aggregate_type="X", origin="web")], 0)
    await store.append("a-2", [new_event("t.B", aggregate_type="Y", origin="web")], 0)
    await store.append("a-3", [new_event("t.A", aggregate_type="Y", origin="batch")], 0)

    async def ids(log_filter: LogFilter) -> list[str]:
        return [e.aggregate_id for e in (await store.read_log(0, log_filter, 10)).events]

    assert await ids(LogFilter(aggregate_types=frozenset({"Y"}))) == ["a-2", "a-3"]
    assert await ids(LogFilter(event_types=frozenset({"t.A"}))) == ["a-1", "a-3"]
    assert await ids(LogFilter(aggregate_id="a-2")) == ["a-2"]
    assert await ids(LogFilter(origin="batch")) == ["a-3"]
    assert await ids(LogFilter(aggregate_types=frozenset({"Y"}), event_types=frozenset({"t.A"}))) == ["a-3"]


async def test_a_tenants_prefix_keeps_its_aggregates_and_the_page_passes_over_the_others(store: StoreAdapter) -> None:
    """``aggregate_id_prefix`` (a tenant-scoped reader's): only ids that
    begin so, compared literally (``%`` and ``_`` are no wildcards), and
    ``scanned_to`` past the others' events, so a reader resumes after them."""
    await store.append("acme:1", [new_event("t.A", aggregate_type="X")], 0)
    await store.append("acmex:1", [new_event("t.A", aggregate_type="X")], 0)
    await store.append("ac%e:1", [new_event("t.A", aggregate_type="X")], 0)
    await store.append("acme:2", [new_event("t.A", aggregate_type="Y")], 0)
    await store.append("globex:1", [new_event("t.A", aggregate_type="X")], 0)

    async def ids(log_filter: LogFilter) -> list[str]:
        return [e.aggregate_id for e in (await store.read_log(0, log_filter, 10)).events]

    assert await ids(LogFilter(aggregate_id_prefix="acme:")) == ["acme:1", "acme:2"]
    assert await ids(LogFilter(aggregate_id_prefix="a_me:")) == []
    assert await ids(LogFilter(aggregate_id_prefix="ac%e:")) == ["ac%e:1"]
    assert await ids(LogFilter(aggregate_id_prefix="acme:", aggregate_types=frozenset({"X"}))) == ["acme:1"]
    assert await ids(LogFilter(aggregate_id_prefix="acme:", event_types=frozenset({"t.A"}))) == ["acme:1", "acme:2"]
    page = await store.read_log(0, LogFilter(aggregate_id_prefix="acme:"), 10)
    assert page.scanned_to == await store.log_head()


async def test_waiting_for_a_commit_returns_when_one_lands(store: StoreAdapter) -> None:
    head = await store.log_head()
    waiter = asyncio.create_task(store.wait_for_commit(head, max_wait=30))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await store.append("a-1", [new_event()], 0)
    await asyncio.wait_for(waiter, timeout=10)


async def test_waiting_returns_at_once_when_a_commit_is_already_known(store: StoreAdapter) -> None:
    await store.append("a-1", [new_event()], 0)
    await asyncio.wait_for(store.wait_for_commit(0, max_wait=30), timeout=5)


async def test_waiting_gives_up_after_the_timeout(store: StoreAdapter) -> None:
    await asyncio.wait_for(store.wait_for_commit(await store.log_head(), max_wait=0.05), timeout=5)


async def test_the_stored_event_kinds_are_each_kind_once_in_order(store: StoreAdapter) -> None:
    """What ``chronicle plugins --check`` judges: (aggregate type, event
    type, schema version), each once however many events are of it, ordered
    by code point (a capital before a small letter on every store)."""
    assert await store.stored_event_kinds() == []
    await store.append("t-1", [new_event("t.v1.B"), new_event("t.v1.B"), new_event("t.v1.B", schema_version=2)], 0)
    await store.append("w-1", [new_event("w.v1.a", aggregate_type="Wallet")], 0)
    await store.append("w-2", [new_event("w.v1.Z", aggregate_type="Wallet")], 0)
    assert await store.stored_event_kinds() == [
        ("Thing", "t.v1.B", 1),
        ("Thing", "t.v1.B", 2),
        ("Wallet", "w.v1.Z", 1),
        ("Wallet", "w.v1.a", 1),
    ]


async def test_a_page_names_the_events_stored_at_the_logs_end_and_at_its_start(store: StoreAdapter) -> None:
    """From the same read as the page, so a live reader can tell a log that
    went back and was written past its position (another event there now)
    from the log it read (records.LogPage)."""
    empty = await store.read_log(0, EVERYTHING, 10)
    assert (empty.head_id, empty.after) == ("", (0, ""))
    first, second = await store.append("a-1", [new_event(), new_event()], 0)
    (last,) = await store.append("a-2", [new_event()], 0)
    nothing = LogFilter(aggregate_types=frozenset({"t.Nobody"}))
    # Filtered to nothing, and cut by its limit: the ids come all the same.
    for page in (
        await store.read_log(first.position, nothing, 10),
        await store.read_log(first.position, EVERYTHING, 1),
    ):
        assert page.head == last.position and page.head_id == last.event_id
        assert page.after == (first.position, first.event_id)
    assert (await store.read_log(second.position, EVERYTHING, 10)).after == (second.position, second.event_id)
    # Removed (an import replacing its aggregate), an event leaves its position empty.
    await store.remove_aggregate("a-2")
    page = await store.read_log(last.position, EVERYTHING, 10)
    assert (page.head, page.head_id, page.after) == (last.position, "", (last.position, ""))
