"""Reactions: process managers a plugin runs from the event log.

A reaction is a function of an event that returns commands. The server runs
it after commit, in log order, once per cluster (like a projection, under a
lease), and submits the commands it returns through the normal command
pipeline, so idempotency, uniqueness claims and encryption all apply::

    transfers = plugin.reaction("bank.transfers", aggregate_types=["Transfer", "Account"],
                                state=bank.TransferProgress, state_key=transfer_of)

    @transfers.on(bank.TransferRequested)
    def requested(event, envelope, state) -> Send:
        state.stage = bank.TransferProgress.DEBITING
        return Send(event.source_account_id, bank.Withdraw(amount=event.amount))

    @transfers.on_refused
    def refused(refusal, envelope, state) -> Send | Ignore | None:
        ...  # compensate: return commands; IGNORE: expected, drop it; None: park it

Each command goes out with ``causation_id`` = the event's id, the event's
``correlation_id`` and ``user_id``, origin ``reaction:<name>``, and a command
id derived from the event: ``uuid5(REACTION_NAMESPACE, "<reaction>/<event
id>/<index>")`` for the handler's commands, ``uuid5(REACTION_NAMESPACE,
"<refused command id>/<index>")`` for what ``on_refused`` returns. A
reaction that runs again over the same events (after a crash, before its
checkpoint moved) therefore sends the same commands under the same ids, and
the command records answer with what happened the first time: nothing
changes twice. For that, handlers must be deterministic functions of the
event, the envelope and the state (no clock, no random ids, no I/O).

State: a reaction may declare a ``state`` message, kept in the store per
``state_key(envelope)`` (default: the event's correlation id, which every
command a reaction sends passes on, so one process shares one state). The
handler receives the stored state (or a new, empty message) and changes it
in place; the change is committed with the reaction's checkpoint. A state
left empty (equal to a new message) is deleted: a finished process leaves
nothing behind. An empty key means no state: the handler gets a new message
that is not kept.

Loops: every command a reaction sends carries, under the metadata key
``HOPS_KEY``, the number of reaction hops of its cause chain (its event's
plus one; a client's command, and so its events, has none: 0), and the
events it makes carry it on. A command that would go past its reaction's
``max_hops`` (``DEFAULT_MAX_HOPS``) is not sent: it is parked with the
reason ``REACTION_LOOP``, so a reaction that keeps reacting to what its own
commands cause stops instead of running for ever. Clients cannot set the
key (the codec refuses it).

Deadlines (timers): a function may return ``Schedule(name, after=…)`` among
its commands, due at the event's commit time plus ``after`` (so the same on
a replay: no clock), one per process (state key) and name (scheduling again
replaces it), and ``Cancel(name)`` (nothing scheduled: nothing happens).
When it is due, the runner calls the reaction's ``@on_deadline(name)``
function with a ``Deadline`` and the process's state, and sends what it
returns as it sends an event's commands (``processing/deadlines.py``)::

    @fulfil.on(shop.PaymentRequested)
    def await_payment(event, envelope, progress) -> list[Send | Schedule]:
        return [Send(...), Schedule("payment", after=timedelta(minutes=10))]

    @fulfil.on_deadline("payment")
    def payment_overdue(deadline, progress) -> Send | None:
        return Send(progress.order_id, shop.CancelOrder(reason="payment overdue"))

A refused command (the handler of its aggregate refused it, recorded like any
refusal) is handed to ``on_refused`` with the state; the commands it returns
are sent in turn (their refusals handed back again, up to ``MAX_ROUNDS``).
Without ``on_refused``, or when it returns nothing, the refused command is
parked: kept in the store with its refusal, listed by
``ReactionService.ListParkedCommands`` (see docs/plugins.md for replaying).
``on_refused`` returns ``IGNORE`` for a refusal the process expects and
needs nothing done about (someone else closed it first): nothing is sent
and nothing parked, and the status counts it ``ignored``.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Generic, Literal, TypeAlias, TypeVar, get_args

from google.protobuf.message import Message

from service.plugins.projections import OnFailure, ProjectedEvent, check_runner_name

S = TypeVar("S")  # the reaction's state message, or None without one
E = TypeVar("E", bound=Message)
Old = TypeVar("Old", bound=Message)  # a state message type a reaction declared before

# The namespace of the command ids reactions derive (uuid5): fixed forever,
# or a reaction run again after an upgrade would send its commands anew.
REACTION_NAMESPACE = uuid.UUID("6c1b8d0e-4a51-5f0e-9c7e-2d4b3a1f0c8e")

# How many times in a row a refusal may be compensated by commands that are
# refused again before the last one is parked.
MAX_ROUNDS = 8

# The metadata key that carries a command's (and so its events') number of
# reaction hops: set by the reaction runner on every command it sends,
# refused on a client's (``service.api.codec``).
HOPS_KEY = "chronicle.reaction_hops"
# How many reaction hops a cause chain may take before its next command is
# parked (REACTION_LOOP) instead of sent; ``plugin.reaction(max_hops=…)``.
DEFAULT_MAX_HOPS = 100

# Where a reaction new to a store starts (``plugin.reaction(start_from=…)``):
# at the end of the log (only events committed from its server's start on,
# as a subscription group's ``from_end``), or at its beginning (every event
# there is: commands for all of history). None: "end", but on a store that
# older versions served, where a reaction started at the beginning, as they
# did (see ``service.processing.reaction_starts``).
StartFrom: TypeAlias = Literal["end", "beginning"]
START_FROM: tuple[StartFrom, ...] = ("end", "beginning")


@dataclass(frozen=True, slots=True)
class Send:
    """A command a reaction issues: ``command`` for ``aggregate_id``, with
    ``metadata`` added to the event's (and copied to the events it makes)."""

    aggregate_id: str
    command: Message
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A command of the reaction that its aggregate refused, as ``on_refused``
    gets it: what was sent, under which id, and the refusal's reason,
    message and metadata (as a client would see them)."""

    send: Send
    command_id: str
    reason: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def aggregate_id(self) -> str:
        return self.send.aggregate_id

    @property
    def command(self) -> Message:
        return self.send.command


class Ignore(enum.Enum):
    """The type of ``IGNORE``: one value, so that mypy checks where it may
    be returned (``on_refused`` only)."""

    IGNORE = "IGNORE"


# What ``on_refused`` returns for a refusal that is expected and harmless
# (the process's goal reached another way: someone else closed it first):
# nothing sent, nothing parked for an operator; counted ``ignored``. None
# still parks, as it always did.
IGNORE: Final = Ignore.IGNORE

# A deadline's name: what Schedule, Cancel and @on_deadline say (no ':',
# which separates it from the state key in its document's key).
_DEADLINE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")


def _check_deadline_name(name: object) -> str:
    if not isinstance(name, str) or not _DEADLINE_NAME.fullmatch(name):
        raise ValueError(f"a deadline's name must be 1 to 100 letters, digits, '_', '.' or '-', not {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class Schedule:
    """Wake the process ``after`` its event (or, returned by a deadline's
    function, its deadline): due at the event's commit time plus ``after``
    (the deadline's due time plus ``after``), the ``@on_deadline(name)``
    function is called. One per process and name: scheduling again
    replaces it."""

    name: str
    after: timedelta

    def __post_init__(self) -> None:
        _check_deadline_name(self.name)
        if not isinstance(self.after, timedelta) or self.after < timedelta(0):
            raise ValueError(f"Schedule({self.name!r}): after must be a timedelta of 0 or more, not {self.after!r}")

    def due_us(self, base_us: int) -> int:
        """When it is due, scheduled at ``base_us`` (microseconds)."""
        return base_us + self.after // timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Cancel:
    """Forget the process's deadline ``name`` (none scheduled: nothing)."""

    name: str

    def __post_init__(self) -> None:
        _check_deadline_name(self.name)


@dataclass(frozen=True, slots=True)
class Deadline:
    """A deadline that is due, as its ``@on_deadline`` function gets it: its
    name, its process's state key, when it was due (microseconds since the
    Unix epoch), and the envelope of the event that scheduled it (whose
    causation, correlation, user and metadata the commands sent for it
    carry)."""

    name: str
    state_key: str
    due_us: int
    envelope: ProjectedEvent

    @property
    def due(self) -> datetime:
        return datetime.fromtimestamp(self.due_us / 1_000_000, tz=UTC)


# What a reaction's function returns: commands and timers, one or several, or none.
Action: TypeAlias = "Send | Schedule | Cancel"
Reacted: TypeAlias = "Send | Schedule | Cancel | Iterable[Send | Schedule | Cancel] | None"
ReactionHandlerOf: TypeAlias = Callable[[E, ProjectedEvent, S], Reacted]
# What ``on_refused`` returns: as an event's function, or IGNORE.
Compensation: TypeAlias = "Send | Schedule | Cancel | Iterable[Send | Schedule | Cancel] | Ignore | None"
RefusalHandlerOf: TypeAlias = Callable[[Refusal, ProjectedEvent, S], Compensation]
DeadlineHandlerOf: TypeAlias = Callable[[Deadline, S], Reacted]
ReactionHandler = Callable[[Any, ProjectedEvent, Any], Reacted]
RefusalHandler = Callable[[Refusal, ProjectedEvent, Any], Compensation]
DeadlineHandler = Callable[[Deadline, Any], Reacted]
# Turns a process's state stored as a type the reaction declared before into
# its state message now.
StateUpcaster = Callable[[Any], Message]


def by_correlation(envelope: ProjectedEvent) -> str:
    """The default state key: one state per correlation id."""
    return envelope.correlation_id


def command_id_for(seed: str, index: int) -> str:
    """The id of the ``index``-th command sent for ``seed``: "<reaction>/<event
    id>" for an event's commands, the refused command's id for what
    ``on_refused`` returns."""
    return str(uuid.uuid5(REACTION_NAMESPACE, f"{seed}/{index}"))


def hops_of(envelope: ProjectedEvent) -> int:
    """The number of reaction hops of the cause chain that led to
    ``envelope``'s event (0: a client's command made it; anything but a
    count reads as 0)."""
    text = envelope.metadata.get(HOPS_KEY, "")
    if not (text.isascii() and text.isdecimal()):
        return 0
    return int(text) if len(text) <= 18 else 10**18  # so long a count is past any limit: not parsed


_EXPECTED = "Send(aggregate_id, command), Schedule(name, after), Cancel(name), a list of those, or None"
_ACTIONS = (Send, Schedule, Cancel)


def _what(value: object) -> str:
    if value is IGNORE:
        return "IGNORE (only on_refused may return it: a refusal accepted as harmless)"
    if isinstance(value, Message):
        return f"a {value.DESCRIPTOR.full_name} message (a bare command: wrap it as Send(aggregate_id, command))"
    return f"a {type(value).__name__}"


def actions(reacted: Reacted) -> list[Send | Schedule | Cancel]:
    """What a reaction's function returned, as a list (checked: a
    ``TypeError`` says what came back instead)."""
    if reacted is None:
        return []
    if isinstance(reacted, _ACTIONS):
        return [reacted]
    if isinstance(reacted, Message | str | bytes | Mapping) or not isinstance(reacted, Iterable):
        raise TypeError(f"returned {_what(reacted)}; a reaction returns {_EXPECTED}")
    found = list(reacted)
    for index, item in enumerate(found):
        if not isinstance(item, _ACTIONS):
            raise TypeError(f"returned a list whose item {index} is {_what(item)}; a reaction returns {_EXPECTED}")
    return found


def sends(reacted: Reacted) -> list[Send]:
    """The commands among what a reaction's function returned (checked as
    ``actions`` checks it)."""
    return [action for action in actions(reacted) if isinstance(action, Send)]


class Reaction(Generic[S]):
    """One reaction: its handlers by event type, its ``on_refused`` and its
    state's type (None: stateless; handlers then get ``None`` as state)."""

    def __init__(
        self,
        plugin_name: str,
        name: str,
        *,
        aggregate_types: Iterable[str] = (),
        state: type[Message] | None = None,
        state_key: Callable[[ProjectedEvent], str] = by_correlation,
        batch_size: int = 100,
        max_hops: int = DEFAULT_MAX_HOPS,
        retry_seconds: float = 5.0,
        on_failure: OnFailure = "stop",
        max_attempts: int = 3,
        start_from: StartFrom | None = None,
    ) -> None:
        check_runner_name("reaction", name)
        if on_failure not in get_args(OnFailure):
            raise ValueError(f"reaction {name}: on_failure must be 'stop' or 'park', not {on_failure!r}")
        if max_attempts < 1:
            raise ValueError(f"reaction {name}: max_attempts must be at least 1")
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        if max_hops < 1:
            raise ValueError("max_hops must be positive")
        if not retry_seconds > 0:
            raise ValueError(f"reaction {name}: retry_seconds must be positive")
        if start_from is not None and start_from not in START_FROM:
            raise ValueError(f"reaction {name}: start_from must be 'end' or 'beginning', not {start_from!r}")
        self.plugin_name = plugin_name
        self.name = name
        self.aggregate_types = frozenset(aggregate_types)
        self.state_type = state
        self.state_key = state_key
        self.batch_size = batch_size
        # The most reaction hops a command it sends may take its chain to (see HOPS_KEY).
        self.max_hops = max_hops
        # How long it waits after a failed batch before it tries it again.
        self.retry_seconds = retry_seconds
        # A command that fails for a plugin's bug: "stop" (retry until fixed),
        # or "park" it at its max_attempts-th failure and go on.
        self.on_failure: OnFailure = on_failure
        self.max_attempts = max_attempts
        # Where it starts when it is new to a store (None: not said).
        self.start_from = start_from
        self.handlers: dict[str, tuple[type[Message], ReactionHandler]] = {}
        self.refused_handler: RefusalHandler | None = None
        # By deadline name: the function called when a process's deadline is due.
        self.deadline_handlers: dict[str, DeadlineHandler] = {}
        # By full name: the state types it declared before, and what turns
        # one stored as such into its state message now.
        self.state_upcasters: dict[str, tuple[type[Message], StateUpcaster]] = {}

    def on(self, event_type: type[E]) -> Callable[[ReactionHandlerOf[E, S]], ReactionHandlerOf[E, S]]:
        """Register the decorated function for events of ``event_type``."""

        def register(handler: ReactionHandlerOf[E, S]) -> ReactionHandlerOf[E, S]:
            name = str(event_type.DESCRIPTOR.full_name)
            if name in self.handlers:
                raise ValueError(f"reaction {self.name}: {name} has two handlers")
            self.handlers[name] = (event_type, handler)
            return handler

        return register

    def on_refused(self, handler: RefusalHandlerOf[S]) -> RefusalHandlerOf[S]:
        """Register the decorated function as the one that gets this
        reaction's refused commands (to compensate; ``IGNORE``: expected,
        drop it; nothing returned: park it)."""
        if self.refused_handler is not None:
            raise ValueError(f"reaction {self.name} has two on_refused functions")
        self.refused_handler = handler
        return handler

    def on_deadline(self, name: str) -> Callable[[DeadlineHandlerOf[S]], DeadlineHandlerOf[S]]:
        """Register the decorated function as the one called when a process's
        deadline ``name`` (``Schedule(name, …)``) is due, with the
        ``Deadline`` and the process's state; what it returns is sent (and
        scheduled, cancelled) as an event's function's. A deadline belongs to
        a process: the reaction must declare a ``state``."""
        _check_deadline_name(name)
        if self.state_type is None:
            raise ValueError(
                f"reaction {self.name} declares no state: a deadline ({name!r}) belongs to a process's state,"
                " declare plugin.reaction(..., state=Message)"
            )
        if name in self.deadline_handlers:
            raise ValueError(f"reaction {self.name}: deadline {name!r} has two on_deadline functions")

        def register(handler: DeadlineHandlerOf[S]) -> DeadlineHandlerOf[S]:
            self.deadline_handlers[name] = handler
            return handler

        return register

    def upcast_state(self, old_type: type[Old]) -> Callable[[Callable[[Old], Message]], Callable[[Old], Message]]:
        """Register the decorated function as what turns a process's state
        stored as ``old_type`` (the ``state`` this reaction declared before)
        into its ``state`` message now: called when such a state is loaded
        for an event, the result handed to the function and stored in place
        of the old one. Without it, a state stored as another type stops
        the reaction (DOCUMENT_TYPE_MISMATCH)."""
        if self.state_type is None:
            raise ValueError(f"reaction {self.name} declares no state: it has none to upcast")
        name = str(old_type.DESCRIPTOR.full_name)
        if name == self.state_type.DESCRIPTOR.full_name:
            raise ValueError(f"reaction {self.name}: {name} is its state type now, not an old one")
        if name in self.state_upcasters:
            raise ValueError(f"reaction {self.name}: {name} has two state upcasters")

        def register(upcaster: Callable[[Old], Message]) -> Callable[[Old], Message]:
            self.state_upcasters[name] = (old_type, upcaster)
            return upcaster

        return register

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(self.handlers)

    def __repr__(self) -> str:
        return f"Reaction({self.name!r}, plugin={self.plugin_name!r})"
