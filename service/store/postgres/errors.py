"""The one place where PostgreSQL's errors become Chronicle's.

A table from (SQLSTATE class or condition, constraint) to what it means, so
the store's methods stay free of ``except`` chains.
"""

from __future__ import annotations

import re
from typing import TypeGuard

import psycopg
from psycopg import errors as pg

from service.errors import ChronicleError, InvalidInput, StoreUnavailable, store_busy, store_unreachable


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


# SQLSTATEs of a transaction PostgreSQL aborted whole so that others could
# go on: a deadlock's victim (40P01) and a serialization failure (40001; on a
# hot standby, also a read cancelled by a conflict with replay). Nothing of
# the operation was applied, so sending it again can succeed: Database.run
# does, a few times. Not the rest of class 40 (40002 is a constraint, 40003
# an unknown outcome), nor a lock wait that timed out (55P03): waiting again
# would only double the wait.
_ROLLED_BACK = frozenset({"40P01", "40001"})


def rolled_back(error: BaseException) -> TypeGuard[psycopg.Error]:
    """Whether PostgreSQL rolled the operation's transaction back as a
    deadlock's victim or for a serialization failure: safe to run again."""
    return isinstance(error, psycopg.Error) and error.sqlstate in _ROLLED_BACK


def contention(error: BaseException, what: str, *, attempts: int) -> StoreUnavailable:
    """An operation PostgreSQL rolled back on each of ``attempts`` tries."""
    tries = "once" if attempts == 1 else f"on each of {attempts} attempts"
    return store_busy(
        f"PostgreSQL rolled back {what} {tries} to resolve contention with concurrent transactions"
        f" ({_first_line(error)})"
    )


# StoreUnavailable's reason while PostgreSQL takes no writes: the database
# turned read only after start-up (``default_transaction_read_only`` set on,
# a primary demoted to a standby). A write it refused (SQLSTATE 25006) wrote
# nothing, and Database.ping says so (health NOT_SERVING); the same call
# succeeds once it takes writes again, without a restart. (At start-up such
# a database is refused instead: DATABASE_READ_ONLY, migrations.py.)
READ_ONLY = "STORE_READ_ONLY"


def no_writes(error: BaseException, what: str) -> StoreUnavailable:
    """A write PostgreSQL refused because it takes no writes."""
    return StoreUnavailable(
        f"PostgreSQL takes no writes, so {what} wrote nothing ({_first_line(error)}); retry once it takes writes again",
        reason=READ_ONLY,
    )


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


# Connection failures that waiting does not heal: the settings are wrong
# (the URL's user, password, database or a parameter), not the database
# away. libpq gives no SQLSTATE for a failed connection (28P01, 28000,
# 3D000 reach the client as text only), so they are told by the server's
# FATAL text and libpq's own: each is (a pattern, the reason, what to
# check). A server whose lc_messages is not English words them otherwise:
# then the failure is taken for an outage, as before (retried,
# NOT_SERVING), never the other way round.
_MISCONFIGURED: tuple[tuple[re.Pattern[str], str, str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), reason, check)
    for pattern, reason, check in (
        (r"password authentication failed", "DATABASE_LOGIN_FAILED", "the URL's user and password"),
        (r"\w+ authentication failed", "DATABASE_LOGIN_FAILED", "the URL's user and pg_hba.conf's method for it"),
        (r"no pg_hba\.conf entry", "DATABASE_LOGIN_FAILED", "pg_hba.conf: no entry admits this user, host, database"),
        (r'role ".*" does not exist', "DATABASE_LOGIN_FAILED", "the URL's user: there is no such role"),
        (r'role ".*" is not permitted to log in', "DATABASE_LOGIN_FAILED", "the role's LOGIN attribute"),
        (r"permission denied for database", "DATABASE_LOGIN_FAILED", "the role's CONNECT right on the database"),
        (r'database ".*" does not exist', "DATABASE_NOT_FOUND", "the URL's database name (create it first)"),
        (r"invalid connection option", "BAD_DATABASE_URL", "the URL's parameters"),
        (r"invalid URI query parameter", "BAD_DATABASE_URL", "the URL's parameters"),
        (r"invalid \w+ value", "BAD_DATABASE_URL", "the URL's parameter values"),
        (r"unrecognized configuration parameter", "BAD_DATABASE_URL", "the URL's options parameter"),
        (r"server does not support SSL", "BAD_DATABASE_URL", "the URL's sslmode (the server takes no TLS)"),
    )
)


def misconfigured(error: BaseException) -> tuple[str, str] | None:
    """Whether a failed connection attempt failed for a setting waiting
    does not fix (``_MISCONFIGURED``): its reason, and a message with
    libpq's words and what to check; None: it may pass (a refused
    connection, a timeout, a server starting up or full)."""
    if not isinstance(error, psycopg.OperationalError | psycopg.ProgrammingError):
        return None
    text = " ".join(str(error).split())
    for pattern, reason, check in _MISCONFIGURED:
        if pattern.search(text):
            return reason, f"{text}; waiting will not fix it: check {check}"
    return None


def connect_failure(error: BaseException, what: str) -> BaseException | None:
    """``translation`` of a failed connection attempt: one that waiting
    will not heal (``misconfigured``: a password changed under a serving
    replica, a database dropped) is unavailable all the same (the replica
    keeps trying, and serves again once the settings are put right), but
    its detail says so, for the log line of the first failure (the health
    monitor's)."""
    wrong = misconfigured(error)
    if wrong is not None:
        return store_unreachable(f"PostgreSQL refused {what}'s connection ({wrong[0]}): {wrong[1]}")
    return translation(error, what)


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
    if rolled_back(error):
        return contention(error, what, attempts=1)
    if isinstance(error, pg.ReadOnlySqlTransaction):  # 25006: the transaction is read only
        return no_writes(error, what)
    if isinstance(error, pg.InvalidSqlStatementName):
        # 26000: a prepared statement missing on its connection (the
        # connection prepares it again at its next use: connection.py). The
        # operation failed inside its transaction, so nothing of it was
        # applied: retrying it is safe.
        return store_unreachable(
            f"PostgreSQL unavailable during {what}: {_first_line(error)}; nothing of it was applied"
        )
    if isinstance(error, _UNAVAILABLE):
        # The driver's text names the database's host and port: the log's, not the caller's.
        return store_unreachable(f"PostgreSQL unavailable during {what}: {_first_line(error)}")
    return None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
