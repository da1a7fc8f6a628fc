"""A PostgreSQL log page is not sorted by its statement after the join with
log_head (sql.read_log): the reader checks the order, and sorts only if a
plan ever returned the page otherwise."""

from __future__ import annotations

from service.store.postgres.log import _in_position_order
from service.store.records import RecordedEvent


def event(position: int) -> RecordedEvent:
    return RecordedEvent(f"e{position}", "a", "T", position, position, "t", 1, b"", 0, "c", "", "", "", "", {})


def test_a_page_in_order_is_returned_as_it_came() -> None:
    page = tuple(event(p) for p in (3, 5, 9))
    assert _in_position_order(page) is page


def test_a_page_out_of_order_is_sorted_by_position() -> None:
    page = tuple(event(p) for p in (3, 9, 5, 4))
    assert [e.position for e in _in_position_order(page)] == [3, 4, 5, 9]


def test_an_empty_page_stays_empty() -> None:
    assert _in_position_order(()) == ()
