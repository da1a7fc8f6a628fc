"""The one place where PostgreSQL's errors become Chronicle's.

A table from (SQLSTATE class or condition, constraint) to what it means, so
the store's methods stay free of ``except`` chains.
"""

from __future__ import annotations

import psycopg
from psycopg import errors as pg

from service.errors import ChronicleError, InvalidInput, StoreUnavailable


class UniqueViolation(Exception):
    """A unique constraint stopped a write; ``constraint`` names which.

    The store turns it into ``ConcurrencyConflict`` or
    ``CommandAlreadyRecorded``, which need context (the aggregate, the
    recorded command) that only the calling method has.
    """

    def __init__(self, constraint: str) -> None:
        super().__init__(constraint)
        self.constraint = constraint


class Refused(Exception):
    """A statement refused itself (``chronicle.refuse``, see sql.py): ``code``
    is the SQLSTATE that says why, ``detail`` its message."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


# Errors that mean "the database cannot serve right now": connection lost,
# server shutting down or restarting, too many clients, a lock wait or
# statement that timed out.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    pg.AdminShutdown,
    pg.CrashShutdown,
    pg.CannotConnectNow,
    pg.TooManyConnections,
    pg.LockNotAvailable,
    pg.QueryCanceled,
    pg.IdleInTransactionSessionTimeout,
    OSError,
    TimeoutError,
)


def translation(error: BaseException, what: str) -> BaseException | None:
    """What a database error means to Chronicle; None: not a database error
    (let it through as it is)."""
    if isinstance(error, ChronicleError):
        return None
    if isinstance(error, psycopg.Error) and (error.sqlstate or "").startswith("CH"):
        return Refused(error.sqlstate or "", error.diag.message_primary or "")
    if isinstance(error, pg.UniqueViolation):
        return UniqueViolation(error.diag.constraint_name or "")
    if isinstance(error, psycopg.DataError):
        # e.g. a NUL character, which PostgreSQL text cannot hold: such a
        # value was never stored, and cannot be.
        return InvalidInput(f"value not storable in PostgreSQL: {_first_line(error)}", reason="UNSTORABLE_VALUE")
    if isinstance(error, _UNAVAILABLE):
        return StoreUnavailable(f"PostgreSQL unavailable during {what}: {_first_line(error)}")
    return None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
