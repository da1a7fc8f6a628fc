"""Test helpers for plugin authors: given past events, when a command, then
these events (or this error), one line each::

    from service.testing import Scenario

    def test_withdraw_more_than_balance_is_refused():
        (Scenario(bank_account.plugin, aggregate_id="acc-1")
            .given(bank.AccountOpened(owner="ann"), bank.MoneyDeposited(amount=10))
            .when(bank.Withdraw(amount=11))
            .then_fails(ValidationError, reason="INSUFFICIENT_FUNDS"))

By default the command runs through the real executor on the memory store
(the path the server takes after decoding), so idempotency, expected
versions, the event registration checks, upcasting, lookups and uniqueness
claims all apply, in microseconds. Other aggregates (for
``context.exists``) and values held by others come from ``given_aggregate``
and ``given_claim``; ``owner_of`` tells who holds a value afterwards;
``given_stored`` gives an event as an older plugin stored it, to test
upcasters.

``.at(datetime)`` sets the clock ``context.now()`` reads, and
``.when(command, timestamp=datetime)`` the command's own timestamp
(``context.timestamp``), so handlers that look at time are tested exactly.

``ReactionRun`` tests reactions (process managers): commands submitted
through the real executor on a memory store, then every reaction of the
plugins run until nothing more happens (``settle``), then the aggregates'
states, their events and the parked commands to look at. ``ProjectionRun``
tests projections (read models): events from commands or given as stored,
the real projection runner applying them in batches (``settle``), the
documents to look at, and a rebuild from an empty read model.

``.on_server()`` runs the same scenario end to end instead: a real server
in this process, on a real socket, over a memory store seeded with the
given events, and the command sent by the Python client, so that encoding,
the error table and the wire are covered too. ``.on_server("host:port")``
uses a server that is already running (yours, with your plugin loaded);
since no RPC appends raw events, the past is then given as commands
(``given_commands``), and the aggregate id gets a unique suffix so that
runs never meet each other's aggregates.
"""

from __future__ import annotations

import asyncio
import copy
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import TypeVar

from google.protobuf.message import Message

from chronicle.v1 import reaction_service_pb2
from service.api.codec import check_metadata, check_origin
from service.claim_scopes import stored_scope, tenant_scope
from service.errors import ChronicleError
from service.plugins.api import Plugin
from service.plugins.projections import Projection
from service.plugins.reactions import DEFAULT_MAX_HOPS
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest, CommandResult
from service.processing.executor import CommandExecutor
from service.processing.projections import ProjectionRunner
from service.processing.reaction_documents import STATE_PREFIX, list_parked
from service.processing.reactions import ReactionRunner
from service.processing.router import Router
from service.store.base import Store
from service.store.encrypted import encrypted, forget_aggregate
from service.store.encryption import Keyring
from service.store.master_keys import MasterKeys
from service.store.memory import MemoryStore
from service.store.records import ClaimChange, DocumentRange, NewEvent, ParkedEvent, RecordedEvent, StoredDocument

M = TypeVar("M", bound=Message)


def _stored_event(
    registry: Registry,
    event: Message | NewEvent,
    *,
    origin: str = "",
    user_id: str = "",
    metadata: Mapping[str, str] | None = None,
) -> NewEvent:
    """``event`` as the store keeps it, given straight to a harness's store
    (no command runs), with that envelope; a ``NewEvent`` as it is."""
    if isinstance(event, NewEvent):
        return event
    spec = registry.event(event.DESCRIPTOR.full_name)
    if spec is None:
        raise ScenarioFailed(f"given: {event.DESCRIPTOR.full_name} is not an event of these plugins")
    return NewEvent(
        event_id=str(uuid.uuid4()),
        aggregate_type=spec.aggregate.name,
        event_type=spec.name,
        schema_version=spec.schema_version,
        payload=event.SerializeToString(),
        timestamp_us=time.time_ns() // 1000,
        origin=origin,
        user_id=user_id,
        metadata=dict(metadata or {}),
    )


