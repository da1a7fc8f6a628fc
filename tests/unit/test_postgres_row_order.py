"""Rows that come through a lateral join (a log page after log_head, an
aggregate's events after its snapshot's floor) are not sorted again by
PostgreSQL: the reader checks the order, and sorts only if a plan ever
returned them otherwise (service/store/postgres/rows.py)."""

from __future__ import annotations

from service.store.postgres.rows import in_order


def test_rows_in_order_are_returned_as_they_came() -> None:
    items = [3, 5, 9]
    assert in_order(items, int) is items


def test_rows_out_of_order_are_sorted_by_their_key() -> None:
    assert list(in_order([3, 9, 5, 4], int)) == [3, 4, 5, 9]


def test_no_rows_stay_no_rows() -> None:
    assert list(in_order([], int)) == []
