"""What a domain plugin author writes against.

A plugin declares aggregate types; each has a state message, command
handlers and apply functions::

    plugin = Plugin("bank_account")
    account = plugin.aggregate("Account", state=bank_pb2.Account, snapshot_every=100)

    @account.command(bank_pb2.Deposit)
    def deposit(command, state, context):
        if command.amount <= 0:
            raise InvalidArgumentError("amount must be positive", reason="INVALID_AMOUNT", field="amount")
        return bank_pb2.MoneyDeposited(amount=command.amount)

    @account.apply(bank_pb2.MoneyDeposited, schema_version=2)
    def deposited(state, event):
        state.balance += event.amount

    @account.upcast(bank_pb2.MoneyDeposited, from_version=1)
    def deposited_in_cents(old):        # v1 held whole units, v2 holds cents
        return bank_pb2.MoneyDeposited(amount=old.parse(bank_pb2.MoneyDeposited).amount * 100)

Handlers are plain functions of ``(command, state, context)`` returning an
event message, a sequence of them, or None; they must not change ``state``.
Apply functions receive a state the framework owns for the duration of the
command and may change it in place (return None) or return a new message.
Upcasters turn an event stored under an older schema version into what the
plugin reads today; stored events are never rewritten.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.message import Message

from service.plugins.context import CommandContext
from service.plugins.projections import Projection

if TYPE_CHECKING:
    from service.plugins.middleware import Middleware

Handler = Callable[[Any, Any, CommandContext], "Message | Iterable[Message] | None"]
Applier = Callable[[Any, Any], "Message | None"]
Upcaster = Callable[["OldEvent"], "Message | Iterable[Message] | None"]
H = TypeVar("H", bound=Callable[..., Any])
M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command type registered to a handler."""

    message_type: type[Message]
    handler: Handler
    aggregate: AggregateType
    # The message's full name, read once: every command asks for it.
    name: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", str(self.message_type.DESCRIPTOR.full_name))


@dataclass(frozen=True, slots=True)
class EventSpec:
    """An event type registered to an apply function at a schema version."""

    message_type: type[Message]
    apply: Applier
    schema_version: int
    aggregate: AggregateType
    # The message's full name, read once: every event asks for it.
    name: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", str(self.message_type.DESCRIPTOR.full_name))


@dataclass(frozen=True, slots=True)
class OldEvent:
    """A stored event at an older schema version, as an upcaster gets it.

    ``payload`` is the bytes as stored; ``parse`` reads them with a message
    class: today's class when the field numbers still mean the same, or a
    class the plugin keeps for the old layout.
    """

    event_type: str
    schema_version: int
    payload: bytes

    def parse(self, message_type: type[M]) -> M:
        return message_type.FromString(self.payload)


@dataclass(frozen=True, slots=True)
class UpcasterSpec:
    """An upcaster: ``event_type`` at ``from_version`` to the next version.

    What it returns decides what the event becomes: a message of the same
    type is that type at ``from_version + 1`` (and upcast further if that is
    not current yet); a message of another type is that type at its current
    schema version (it was built with today's class); several messages split
    the event; None or an empty list drops it.
    """

    event_type: str
    from_version: int
    upcast: Upcaster
    aggregate: AggregateType

    @property
    def name(self) -> str:
        return f"{self.event_type} v{self.from_version}"