class ScenarioFailed(AssertionError):
    pass


def _micros(when: datetime) -> int:
    if when.tzinfo is None:
        raise ScenarioFailed(f"give an aware datetime (with a time zone), got {when!r}")
    return round(when.timestamp() * 1_000_000)


@dataclass(frozen=True, slots=True)
class _OnServer:
    address: str | None  # None: start one in this process


class Scenario:
    def __init__(self, *plugins: Plugin, aggregate_id: str = "aggregate-1") -> None:
        self.registry = Registry(plugins)
        self.aggregate_id = aggregate_id
        self._given: list[tuple[str, Message | NewEvent]] = []
        self._claims: list[tuple[str, ClaimChange]] = []
        self._given_commands: list[Message] = []
        self._command: Message | None = None
        self._expected_version: int | None = None
        self._server: _OnServer | None = None
        self._now: float | None = None
        self._timestamp_us = 0
        self.store = MemoryStore()

    def given(self, *events: Message) -> Scenario:
        """Events the aggregate already has, oldest first."""
        self._given.extend((self.aggregate_id, event) for event in events)
        return self

    def given_stored(self, event_type: str, payload: bytes | Message, *, schema_version: int) -> Scenario:
        """A past event as an older version of the plugin stored it, to test
        upcasters: it is read through them like any stored event."""
        data = payload if isinstance(payload, bytes) else payload.SerializeToString()
        spec = self.registry.event(event_type)
        fallback = self.registry.aggregates[0].name if self.registry.aggregates else ""
        new = NewEvent(
            event_id=str(uuid.uuid4()),
            aggregate_type=spec.aggregate.name if spec is not None else fallback,
            event_type=event_type,
            schema_version=schema_version,
            payload=data,
            timestamp_us=time.time_ns() // 1000,
        )
        self._given.append((self.aggregate_id, new))
        return self

    def given_aggregate(self, aggregate_id: str, *events: Message) -> Scenario:
        """Another aggregate with these events, so ``context.exists`` finds it."""
        if not events:
            raise ScenarioFailed("given_aggregate: an aggregate exists once it has an event")
        self._given.extend((aggregate_id, event) for event in events)
        return self

    def given_claim(self, scope: str, value: str, *, owner: str) -> Scenario:
        """``value`` is held in ``scope`` by the aggregate ``owner`` (in its
        tenant, for a scope declared per tenant)."""
        stored = stored_scope(scope, owner, self.registry.per_tenant_claim_scopes)
        self._claims.append((owner, ClaimChange(stored, value)))
        return self

    def owner_of(self, scope: str, value: str, *, tenant: str = "") -> str | None:
        """Who holds ``value`` in ``scope`` after the scenario ran (in
        process); ``tenant``: whose, for a scope declared per tenant."""
        if scope in self.registry.per_tenant_claim_scopes:
            if not tenant:
                raise ScenarioFailed(f"owner_of: {scope!r} is per tenant: say whose (tenant=...)")
            scope = tenant_scope(scope, tenant)
        return asyncio.run(self.store.claim_owner(scope, value))

    def given_commands(self, *commands: Message) -> Scenario:
        """Commands that ran before (after the given events); each must succeed."""
        self._given_commands.extend(commands)
        return self

    def at(self, now: datetime) -> Scenario:
        """Run with the clock at ``now``: what ``context.now()`` returns (in
        process only: a server keeps its own time)."""
        self._now = _micros(now) / 1_000_000
        return self

    def when(
        self, command: Message, *, expected_version: int | None = None, timestamp: datetime | None = None
    ) -> Scenario:
        """The command under test; ``timestamp``: the one its client stamped it
        with (``context.timestamp``; default: when it is run)."""
        self._command = command
        self._expected_version = expected_version
        self._timestamp_us = 0 if timestamp is None else _micros(timestamp)
        return self

    def on_server(self, address: str | None = None) -> Scenario:
        """Run end to end over gRPC: on a server started in this process, or
        on the one at ``address``."""
        self._server = _OnServer(address)
        return self

    def then(self, *expected: Message) -> list[Message]:
        """Assert the command appends exactly ``expected``; return them."""
        events = asyncio.run(self._run())
        if events != list(expected):
            raise ScenarioFailed(f"expected events {_show(expected)}, got {_show(events)}")
        return events

    def appended(self) -> list[Message]:
        """The events the command appends, for assertions of your own (a
        refusal is raised)."""
        return asyncio.run(self._run())

    def then_fails(self, error: type[ChronicleError], *, reason: str | None = None) -> ChronicleError:
        """Assert the command is refused with ``error`` (and ``reason``),
        strictly: the refusal's gRPC status code must be ``error``'s, as a
        server would send it, in process and on a server alike. So
        ``ValidationError`` (FAILED_PRECONDITION) does not accept its
        subclasses of other codes (``NotFoundError``, ``InvalidArgumentError``,
        ``AlreadyExistsError``): name those. In process the error must also be
        an instance of ``error``; a server sends only the code and the
        reason, so tell a plugin's own subclasses apart by ``reason``."""
        try:
            events = asyncio.run(self._run())
        except ChronicleError as raised:
            if not self._is_refusal(raised, error):
                expected = getattr(_status_code_of(error), "name", "no status")
                raise ScenarioFailed(f"expected {error.__name__} ({expected}), got {raised!r}") from raised
            if reason is not None and raised.reason != reason:
                raise ScenarioFailed(f"expected reason {reason}, got {raised.reason}: {raised.message}") from raised
            return raised
        raise ScenarioFailed(f"expected {error.__name__}, the command appended {_show(events)}")

    # -- running ---------------------------------------------------------

    def _command_or_fail(self) -> Message:
        if self._command is None:
            raise ScenarioFailed("call .when(command) before .then…")
        return self._command

    def _is_refusal(self, raised: ChronicleError, error: type[ChronicleError]) -> bool:
        from service.client import RemoteError

        # The code decides both ways, so a scenario gets the same verdict in
        # process and on a server (which sends no class, only the code).
        expected = _status_code_of(error)
        if isinstance(raised, RemoteError):
            return bool(raised.code == expected)
        return isinstance(raised, error) and _status_code_of(type(raised)) == expected

    async def _run(self) -> list[Message]:
        command = self._command_or_fail()
        if self._server is not None:
            return await self._run_on_server(command, self._server.address)
        store = await self._seeded_store()
        now = self._now
        executor = CommandExecutor(Store.of(store), self.registry, clock=time.time if now is None else lambda: now)
        for past in self._given_commands:
            await self._execute(executor, past, None, given=True)
        return await self._execute(executor, command, self._expected_version)

    async def _seeded_store(self) -> MemoryStore:
        self.store = store = MemoryStore()
        for aggregate_id, event in self._given:
            head = await store.head(aggregate_id)
            await store.append(aggregate_id, [_stored_event(self.registry, event)], head.version if head else 0)
        for owner, claim in self._claims:
            head = await store.head(owner)
            await store.append(owner, [], head.version if head else 0, claims=[claim])
        return store

    async def _execute(
        self, executor: CommandExecutor, command: Message, expected_version: int | None, *, given: bool = False
    ) -> list[Message]:
        spec = self.registry.command(command.DESCRIPTOR.full_name)
        if spec is None:
            raise ScenarioFailed(f"no handler for {command.DESCRIPTOR.full_name}")
        request = CommandRequest(
            command_id=str(uuid.uuid4()),
            aggregate_id=self.aggregate_id,
            spec=spec,
            message=command,
            expected_version=expected_version,
            timestamp_us=(self._timestamp_us if not given else 0) or time.time_ns() // 1000,
        )
        try:
            result, _ = await executor.execute(request, None)
        except ChronicleError as error:
            if given:
                raise ScenarioFailed(f"given command {command.DESCRIPTOR.full_name} was refused: {error!r}") from error
            raise
        return [self._decode(e.event_type, e.payload) for e in result.events]

    async def _run_on_server(self, command: Message, address: str | None) -> list[Message]:
        # Imported here: the server and client are only needed on this path.
        from service.app import start
        from service.client import NO_RETRIES, ChronicleClient, RemoteError
        from service.settings import Settings

        aggregate_id = self.aggregate_id
        async with AsyncExitStack() as stack:
            if address is None:
                settings = Settings(
                    listen="127.0.0.1:0", discover_plugins=False, shutdown_grace=0.5, shutdown_drain=0.0
                )
                app = await start(settings, store=await self._seeded_store(), registry=self.registry)
                stack.push_async_callback(app.stop, 0.5)
                address = app.address
            elif self._given or self._claims:
                what = "given events" if self._given else "given claims"
                raise ScenarioFailed(f"{what} need the in-process server: on_server() without an address")
            else:
                aggregate_id = f"{aggregate_id}-{uuid.uuid4().hex[:12]}"
            client = await stack.enter_async_context(
                ChronicleClient.connect(address, origin="scenario", retry=NO_RETRIES)
            )
            for past in self._given_commands:
                try:
                    await client.submit(aggregate_id, past)
                except RemoteError as error:
                    name = past.DESCRIPTOR.full_name
                    raise ScenarioFailed(f"given command {name} was refused: {error}") from error
            if self._now is not None or self._timestamp_us:
                raise ScenarioFailed("at() and when(timestamp=) test time in process: a server keeps its own clock")
            submitted = await client.submit(aggregate_id, command, expected_version=self._expected_version)
            return [self._decode(e.event_type, e.envelope.payload.value) for e in submitted.events]

    def _decode(self, event_type: str, payload: bytes) -> Message:
        spec = self.registry.event(event_type)
        if spec is None:
            raise ScenarioFailed(f"the command appended {event_type}, which is not an event of these plugins")
        return spec.message_type.FromString(payload)


