"""The one place where PostgreSQL's errors become Chronicle's.

A table from (SQLSTATE class or condition, constraint) to what it means, so
the store's methods stay free of ``except`` chains.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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


@asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """Run a store operation, mapping database errors to Chronicle's."""
    try:
        yield
    except ChronicleError:
        raise
    except pg.UniqueViolation as error:
        raise UniqueViolation(error.diag.constraint_name or "") from error
    except psycopg.DataError as error:
        # e.g. a NUL character, which PostgreSQL text cannot hold: such a
        # value was never stored, and cannot be.
        raise InvalidInput(
            f"value not storable in PostgreSQL: {_first_line(error)}", reason="UNSTORABLE_VALUE"
        ) from error
    except _UNAVAILABLE as error:
        raise StoreUnavailable(f"PostgreSQL unavailable during {what}: {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