class AggregateType:
    """One kind of aggregate: its state message, commands and events."""

    def __init__(
        self,
        plugin: Plugin,
        name: str,
        *,
        state: type[Message],
        snapshot_every: int | None,
        state_schema_version: int,
    ) -> None:
        if not name or not name.replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"aggregate type name {name!r} must be letters, digits, '_' or '.'")
        if snapshot_every is not None and snapshot_every < 1:
            raise ValueError("snapshot_every must be a positive number of events")
        self.plugin = plugin
        self.name = name
        self.state_type = state
        self.snapshot_every = snapshot_every
        self.state_schema_version = state_schema_version
        self.commands: dict[str, CommandSpec] = {}
        self.events: dict[str, EventSpec] = {}
        self.upcasters: dict[tuple[str, int], UpcasterSpec] = {}

    @property
    def state_type_name(self) -> str:
        return str(self.state_type.DESCRIPTOR.full_name)

    def new_state(self) -> Message:
        return self.state_type()

    def command(self, message_type: type[Message]) -> Callable[[H], H]:
        """Register the decorated function as the handler of ``message_type``."""

        def register(handler: H) -> H:
            spec = CommandSpec(message_type, handler, self)
            if spec.name in self.commands:
                raise ValueError(f"{self.plugin.name}: command {spec.name} has two handlers")
            self.commands[spec.name] = spec
            return handler

        return register

    def apply(self, message_type: type[Message], *, schema_version: int = 1) -> Callable[[H], H]:
        """Register the decorated function to apply ``message_type`` to the state."""

        def register(applier: H) -> H:
            spec = EventSpec(message_type, applier, schema_version, self)
            if spec.name in self.events:
                raise ValueError(f"{self.plugin.name}: event {spec.name} has two apply functions")
            self.events[spec.name] = spec
            return applier

        return register

    def upcast(self, event_type: type[Message] | str, *, from_version: int) -> Callable[[H], H]:
        """Register the decorated function to turn ``event_type`` events
        stored at ``from_version`` into the next version (see ``UpcasterSpec``).

        ``event_type`` may be a name, for a type whose class is gone.
        """
        name = event_type if isinstance(event_type, str) else str(event_type.DESCRIPTOR.full_name)
        if from_version < 1:
            raise ValueError(f"{self.plugin.name}: upcaster for {name}: from_version must be at least 1")

        def register(upcaster: H) -> H:
            spec = UpcasterSpec(name, from_version, upcaster, self)
            if (name, from_version) in self.upcasters:
                raise ValueError(f"{self.plugin.name}: {spec.name} has two upcasters")
            self.upcasters[(name, from_version)] = spec
            return upcaster

        return register

    def __repr__(self) -> str:
        return f"AggregateType({self.name!r}, plugin={self.plugin.name!r})"


class Plugin:
    """A domain: a named set of aggregate types. Expose one as ``plugin`` in
    a module, or through the ``chronicle.plugins`` entry-point group."""

    def __init__(self, name: str, *, description: str = "") -> None:
        self.name = name
        self.description = description
        self.aggregates: list[AggregateType] = []
        self.middleware: list[Middleware] = []
        self.projections: list[Projection] = []

    def aggregate(
        self,
        name: str,
        *,
        state: type[Message],
        snapshot_every: int | None = None,
        state_schema_version: int = 1,
    ) -> AggregateType:
        """Declare an aggregate type whose state is a ``state`` message.

        ``snapshot_every``: save a snapshot each time the version crosses a
        multiple of it (None: the server's default). Bump
        ``state_schema_version`` when the meaning of the state changes, so
        that snapshots taken before are rebuilt from events.
        """
        aggregate = AggregateType(
            self, name, state=state, snapshot_every=snapshot_every, state_schema_version=state_schema_version
        )
        self.aggregates.append(aggregate)
        return aggregate

    def projection(self, name: str, *, aggregate_types: Iterable[str] = (), batch_size: int = 200) -> Projection:
        """Declare a read model kept up to date from the log (see
        ``service.plugins.projections``). ``aggregate_types`` narrows which
        events are read; handlers are registered with ``@projection.on(T)``.
        The name is the read model's identity: renaming it rebuilds it."""
        projection = Projection(self.name, name, aggregate_types=aggregate_types, batch_size=batch_size)
        self.projections.append(projection)
        return projection

    def add_middleware(self, middleware: Middleware) -> Middleware:
        """Run ``middleware`` around every command the server processes (not
        only this plugin's). Plugin middleware runs inside the server's own
        (logging, metrics, audit, authorization), in plugin load order, then
        in the order added here."""
        self.middleware.append(middleware)
        return middleware

    def __repr__(self) -> str:
        return f"Plugin({self.name!r})"
