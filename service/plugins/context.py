"""What a handler may know and ask besides the command and the state.

Handlers stay plain synchronous functions. Two things reach beyond the
aggregate, and each is shaped so that it stays correct across replicas:

* ``context.exists(aggregate_type, aggregate_id)`` reads the store. The first
  time a handler asks about an aggregate, the context has no answer yet: it
  raises ``LookupNeeded``, the executor looks the aggregate up and runs the
  handler again with the answer in the context (handlers are pure functions
  of command, state and context, so running one again is safe). The plugin
  author writes an ordinary ``if``; no ``await``, no declaring ahead. A
  ``True`` is final (events are never deleted); a ``False`` is as of the
  read: to make something exclusive, claim it.
* ``context.claim(scope, value)`` and ``context.release(scope, value)`` do
  not write anything when called: they are recorded, and the executor writes
  them in the transaction that appends the command's events. The store's
  unique key on (scope, value) decides, so of two replicas racing for one
  value exactly one wins; the other's command is refused with ``NOT_UNIQUE``
  and appends nothing. A command that fails leaves no claim behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from service.errors import InvalidArgumentError

if TYPE_CHECKING:
    from service.plugins.api import AggregateType

MAX_SCOPE_BYTES = 200
# With the scope, well inside what a database index entry may hold.
MAX_VALUE_BYTES = 1024


class LookupNeeded(BaseException):
    """A handler asked about an aggregate the context has no answer for.

    The executor catches it, looks the aggregate up and runs the handler
    again. A ``BaseException`` (like ``asyncio.CancelledError``) so that a
    handler's own ``except Exception`` does not swallow it.
    """

    def __init__(self, aggregate_type: str, aggregate_id: str) -> None:
        super().__init__(aggregate_type, aggregate_id)
        self.key = (aggregate_type, aggregate_id)
        self.command_type = ""  # set by the executor: which command asked


@dataclass(frozen=True, slots=True)
class Claim:
    """A uniqueness claim a handler took (or, with ``release``, gave up)."""

    scope: str
    value: str
    release: bool = False


# Seconds since the Unix epoch, as ``time.time``: what ``CommandContext.now`` reads.
Clock = Callable[[], float]


class Effects:
    """What the framework tells a handler's context and what the handler
    asked for. Owned by the executor: one per run of a handler, sharing the
    lookups already answered, with the clock ``now()`` reads (for tests:
    ``Effects(exists={("Account", "a-1"): True}, clock=lambda: 1_700_000_000.0)``)."""

    def __init__(self, exists: Mapping[tuple[str, str], bool] | None = None, *, clock: Clock = time.time) -> None:
        self.exists: dict[tuple[str, str], bool] = dict(exists or {})
        self.claims: list[Claim] = []
        self.clock = clock
        # The first lookup the handler raised for: still owed if the handler
        # caught it (``except BaseException``) and returned as if answered.
        self.unanswered: LookupNeeded | None = None


@dataclass(frozen=True, slots=True)
class CommandContext:
    """Everything a handler may know besides the command and the state.

    One object, so that fields can be added without breaking handlers.
    ``version`` is the aggregate's version before the command; 0 means the
    aggregate does not exist yet. ``timestamp_us``: when the command was
    made (the client's ``Command.timestamp``, else when the server received
    it), microseconds since the Unix epoch; 0 when unknown.
    """

    aggregate_id: str
    aggregate_type: str
    version: int
    command_id: str
    user_id: str = ""
    origin: str = ""
    correlation_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    timestamp_us: int = 0
    effects: Effects = field(default_factory=Effects, repr=False, compare=False)

    @property
    def is_new(self) -> bool:
        return self.version == 0

    @property
    def timestamp(self) -> datetime:
        """``timestamp_us`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.timestamp_us / 1_000_000, UTC)

    def now(self) -> datetime:
        """The server's time now, as an aware UTC datetime, from the clock the
        server (or a test: ``Scenario.at``) gives. Prefer the command's
        ``timestamp`` for what the command says happened; ``now`` for
        deadlines the server decides (a hold that expires, say)."""
        return datetime.fromtimestamp(self.effects.clock(), UTC)

    def exists(self, aggregate_type: str | AggregateType[Any], aggregate_id: str) -> bool:
        """Whether ``aggregate_id`` has events and is of ``aggregate_type``
        (a name or the ``AggregateType``), as of now."""
        key = (aggregate_type if isinstance(aggregate_type, str) else aggregate_type.name, aggregate_id)
        if key not in self.effects.exists:
            needed = LookupNeeded(*key)
            if self.effects.unanswered is None:
                self.effects.unanswered = needed
            raise needed
        return self.effects.exists[key]

    def claim(self, scope: str, value: str) -> None:
        """Claim ``value`` in ``scope`` for this aggregate, with the events
        this command appends. Refused with ``NOT_UNIQUE`` (FAILED_PRECONDITION,
        the scope in the details) if another aggregate holds it; holding it
        already is fine. Values are compared exactly: normalise first (e.g.
        lower-case an e-mail address)."""
        self.effects.claims.append(Claim(_scope(scope), _value(scope, value)))

    def release(self, scope: str, value: str) -> None:
        """Give up ``value`` in ``scope`` with this command's events, so that
        another aggregate may claim it. Releasing a value this aggregate does
        not hold changes nothing."""
        self.effects.claims.append(Claim(_scope(scope), _value(scope, value), release=True))


def _scope(scope: str) -> str:
    # A scope is a name in the plugin's code: a bad one is a bug (INTERNAL).
    if not scope or len(scope.encode()) > MAX_SCOPE_BYTES or not scope.isprintable():
        raise ValueError(f"a claim scope is 1 to {MAX_SCOPE_BYTES} bytes of printable text, got {scope!r}")
    return scope


def _value(scope: str, value: str) -> str:
    # A value usually comes from the command: a bad one is the client's.
    if not value or len(value.encode()) > MAX_VALUE_BYTES or not value.isprintable():
        raise InvalidArgumentError(
            f"a value claimed in {scope!r} must be 1 to {MAX_VALUE_BYTES} bytes of printable text",
            reason="INVALID_CLAIM_VALUE",
            metadata={"scope": scope},
        )
    return value