class ReactionRun:
    """The plugins' reactions run in process, over a memory store, through
    the real executor and the real reaction runner::

        with ReactionRun(bank_account.plugin) as run:
            run.submit("acc-1", bank.OpenAccount(owner="ann"))
            run.submit("t-1", bank.TransferMoney(source_account_id="acc-1", ...))
            run.settle()
            assert run.state("t-1", bank.Transfer).status == bank.TRANSFER_STATUS_FAILED

    ``settle`` runs every reaction until none has anything left to do (the
    commands they send make events they may react to in turn).
    """

    def __init__(self, *plugins: Plugin) -> None:
        self.registry = Registry(plugins)
        self.store = MemoryStore()
        # What time the reactions' runners see (for their deadlines): the
        # wall clock, moved on by ``advance``.
        self._ahead_us = 0
        self._loop = asyncio.new_event_loop()
        roles = Store.of(self.store)
        self._executor = CommandExecutor(roles, self.registry)
        self._router = Router(self._executor)
        self.runners = {
            reaction.name: ReactionRunner(
                reaction,
                registry=self.registry,
                submit=self._reactions_command,
                log=roles.log,
                documents=roles.projections,
                reader=self._executor.loader.reader,
                clock=self.now_us,
            )
            for reaction in self.registry.reactions
        }
        self._positions = dict.fromkeys(self.runners, 0)

    def __enter__(self) -> ReactionRun:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._loop.run_until_complete(self._router.close(grace=1.0))
        self._loop.close()

    def submit(
        self, aggregate_id: str, command: Message, *, metadata: dict[str, str] | None = None, origin: str = ""
    ) -> list[Message]:
        """Run ``command`` on ``aggregate_id`` (a refusal is raised), with
        ``metadata`` and ``origin`` as a client's command would carry them;
        its events. Both are checked as the server checks a client's: a
        reserved origin (``reaction:...``, RESERVED_ORIGIN) or metadata key
        (``chronicle....``, INVALID_METADATA) is refused here as there, so a
        test cannot pass on what no client can send; and a command only
        reactions may send is refused as the server refuses a client's
        (PERMISSION_DENIED, COMMAND_INTERNAL)."""
        origin = check_origin("command", origin)
        metadata = check_metadata(metadata or {})
        spec = self.registry.command(command.DESCRIPTOR.full_name)
        if spec is None:
            raise ScenarioFailed(f"no handler for {command.DESCRIPTOR.full_name}")
        spec.check_sender("")
        request = CommandRequest(
            command_id=str(uuid.uuid4()),
            aggregate_id=aggregate_id,
            spec=spec,
            message=command,
            origin=origin,
            metadata=metadata,
            timestamp_us=time.time_ns() // 1000,
        )
        result = self._loop.run_until_complete(self._router.submit(request))
        return [self._decode(e.event_type, e.payload) for e in result.events]

    async def _reactions_command(self, request: CommandRequest) -> CommandResult:
        """A reaction's command, checked as the server's reaction pipeline
        checks it (``sent_by_reactions``: the reaction must be allowed)."""
        request.spec.check_sender(request.principal)
        return await self._router.submit(request)

    def now_us(self) -> int:
        """What time the reactions see (microseconds since the Unix epoch)."""
        return time.time_ns() // 1000 + self._ahead_us

    def advance(self, by: timedelta) -> None:
        """Move the reactions' clock on by ``by``: the deadlines due by then
        fire at the next ``step`` or ``settle`` (events are still committed
        at the wall clock's time, before them)."""
        self._ahead_us += by // timedelta(microseconds=1)

    def step(self) -> bool:
        """Run every reaction over the events there are now (not over those
        the commands they send make), and fire the deadlines due; whether
        any had something to do."""

        async def step() -> bool:
            moved = False
            for name, runner in self.runners.items():
                fired = runner.status.deadlines_fired
                position = await runner.step(self._positions[name])
                moved = moved or position != self._positions[name] or runner.status.deadlines_fired != fired
                self._positions[name] = position
            return moved

        return self._loop.run_until_complete(step())

    def settle(self, *, rounds: int = DEFAULT_MAX_HOPS + 10) -> None:
        """Run every reaction until none has anything left to do."""
        for _ in range(rounds):
            if not self.step():
                return
        raise ScenarioFailed(f"the reactions were still busy after {rounds} rounds")

    def state(self, aggregate_id: str, state_type: type[M]) -> M:
        """The aggregate's current state."""
        name = state_type.DESCRIPTOR.full_name
        kind = next((a for a in self.registry.aggregates if a.state_type_name == name), None)
        if kind is None:
            raise ScenarioFailed(f"no aggregate type of these plugins has state {name}")
        aggregate = self._loop.run_until_complete(self._executor.loader.load(aggregate_id, kind))
        if not isinstance(aggregate.state, state_type):
            raise ScenarioFailed(f"{aggregate_id} holds a {type(aggregate.state).__name__}, not a {name}")
        return aggregate.state

    def events(self, aggregate_id: str) -> list[Message]:
        """The aggregate's events, oldest first, as the plugins read them now
        (stored at an older schema version: upcast, as the server reads them)."""
        stored = self._loop.run_until_complete(self.store.read_aggregate(aggregate_id))
        return [message for _, message in self._executor.loader.reader.messages(stored)]

    def recorded(self, aggregate_id: str) -> list[RecordedEvent]:
        """The aggregate's events as stored, with their envelopes (origin,
        metadata, causation): what a reaction's router reads to route them."""
        return self._loop.run_until_complete(self.store.read_aggregate(aggregate_id))

    def process_state(self, reaction: str, state_key: str) -> reaction_service_pb2.ProcessState | None:
        """The state ``reaction`` keeps under ``state_key`` (packed, with the
        aggregates it was derived from: its subjects), if any."""
        stored = self._loop.run_until_complete(self.store.load_document(reaction, STATE_PREFIX + state_key))
        return None if stored is None else reaction_service_pb2.ProcessState.FromString(stored.data)

    def parked(self, reaction: str) -> list[reaction_service_pb2.ParkedCommand]:
        """The commands ``reaction`` parked, oldest first."""
        return self._loop.run_until_complete(list_parked(self.store, reaction))

    def _decode(self, event_type: str, payload: bytes) -> Message:
        spec = self.registry.event(event_type)
        if spec is None:
            raise ScenarioFailed(f"{event_type} is not an event of these plugins")
        return spec.message_type.FromString(payload)


