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
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar, overload

from google.protobuf.message import Message

from service.errors import AlreadyExistsError, NotFoundError, PermissionDenied
from service.plugins.context import MAX_SCOPE_BYTES, CommandContext
from service.plugins.fingerprint import state_fingerprint
from service.plugins.projections import DOCUMENT_CACHE_SIZE, OnFailure, ProjectedEvent, Projection
from service.plugins.reactions import DEFAULT_MAX_HOPS, Reaction, StartFrom, by_correlation
from service.principal import REACTION_PREFIX

if TYPE_CHECKING:
    from service.plugins.middleware import Middleware

S = TypeVar("S", bound=Message)  # an aggregate's state
C = TypeVar("C", bound=Message)  # a command
E = TypeVar("E", bound=Message)  # an event
H = TypeVar("H", bound=Callable[..., Any])
M = TypeVar("M", bound=Message)

# What a handler returns: an event, several, or none.
Decided: TypeAlias = "Message | Iterable[Message] | None"
# A handler of commands C on states S, and an apply function of events E:
# the decorators check the decorated function against them (mypy).
HandlerOf: TypeAlias = Callable[[C, S, CommandContext], Decided]
ApplierOf: TypeAlias = Callable[[S, E], "S | None"]
Handler = Callable[[Any, Any, CommandContext], Decided]
Applier = Callable[[Any, Any], "Message | None"]
Upcaster = Callable[["OldEvent"], "Message | Iterable[Message] | None"]
# The values an aggregate in state S holds: (scope, value) pairs.
HeldClaimsOf: TypeAlias = Callable[[S], Iterable[tuple[str, str]]]
# Who may send a command type (``command(..., sent_by_reactions=...)``):
# True for any reaction, or the names of the reactions that may.
SentBy: TypeAlias = "bool | Iterable[str]"
# The reason of the refusal of a reaction-only command sent by anyone else.
COMMAND_INTERNAL = "COMMAND_INTERNAL"


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command type registered to a handler."""

    message_type: type[Message]
    handler: Handler
    aggregate: AggregateType[Any]
    # The handler runs only if the aggregate does not exist yet (creates) or
    # only if it does (requires_existing); the framework refuses otherwise.
    creates: bool = False
    requires_existing: bool = False
    # None: any caller the policy allows may send it. Otherwise only
    # reactions may (the server sends theirs as ``reaction:<name>``, a
    # principal no credential can have): those named here, or any if empty.
    # A client's is refused before the handler runs (``check_sender``).
    sent_by_reactions: frozenset[str] | None = None
    # The message's full name, read once: every command asks for it.
    name: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", str(self.message_type.DESCRIPTOR.full_name))

    @property
    def internal(self) -> bool:
        """Whether only reactions may send it (no client, whatever its grants)."""
        return self.sent_by_reactions is not None

    def check_sender(self, principal: str) -> None:
        """Refuse the command (PERMISSION_DENIED, ``COMMAND_INTERNAL``) if
        it is a reaction-only command and ``principal`` (the sender's name)
        is not a reaction allowed to send it."""
        allowed = self.sent_by_reactions
        if allowed is None:
            return
        if principal.startswith(REACTION_PREFIX):
            reaction = principal[len(REACTION_PREFIX) :]
            if not allowed or reaction in allowed:
                return
        senders = ", ".join(sorted(allowed)) if allowed else "any reaction"
        who = principal or "an anonymous caller"
        raise PermissionDenied(
            f"{who} may not send {self.name}: only reactions send it ({senders}), whatever a client is granted",
            reason=COMMAND_INTERNAL,
            metadata={"principal": principal, "command_type": self.name},
        )

    def check_existence(self, context: CommandContext) -> None:
        """Refuse the command if the aggregate's existence is not what the
        handler was declared for (before the handler runs)."""
        if self.creates and not context.is_new:
            raise self.aggregate.already_exists(context.aggregate_id)
        if self.requires_existing and context.is_new:
            raise self.aggregate.not_found(context.aggregate_id)


@dataclass(frozen=True, slots=True)
class EventSpec:
    """An event type registered to an apply function at a schema version."""

    message_type: type[Message]
    apply: Applier
    schema_version: int
    aggregate: AggregateType[Any]
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
    aggregate: AggregateType[Any]

    @property
    def name(self) -> str:
        return f"{self.event_type} v{self.from_version}"


class AggregateType(Generic[S]):
    """One kind of aggregate: its state message ``S``, commands and events.

    Handlers registered with ``command(C)`` are checked (by mypy) to take a
    ``C`` and an ``S``; apply functions registered with ``apply(E)`` to take
    an ``S`` and an ``E``. ``not_found`` and ``already_exists`` are the
    reasons of the refusals ``requires_existing`` and ``creates`` make
    (default: ``<NAME>_NOT_FOUND``, ``<NAME>_ALREADY_EXISTS``).
    """

    def __init__(
        self,
        plugin: Plugin,
        name: str,
        *,
        state: type[S],
        snapshot_every: int | None,
        state_schema_version: int,
        not_found: str | None = None,
        already_exists: str | None = None,
    ) -> None:
        if not name or not name.replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"aggregate type name {name!r} must be letters, digits, '_' or '.'")
        if snapshot_every is not None and snapshot_every < 1:
            raise ValueError("snapshot_every must be a positive number of events")
        self.plugin = plugin
        self.name = name
        self.state_type: type[S] = state
        reason = _snake(name)
        self._not_found = not_found or f"{reason}_NOT_FOUND"
        self._already_exists = already_exists or f"{reason}_ALREADY_EXISTS"
        self.snapshot_every = snapshot_every
        self.state_schema_version = state_schema_version
        self.commands: dict[str, CommandSpec] = {}
        self.events: dict[str, EventSpec] = {}
        self.upcasters: dict[tuple[str, int], UpcasterSpec] = {}
        # The values an aggregate holds, from its state (``claims``): None
        # when the plugin does not say (its handlers may still claim).
        self.held_claims: HeldClaimsOf[Any] | None = None
        # Worked out once (the registry asks at plugin load), again only if
        # an apply function or upcaster is registered after.
        self._snapshot_state_type: str | None = None

    @property
    def state_type_name(self) -> str:
        return str(self.state_type.DESCRIPTOR.full_name)

    @property
    def snapshot_state_type(self) -> str:
        """What this type's snapshots are saved and looked up under: the
        state's full name, ``#``, and the fingerprint of what the state
        depends on (``service.plugins.fingerprint``). A snapshot saved under
        any other (an older layout, schema or set of event versions, or
        before fingerprints) is not used."""
        if self._snapshot_state_type is None:
            fingerprint = state_fingerprint(
                self.state_type,
                self.state_schema_version,
                ((spec.name, spec.schema_version) for spec in self.events.values()),
                self.upcasters.keys(),
            )
            self._snapshot_state_type = f"{self.state_type_name}#{fingerprint}"
        return self._snapshot_state_type

    def new_state(self) -> S:
        return self.state_type()

    def not_found(self, aggregate_id: str) -> NotFoundError:
        return NotFoundError(f"{self.name} {aggregate_id!r} does not exist", reason=self._not_found)

    def already_exists(self, aggregate_id: str) -> AlreadyExistsError:
        return AlreadyExistsError(f"{self.name} {aggregate_id!r} already exists", reason=self._already_exists)

    def command(
        self,
        message_type: type[C],
        *,
        creates: bool = False,
        requires_existing: bool = False,
        sent_by_reactions: SentBy = False,
    ) -> Callable[[HandlerOf[C, S]], HandlerOf[C, S]]:
        """Register the decorated function as the handler of ``message_type``.

        ``creates=True``: the command makes the aggregate; on one that exists
        it is refused (ALREADY_EXISTS, reason ``already_exists``) before the
        handler runs. ``requires_existing=True``: refused on an aggregate
        with no events yet (NOT_FOUND, reason ``not_found``).

        ``sent_by_reactions``: a command only the plugins' reactions send
        (a process manager's step, not a client's request): True for any
        reaction, or the names of those that may (a list). Sent by a client,
        whatever its grants, it is refused before the handler runs
        (PERMISSION_DENIED, reason ``COMMAND_INTERNAL``), in a batch, a
        stream and a dry run too; sent by a reaction not named, it fails
        that reaction as a plugin's bug does (it stops at the event, its
        status says why; with ``on_failure="park"`` the command is parked)."""
        if creates and requires_existing:
            raise ValueError(f"{self.plugin.name}: a command cannot both create {self.name} and require one")
        senders = _senders(self.plugin.name, message_type, sent_by_reactions)

        def register(handler: HandlerOf[C, S]) -> HandlerOf[C, S]:
            spec = CommandSpec(
                message_type,
                handler,
                self,
                creates=creates,
                requires_existing=requires_existing,
                sent_by_reactions=senders,
            )
            if spec.name in self.commands:
                raise ValueError(f"{self.plugin.name}: command {spec.name} has two handlers")
            self.commands[spec.name] = spec
            return handler

        return register

    def apply(self, message_type: type[E], *, schema_version: int = 1) -> Callable[[ApplierOf[S, E]], ApplierOf[S, E]]:
        """Register the decorated function to apply ``message_type`` to the
        state (in place, returning None, or returning a new state)."""

        def register(applier: ApplierOf[S, E]) -> ApplierOf[S, E]:
            spec = EventSpec(message_type, applier, schema_version, self)
            if spec.name in self.events:
                raise ValueError(f"{self.plugin.name}: event {spec.name} has two apply functions")
            self.events[spec.name] = spec
            self._snapshot_state_type = None
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
            self._snapshot_state_type = None
            return upcaster

        return register

    def claims(self, held: HeldClaimsOf[S]) -> HeldClaimsOf[S]:
        """Declare (decorating a function of the state) which values an
        aggregate of this type holds uniquely: the ``(scope, value)`` pairs
        its handlers' ``context.claim`` and ``context.release`` leave it
        holding after the events that made ``state``. Handlers still claim;
        this says the same from the state, for what has no handler run: an
        import of events without claim records (an export written by hand,
        a conversion whose mapping gave none) takes the claims it derives
        with it, so that migrated values stay unique."""
        if self.held_claims is not None:
            raise ValueError(f"{self.plugin.name}: {self.name} declares its claims twice")
        self.held_claims = held
        return held

    def __repr__(self) -> str:
        return f"AggregateType({self.name!r}, plugin={self.plugin.name!r})"


class Plugin:
    """A domain: a named set of aggregate types. Expose one as ``plugin`` in
    a module, or through the ``chronicle.plugins`` entry-point group."""

    def __init__(self, name: str, *, description: str = "") -> None:
        self.name = name
        self.description = description
        self.aggregates: list[AggregateType[Any]] = []
        self.middleware: list[Middleware] = []
        self.projections: list[Projection] = []
        self.reactions: list[Reaction[Any]] = []
        # Claims scopes declared (``claims_scope``): name -> per tenant.
        self.claim_scopes: dict[str, bool] = {}

    def aggregate(
        self,
        name: str,
        *,
        state: type[S],
        snapshot_every: int | None = None,
        state_schema_version: int = 1,
        not_found: str | None = None,
        already_exists: str | None = None,
    ) -> AggregateType[S]:
        """Declare an aggregate type whose state is a ``state`` message.

        ``snapshot_every``: save a snapshot each time the version crosses a
        multiple of it (None: the server's default). Bump
        ``state_schema_version`` when the meaning of the state changes, so
        that snapshots taken before are rebuilt from events. ``not_found``
        and ``already_exists``: the reasons of the refusals that
        ``command(..., requires_existing=True)`` and ``creates=True`` make.
        """
        aggregate = AggregateType(
            self,
            name,
            state=state,
            snapshot_every=snapshot_every,
            state_schema_version=state_schema_version,
            not_found=not_found,
            already_exists=already_exists,
        )
        self.aggregates.append(aggregate)
        return aggregate

    def claims_scope(self, name: str, *, per_tenant: bool = False) -> str:
        """Declare a uniqueness-claims scope; returns ``name``, to claim with.

        Scopes need no declaring to be global (a value held by one aggregate
        of all). With ``per_tenant=True`` a value is unique within the tenant
        of the claiming aggregate (its id's part before ``:``): two tenants
        may both hold it, and a claim by an aggregate of no tenant is refused
        (``CLAIM_WITHOUT_TENANT``). Under encryption at rest each tenant's
        claimed values are hashed under a key its own master key wraps, so
        shredding the tenant makes them untestable in backups too
        (docs/plugins.md, "Unique per tenant")."""
        _check_scope_name(name)
        if self.claim_scopes.get(name, per_tenant) != per_tenant:
            raise ValueError(f"{self.name}: claims scope {name!r} is declared twice, per tenant and not")
        self.claim_scopes[name] = per_tenant
        return name

    def projection(
        self,
        name: str,
        *,
        aggregate_types: Iterable[str] = (),
        batch_size: int = 200,
        catch_up_batch_size: int | None = None,
        on_failure: OnFailure = "stop",
        max_attempts: int = 3,
        retry_seconds: float = 5.0,
        cache_size: int = DOCUMENT_CACHE_SIZE,
        tenant_keyed: bool = False,
        version: int = 1,
        rebuild_on_change: bool = False,
    ) -> Projection:
        """Declare a read model kept up to date from the log (see
        ``service.plugins.projections``). ``aggregate_types`` narrows which
        events are read; handlers are registered with ``@projection.on(T)``.
        The name is the read model's identity: renaming it rebuilds it.

        A batch (its documents' writes and the new checkpoint, committed in
        one transaction) holds up to ``batch_size`` events while the
        projection keeps up, and up to ``catch_up_batch_size`` (default: the
        larger of ``batch_size`` and 2,000) while it catches up, after a
        rebuild or a long stop.

        Up to ``cache_size`` documents (default 10,000) stay in memory
        between batches; a handler that needs one that is not there makes
        the batch read it (with the others the batch needs, in one
        statement). A read model whose handlers touch more documents than
        that reads them again and again: give it a cache its working set
        fits in, memory allowing (each entry is the document's bytes).

        A handler that raises on an event: with ``on_failure="stop"`` the
        projection stops there and tries again every ``retry_seconds`` until
        the plugin is fixed; with ``"park"``, after ``max_attempts`` tries
        the event is parked (recorded, listed by ListParkedEvents) and the
        projection goes on without it.

        ``tenant_keyed``: the plugin promises that every document's key
        begins with the tenant of the aggregates it is made of and ``:``
        (``acme:acc-1``); a tenant-scoped read grant then reads the documents
        of its own tenant (and no other's), which it otherwise may not read
        at all (docs/security.md#tenants).

        ``version`` (a whole number, 1 by default): bump it when the
        documents' meaning changes (a handler's bug fixed, a document's
        shape changed, an upcaster that changes what events say). The store
        keeps the version the documents were built by; a runner whose
        declared version differs (higher or lower) stops,
        ``PROJECTION_VERSION_CHANGED``, until the projection is rebuilt
        (RebuildProjection records the new version), rather than mix both
        meanings. With ``rebuild_on_change`` it rebuilds itself from the
        start of the log instead, when the declared version is the higher
        (docs/plugins.md#projection-versions)."""
        projection = Projection(
            self.name,
            name,
            aggregate_types=aggregate_types,
            batch_size=batch_size,
            catch_up_batch_size=catch_up_batch_size,
            on_failure=on_failure,
            max_attempts=max_attempts,
            retry_seconds=retry_seconds,
            cache_size=cache_size,
            tenant_keyed=tenant_keyed,
            version=version,
            rebuild_on_change=rebuild_on_change,
        )
        self.projections.append(projection)
        return projection

    @overload
    def reaction(
        self,
        name: str,
        *,
        aggregate_types: Iterable[str] = (),
        state: type[M],
        state_key: Callable[[ProjectedEvent], str] = by_correlation,
        batch_size: int = 100,
        max_hops: int = DEFAULT_MAX_HOPS,
        retry_seconds: float = 5.0,
        on_failure: OnFailure = "stop",
        max_attempts: int = 3,
        start_from: StartFrom | None = None,
    ) -> Reaction[M]: ...

    @overload
    def reaction(
        self,
        name: str,
        *,
        aggregate_types: Iterable[str] = (),
        state: None = None,
        batch_size: int = 100,
        max_hops: int = DEFAULT_MAX_HOPS,
        retry_seconds: float = 5.0,
        on_failure: OnFailure = "stop",
        max_attempts: int = 3,
        start_from: StartFrom | None = None,
    ) -> Reaction[None]: ...

    def reaction(
        self,
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
    ) -> Reaction[Any]:
        """Declare a process manager run from the log (see
        ``service.plugins.reactions``): handlers registered with
        ``@reaction.on(T)`` return the commands to send; ``state``, if given,
        is a message kept per ``state_key(envelope)`` and handed to them.
        The name is the reaction's identity (its checkpoint and state): a
        name shared with a projection is refused.

        A command it sends that would make its cause chain longer than
        ``max_hops`` reaction hops (a reaction reacting to what its own
        commands caused, without end) is parked as ``REACTION_LOOP``
        instead of sent.

        A batch that fails (a function that raises, a command that fails
        for a reason that may pass: the store away, a full queue,
        ``TOO_MANY_PARKED``) is tried again every ``retry_seconds``, as a
        projection's is.

        A command that fails for a bug in the plugins that run it (its
        handler or an apply function raised, ``HANDLER_FAILED`` and the
        other failures of ``HandlerFailed``; or an event of its aggregate
        cannot be read, ``EventNotReadable``): with ``on_failure="stop"``
        (the default) the reaction stops there and tries again every
        ``retry_seconds`` until a fixed plugin is deployed; with ``"park"``,
        at its ``max_attempts``-th failure the command is parked with that
        reason (not handed to ``on_refused``) and the reaction goes on.

        ``start_from``: where a reaction new to the store starts, fixed when
        the first server that declares it starts, before it takes commands:
        ``"end"`` (the default) reacts only to events committed from then
        on, ``"beginning"`` to every event in the log (it sends the commands
        of all of history). A reaction that has a checkpoint goes on from it
        whatever this says (docs/plugins.md, "Where a reaction starts")."""
        reaction: Reaction[Any] = Reaction(
            self.name,
            name,
            aggregate_types=aggregate_types,
            state=state,
            state_key=state_key,
            batch_size=batch_size,
            max_hops=max_hops,
            retry_seconds=retry_seconds,
            on_failure=on_failure,
            max_attempts=max_attempts,
            start_from=start_from,
        )
        self.reactions.append(reaction)
        return reaction

    def add_middleware(self, middleware: Middleware) -> Middleware:
        """Run ``middleware`` around every command the server processes (not
        only this plugin's). Plugin middleware runs inside the server's own
        (logging, metrics, audit, authorization), in plugin load order, then
        in the order added here."""
        self.middleware.append(middleware)
        return middleware

    def __repr__(self) -> str:
        return f"Plugin({self.name!r})"


def _senders(plugin: str, message_type: type[Message], sent_by_reactions: SentBy) -> frozenset[str] | None:
    """``command``'s ``sent_by_reactions`` as ``CommandSpec`` keeps it."""
    if sent_by_reactions is False:
        return None
    if sent_by_reactions is True:
        return frozenset()
    if isinstance(sent_by_reactions, str):
        # A string is an iterable of letters: "bank.transfers" would allow
        # reactions named "b", "a", ... and not the one meant.
        raise ValueError(
            f"{plugin}: sent_by_reactions of {message_type.DESCRIPTOR.full_name} takes a list of reaction names,"
            f" not a string: [{sent_by_reactions!r}]"
        )
    names = frozenset(sent_by_reactions)
    if not names:
        raise ValueError(
            f"{plugin}: sent_by_reactions of {message_type.DESCRIPTOR.full_name} names no reaction: nothing could"
            " send it (True: any reaction)"
        )
    return names


def _snake(name: str) -> str:
    """``BankAccount`` → ``BANK_ACCOUNT`` (for default reasons)."""
    out = []
    for index, char in enumerate(name.replace(".", "_")):
        if char.isupper() and index and name[index - 1].islower():
            out.append("_")
        out.append(char.upper())
    return "".join(out)


def _check_scope_name(name: str) -> None:
    # As context.claim checks it (a bad one is the plugin's bug), at load.
    if not isinstance(name, str) or not name or len(name.encode()) > MAX_SCOPE_BYTES or not name.isprintable():
        raise ValueError(f"a claim scope is 1 to {MAX_SCOPE_BYTES} bytes of printable text, got {name!r}")
