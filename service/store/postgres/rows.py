"""Turning PostgreSQL results into Python values: psycopg's loaders (in C)
by each column's type, in text or binary as the statement asked."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from psycopg.adapt import Transformer
from psycopg.pq.abc import PGresult

T = TypeVar("T")


def in_order(items: Sequence[T], key: Callable[[T], int]) -> Sequence[T]:
    """``items`` ascending by ``key``. Rows that come through a lateral join
    keep the order its inner side gave them, which the planner does not
    know: rather than have PostgreSQL sort them again, the reader checks,
    and sorts only if a plan ever returned them otherwise. (Comparing the
    keys with their sorted list runs in C: a page of a thousand events is
    checked in a fraction of what a loop over its pairs took.)"""
    keys = list(map(key, items))
    if keys == sorted(keys):
        return items
    return sorted(items, key=key)


def rows(result: PGresult) -> list[tuple[Any, ...]]:
    """Every row of ``result``, each value loaded by its column's type."""
    if not result.ntuples:
        return []
    transformer = Transformer()
    transformer.set_pgresult(result)
    return transformer.load_rows(0, result.ntuples, tuple)


def first(result: PGresult) -> tuple[Any, ...] | None:
    """The first row of ``result``, or None."""
    if not result.ntuples:
        return None
    transformer = Transformer()
    transformer.set_pgresult(result)
    return transformer.load_row(0, tuple)


def scalar(result: PGresult) -> Any:
    """The first value of the first row (None when there is no row)."""
    row = first(result)
    return None if row is None else row[0]