class ProjectionRun:
    """The plugins' projections run in process over a memory store, by the
    real projection runner: batches as the server makes them (each
    projection's ``batch_size``, or ``batch_size`` here to split the log
    finer), each committed with the checkpoint, documents loaded on demand::

        with ProjectionRun(bank_account.plugin) as run:
            run.submit("acc-1", bank.OpenAccount(owner="ann"))
            run.given("acc-2", bank.AccountOpened(owner="ann"), origin="import")
            run.settle()
            assert run.document("bank.balances_by_owner", "owner:ann", bank.OwnerBalance).account_ids == [...]
            run.rebuild("bank.balances_by_owner")  # from an empty read model, as RebuildProjection does

    Events come from commands (``submit``, through the real executor) or are
    given as they would have been stored (``given``: typed event messages,
    with the envelope's origin, user and metadata, or ``NewEvent``s).
    A handler's failure is raised by ``settle`` as ``ScenarioFailed``
    (a projection with ``on_failure="park"`` parks the event instead:
    ``parked``). ``ProjectionRun(plugin, forgetting=True)`` stores what it
    stores encrypted, as a server with encryption at rest does, so that
    ``forget(aggregate_id)`` forgets an aggregate as ForgetAggregate does
    (documents are then read one by one: keys are not listed).
    """

    def __init__(self, *plugins: Plugin, batch_size: int | None = None, forgetting: bool = False) -> None:
        self.registry = Registry(plugins)
        self.store = MemoryStore()
        self._loop = asyncio.new_event_loop()
        # With ``forgetting``: encrypted at rest, as a server must be to
        # forget (``forget``), under a master key made for the run.
        self._keyring = Keyring(self.store, MasterKeys({"run": os.urandom(32)}, "run")) if forgetting else None
        tenant_keyed = frozenset(p.name for p in self.registry.projections if p.tenant_keyed)
        self._roles = (
            Store.of(self.store)
            if self._keyring is None
            else encrypted(Store.of(self.store), self._keyring, tenant_keyed=tenant_keyed)
        )
        self._executor = CommandExecutor(self._roles, self.registry)
        self._batch_size = batch_size
        self.runners = {projection.name: self._runner(projection) for projection in self.registry.projections}
        self._positions = dict.fromkeys(self.runners, 0)

    def _runner(self, projection: Projection) -> ProjectionRunner:
        if self._batch_size is not None:
            projection = copy.copy(projection)  # the plugin's own stays as it is
            projection.batch_size = projection.catch_up_batch_size = self._batch_size
        roles = self._roles
        return ProjectionRunner(
            projection, log=roles.log, documents=roles.projections, reader=self._executor.loader.reader
        )

    def __enter__(self) -> ProjectionRun:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._loop.close()

    def submit(self, aggregate_id: str, command: Message, *, origin: str = "") -> list[Message]:
        """Run ``command`` on ``aggregate_id`` through the real executor (a
        refusal is raised); its events."""
        spec = self.registry.command(command.DESCRIPTOR.full_name)
        if spec is None:
            raise ScenarioFailed(f"no handler for {command.DESCRIPTOR.full_name}")
        request = CommandRequest(
            command_id=str(uuid.uuid4()),
            aggregate_id=aggregate_id,
            spec=spec,
            message=command,
            origin=check_origin("command", origin),
            timestamp_us=time.time_ns() // 1000,
        )
        result, _ = self._loop.run_until_complete(self._executor.execute(request, None))
        return [self._decode(e.event_type, e.payload) for e in result.events]

    def given(
        self,
        aggregate_id: str,
        *events: Message | NewEvent,
        origin: str = "",
        user_id: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        """Append ``events`` to ``aggregate_id`` as stored events (no
        command runs), with that envelope; a ``NewEvent`` as it is."""

        async def append() -> None:
            head = await self._roles.events.head(aggregate_id)
            stored = [
                _stored_event(self.registry, e, origin=origin, user_id=user_id, metadata=metadata) for e in events
            ]
            await self._roles.events.append(aggregate_id, stored, head.version if head else 0)

        self._loop.run_until_complete(append())

    def settle(self) -> None:
        """Run every projection over the log to its end, a batch at a time."""
        for name, runner in self.runners.items():
            try:
                self._positions[name] = self._loop.run_until_complete(runner.step(self._positions[name]))
            except ChronicleError as error:
                raise ScenarioFailed(f"projection {name} stopped: {error}") from error

    def rebuild(self, projection: str) -> None:
        """Empty ``projection``'s read model and apply the whole log again,
        with a new runner (nothing cached): what a rebuild does."""
        kind = self.registry.projection(projection)
        if kind is None:
            raise ScenarioFailed(f"no projection {projection} in these plugins")
        self._loop.run_until_complete(self._roles.projections.reset_projection(projection, version=kind.version))
        self.runners[projection] = self._runner(kind)
        self._positions[projection] = 0
        self.settle()

    def document(self, projection: str, key: str, document_type: type[M]) -> M | None:
        """The document under ``key`` (None when there is none)."""
        stored = self._loop.run_until_complete(self._roles.projections.load_document(projection, key))
        return None if stored is None else self._typed(stored, document_type)

    def documents(self, projection: str, document_type: type[M], *, prefix: str = "") -> dict[str, M]:
        """The documents whose keys start with ``prefix``, in key order."""
        listing = DocumentRange(prefix=prefix, limit=1_000_000)
        if self._keyring is not None:
            raise ScenarioFailed("documents are not listed by key under encryption at rest (forgetting): read each")
        stored = self._loop.run_until_complete(self.store.list_documents(projection, listing))
        return {document.key: self._typed(document, document_type) for document in stored}

    def parked(self, projection: str) -> list[ParkedEvent]:
        """The events ``projection`` parked (``on_failure="park"``), oldest first."""
        return self._loop.run_until_complete(self._roles.projections.parked_events(projection, limit=1_000_000))

    def forget(self, aggregate_id: str) -> None:
        """Forget ``aggregate_id`` as ``AdminService.ForgetAggregate`` does
        (a run made with ``forgetting=True``): its key erased, so its events
        reach no handler again (a rebuild goes without them), and the
        documents naming it as a subject deleted."""
        if self._keyring is None:
            raise ScenarioFailed("forget needs ProjectionRun(..., forgetting=True): forgetting erases a key")
        self._loop.run_until_complete(forget_aggregate(Store.of(self.store), self._keyring, aggregate_id))

    def position(self, projection: str) -> int:
        """The log position ``projection`` has applied and committed."""
        return self._loop.run_until_complete(self.store.projection_position(projection))

    @staticmethod
    def _typed(stored: StoredDocument, document_type: type[M]) -> M:
        if stored.type_name != document_type.DESCRIPTOR.full_name:
            raise ScenarioFailed(f"{stored.key} holds a {stored.type_name}, not a {document_type.DESCRIPTOR.full_name}")
        return document_type.FromString(stored.data)

    def _decode(self, event_type: str, payload: bytes) -> Message:
        spec = self.registry.event(event_type)
        if spec is None:
            raise ScenarioFailed(f"{event_type} is not an event of these plugins")
        return spec.message_type.FromString(payload)


def _status_code_of(error: type[ChronicleError]) -> object:
    from service.api.status import STATUS_BY_ERROR

    for cls in error.__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return None


def _show(events: Sequence[Message]) -> str:
    return "[" + ", ".join(f"{e.DESCRIPTOR.name}({str(e).strip()!s})" for e in events) + "]"
