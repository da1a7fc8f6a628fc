"""The one place where PostgreSQL's errors become Chronicle's.

A table from (SQLSTATE class or condition, constraint) to what it means, so
the store's methods stay free of ``except`` chains.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import psycopg
from psycopg import errors as pg
from psycopg_pool import PoolTimeout

from service.errors import ChronicleError, InvalidInput, StoreUnavailable

EVENTS_VERSION_KEY = "events_aggregate_version_key"
COMMANDS_KEY = "commands_pkey"


class UniqueViolation(Exception):
    """A unique constraint stopped a write; ``constraint`` names which.

    The store turns it into ``ConcurrencyConflict`` or
    ``CommandAlreadyRecorded``, which need context (the aggregate, the
    recorded command) that only the calling method has.
    """

    def __init__(self, constraint: str) -> None:
        super().__init__(constraint)
        self.constraint = constraint


# Errors that mean "the database cannot serve right now": connection lost,
# server shutting down or restarting, too many clients, a lock wait or
# statement that timed out, a pool with no free connection.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    pg.AdminShutdown,
    pg.CrashShutdown,
    pg.CannotConnectNow,
    pg.TooManyConnections,
    pg.LockNotAvailable,
    pg.QueryCanceled,
    pg.IdleInTransactionSessionTimeout,
    PoolTimeout,
)


def translation(error: BaseException, what: str) -> BaseException | None:
    """What a database error means to Chronicle; None: not a database error
    (let it through as it is)."""
    if isinstance(error, ChronicleError):
        return None
    if isinstance(error, pg.UniqueViolation):
        return UniqueViolation(error.diag.constraint_name or "")
    if isinstance(error, psycopg.DataError):
        # e.g. a NUL character, which PostgreSQL text cannot hold: such a
        # value was never stored, and cannot be.
        return InvalidInput(f"value not storable in PostgreSQL: {_first_line(error)}", reason="UNSTORABLE_VALUE")
    if isinstance(error, _UNAVAILABLE):
        return StoreUnavailable(f"PostgreSQL unavailable during {what}: {_first_line(error)}")
    return None


@asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """Run a store operation, mapping database errors to Chronicle's."""
    try:
        yield
    except Exception as error:
        translated_error = translation(error, what)
        if translated_error is None:
            raise
        raise translated_error from error


@contextmanager
def translated_sync(what: str) -> Iterator[None]:
    """``translated`` for the store's blocking side (see blocking.py)."""
    try:
        yield
    except Exception as error:
        translated_error = translation(error, what)
        if translated_error is None:
            raise
        raise translated_error from error


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
