"""Turning PostgreSQL results into Python values: psycopg's loaders (in C)
by each column's type, in text or binary as the statement asked."""

from __future__ import annotations

from typing import Any

from psycopg.adapt import Transformer
from psycopg.pq.abc import PGresult


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
