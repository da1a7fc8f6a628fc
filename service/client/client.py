"""The async client: submit commands, read events, load state."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from chronicle.v1 import (
    admin_service_pb2_grpc,
    command_pb2,
    command_service_pb2,
    command_service_pb2_grpc,
    event_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    projection_service_pb2_grpc,
    reaction_service_pb2,
    reaction_service_pb2_grpc,
    subscription_group_service_pb2_grpc,
)
from service.client.admin import Admin
from service.client.call_deadline import CallDeadline
from service.client.call_metadata import CallMetadata, TokenSource
from service.client.channels import DEFAULT_KEEPALIVE, DEFAULT_KEEPALIVE_TIMEOUT, keepalive_options, open_channel
from service.client.checkpoints import CheckpointStore
from service.client.commands import Command, new_command_id
from service.client.errors import RemoteError, remote_error
from service.client.groups import GroupConsumer, Groups
from service.client.loop_binding import LoopBoundChannel, on_its_loop
from service.client.projections import Projections
from service.client.reactions import Reactions
from service.client.read_routing import failover_stub
from service.client.results import AggregateState, Event, M, StreamResult, Submitted, SubmittedBatch, unpack_as
from service.client.retry import DEFAULT_RETRY, RetryPolicy, call_with_retries, resuming
from service.client.routed_stream import RoutedStream
from service.client.routing import Routes, member_gone, unanswered
from service.client.streaming import CommandStream, StreamMethod, commands_of
from service.client.subscription import LogFilter, Subscription

DEFAULT_ATTEMPT_TIMEOUT = 10.0
S = TypeVar("S")


class ChronicleClient:
    """A typed client of one Chronicle server, for asyncio code::

        async with ChronicleClient.connect("127.0.0.1:50051", origin="billing") as client:
            done = await client.submit("acc-1", bank.Deposit(amount=100))
            account = await client.get_aggregate("acc-1", bank.Account)
            async for event in client.subscribe(checkpoints=FileCheckpoints(Path("billing.pos"))):
                ...

    Commands get a fresh command id (UUID 4) unless one is given; failed
    attempts that may succeed later are retried with the *same* id, which the
    server executes at most once (see ``retry.RetryPolicy``). By default a
    unary call or a read is retried for 30 seconds (``retry_for``), and a
    subscription, a command stream or a group consumer is reopened for as
    long as it is iterated, the backoff growing to 2 seconds: a server
    restart or a database outage is waited out. Errors are
    :class:`~service.client.errors.RemoteError` subclasses carrying the
    server's code, reason and metadata.

    ``attempt_timeout`` bounds each attempt, in seconds (bound a whole call,
    retries included, with its ``timeout=``: its ``DeadlineExceeded``
    carries the command ids, which ``asyncio.timeout``'s error does not);
    ``call_metadata`` is sent with every call (an ``authorization`` header,
    say; a ``CallMetadata`` asks for its token at each call).

    With ``routes`` (``connect(..., routing=True)``) commands go to the
    replica that owns their aggregate's partition, over a channel per
    replica, and to any replica when it cannot be reached
    (``service.client.routing``); reads, subscriptions, group consumers and
    the group, projection and reaction calls go to the address given while
    it answers, and to another live replica when it does not (a subscription
    resumes there after its last complete position, a consumer joins its
    group there; ``service.client.read_routing``).
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        origin: str = "",
        user_id: str = "",
        retry: RetryPolicy = DEFAULT_RETRY,
        attempt_timeout: float | None = DEFAULT_ATTEMPT_TIMEOUT,
        call_metadata: Sequence[tuple[str, str]] | CallMetadata = (),
        owns_channel: bool = False,
        routes: Routes | None = None,
    ) -> None:
        # Bound to the event loop of its first call (service.client.loop_binding).
        self._channel = (
            channel
            if isinstance(channel, LoopBoundChannel)
            else LoopBoundChannel("the server", channel=channel, owns=owns_channel)
        )
        self.routes = routes
        self._commands = command_service_pb2_grpc.CommandServiceStub(self._channel)
        self._events = self._reads(event_service_pb2_grpc.EventServiceStub)
        self._groups = self._reads(subscription_group_service_pb2_grpc.SubscriptionGroupServiceStub)
        self._reactions = self._reads(reaction_service_pb2_grpc.ReactionServiceStub)
        self._origin = origin
        self._user_id = user_id
        self._retry = retry
        self._attempt_timeout = attempt_timeout
        self._call_metadata = CallMetadata.of(call_metadata)
        # Whether the server has ReadAggregatePages (None: not asked yet).
        self._paged_reads: bool | None = None
        # Whether command streams go over SubmitStreamPages (until a server
        # answers it UNIMPLEMENTED).
        self._stream_method = StreamMethod()
        self.groups = Groups(
            self._groups, retry=retry, attempt_timeout=attempt_timeout, call_metadata=self._call_metadata
        )
        self.reactions = Reactions(
            self._reactions, retry=retry, attempt_timeout=attempt_timeout, call_metadata=self._call_metadata
        )
        # Listing aggregates by prefix and forgetting them (admin): any server answers.
        self.admin = Admin(
            self._reads(admin_service_pb2_grpc.AdminServiceStub),
            retry=retry,
            attempt_timeout=attempt_timeout,
            call_metadata=self._call_metadata,
        )
        # Read models: documents (read your writes with a submit's position),
        # progress, parked events, rebuilds.
        self.projections = Projections(
            self._reads(projection_service_pb2_grpc.ProjectionServiceStub),
            retry=retry,
            attempt_timeout=attempt_timeout,
            call_metadata=self._call_metadata,
        )

    def _reads(self, stub_of: Callable[[grpc.aio.Channel], S]) -> S:
        """A stub of a read service (events, groups, projections, reactions)
        on the client's channel; with routing, one whose calls go to any
        live member, the address given first (``service.client.read_routing``)."""
        own = stub_of(self._channel)
        return own if self.routes is None else failover_stub(self.routes, stub_of, own)

    @classmethod
    def connect(
        cls,
        address: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token: TokenSource | None = None,
        origin: str = "",
        user_id: str = "",
        retry: RetryPolicy = DEFAULT_RETRY,
        attempt_timeout: float | None = DEFAULT_ATTEMPT_TIMEOUT,
        call_metadata: Sequence[tuple[str, str]] = (),
        routing: bool = False,
        keepalive: float | None = DEFAULT_KEEPALIVE,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
    ) -> ChronicleClient:
        """A client over a new channel to ``address`` (host:port), closed
        with the client: plaintext, or TLS with ``credentials``
        (``grpc.ssl_channel_credentials(ca, key, cert)``, with a client
        certificate for mutual TLS). ``token`` (a JWT or an API key) is sent
        as ``authorization: Bearer <token>`` with every call; a function
        returning the token is asked at each call, and a call or stream that
        a stale token failed (expired, or signed with a key the server
        rotated out) is retried with the token it returns then, so streams
        outlive a short-lived JWT (``service.client.call_metadata``). ``routing``:
        send each command to the replica that owns its aggregate (found
        from ``address``, then followed; see ``service.client.routing``),
        and each read to ``address``, or another live replica when it is
        down, with the same credentials; use it inside ``async with``, which
        fetches the topology before the first command. ``keepalive``: while
        calls are open, ping the server every so many seconds and drop a
        connection whose ping goes unanswered for ``keepalive_timeout``, so
        a connection that died silently ends its calls UNAVAILABLE (then
        retried, resumed, or sent to another member) rather than holding
        them; None: no pings. A channel whose server went away connects
        again at most ``retry.max_backoff`` seconds apart (gRPC's own
        backoff grows to 2 minutes), so a server that is back is found
        within that (``service.client.channels``)."""
        keepalive_options(keepalive, keepalive_timeout)  # a bad value fails here, not at the first call

        def open_member_channel(target: str) -> grpc.aio.Channel:
            # Opened at its first call, in the loop making it: a client made
            # at import binds to the loop that first uses it.
            return LoopBoundChannel(
                target,
                open_channel=lambda: open_channel(
                    target,
                    credentials,
                    keepalive=keepalive,
                    keepalive_timeout=keepalive_timeout,
                    reconnect_backoff=retry.max_backoff,
                ),
            )

        channel = open_member_channel(address)
        metadata = CallMetadata(call_metadata, token)
        if metadata.refreshes:
            retry = replace(retry, refresh_credentials=True)
        # Plaintext: a TLS server would only close the connection; TLS: so would
        # a server requiring a client certificate (service.client.handshake).
        probe = {"probe_tls": True} if credentials is None else {"probe_client_certificate": True}
        retry = replace(retry, **probe)
        routes = (
            Routes(channel, open_channel=open_member_channel, call_metadata=metadata, seed_address=address)
            if routing
            else None
        )
        return cls(
            channel,
            origin=origin,
            user_id=user_id,
            retry=retry,
            attempt_timeout=attempt_timeout,
            call_metadata=metadata,
            owns_channel=True,
            routes=routes,
        )

    async def close(self) -> None:
        """Close the client's channels (one it was given only with
        ``owns_channel``); a call after this raises ``ClientClosed``.
        Closing twice is harmless. Awaited in another event loop than the
        one it is bound to, the close runs on that one
        (``loop_binding.on_its_loop``), or, if that loop is closed, here,
        closing at once what it left (``LoopBoundChannel.close``): never
        left to the garbage collector with its connections open."""
        if not await on_its_loop(self._channel.loop, self._close_here):
            await self._close_here()  # its loop is closed: what can be closed without it, here

    async def _close_here(self) -> None:
        if self.routes is not None:
            await self.routes.close()
        await self._channel.close()

    async def __aenter__(self) -> ChronicleClient:
        if self.routes is not None:
            await self.routes.first_topology()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    async def submit(
        self,
        aggregate_id: str,
        message: Message,
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        correlation_id: str = "",
        causation_id: str = "",
        dry_run: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 (its error carries the command id: call_deadline)
    ) -> Submitted:
        """Run the command ``message`` on ``aggregate_id``; return what it did.

        ``expected_version``: 0 means the aggregate must not exist yet, N that
        it must be at version N (else ``FailedPrecondition``,
        WRONG_EXPECTED_VERSION). Pass ``command_id`` to make a retry across
        restarts of *this* program safe too. With ``dry_run`` the server
        decides on the current state and writes nothing: the result says
        what the command would append (``Submitted.dry_run``), and a refusal
        is raised as it would be. Raises a ``RemoteError`` when the command
        is refused or the retries are spent (by default, once an error worth
        retrying has kept failing it for 30 seconds: ``RetryPolicy.retry_for``).

        ``timeout``: seconds for the whole call, retries included; past it,
        ``DeadlineExceeded`` carrying the ``command_id`` (the command may
        have run: send it again with that id, and it runs at most once).
        Prefer it to ``asyncio.timeout``, whose ``TimeoutError`` carries no id.
        """
        deadline = CallDeadline(timeout, self._attempt_timeout)
        command = Command(
            aggregate_id,
            message,
            expected_version=expected_version,
            command_id=command_id or new_command_id(),
            metadata=metadata or {},
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
        request = command_service_pb2.SubmitRequest(command=self._encode(command), dry_run=dry_run)

        async def attempt() -> command_service_pb2.SubmitResponse:
            response: command_service_pb2.SubmitResponse = await self._routed(
                aggregate_id,
                lambda stub: stub.Submit(request, timeout=deadline.attempt_timeout(), metadata=self._call_metadata()),
            )
            return response

        what = f"submit {command.describe()}"
        try:
            response = await deadline.run(what, call_with_retries(self._retry, what, attempt))
        except RemoteError as error:
            error.command_ids = (command.command_id,)
            raise
        return Submitted.of(command.command_id, response, dry_run=dry_run)

    async def submit_batch(
        self,
        commands: Sequence[Command],
        *,
        dry_run: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 (as submit's)
    ) -> SubmittedBatch:
        """Run ``commands`` (1 to 100, all for one aggregate) as one unit:
        each sees the state the ones before it left, and all their events
        are appended in one transaction, or none is.

        A refusal of any command refuses the batch: the error's metadata
        names it (``batch_index``, ``command_id``). A malformed batch is
        ``InvalidArgument`` (EMPTY_BATCH, BATCH_TOO_LARGE, MIXED_AGGREGATES,
        MIXED_AGGREGATE_TYPES, DUPLICATE_COMMAND_ID). Retried like
        ``submit``, with the same command ids: a batch that ran comes back
        whole (``replayed``). ``dry_run`` and ``timeout`` as for ``submit``
        (the ``DeadlineExceeded`` carries every command's id).
        """
        deadline = CallDeadline(timeout, self._attempt_timeout)
        request = command_service_pb2.SubmitBatchRequest(
            commands=[self._encode(command) for command in commands], dry_run=dry_run
        )

        async def attempt() -> command_service_pb2.SubmitBatchResponse:
            response: command_service_pb2.SubmitBatchResponse = await self._routed(
                commands[0].aggregate_id if commands else "",
                lambda stub: stub.SubmitBatch(
                    request, timeout=deadline.attempt_timeout(), metadata=self._call_metadata()
                ),
            )
            return response

        where = repr(commands[0].aggregate_id) if commands else "nothing"
        what = f"submit a batch of {len(commands)} to {where}"
        try:
            response = await deadline.run(what, call_with_retries(self._retry, what, attempt))
        except RemoteError as error:
            error.command_ids = tuple(command.command_id for command in commands)
            raise
        return SubmittedBatch(
            version=response.version,
            replayed=response.replayed,
            results=tuple(
                Submitted.of(command.command_id, result, dry_run=dry_run)
                for command, result in zip(commands, response.results, strict=True)
            ),
            dry_run=dry_run,
        )

    def submit_stream(
        self, commands: Iterable[Command] | AsyncIterable[Command], *, dry_run: bool = False
    ) -> AsyncGenerator[StreamResult, None]:
        """Run ``commands`` (for any aggregates) over one call and yield one
        ``StreamResult`` per command, in the order taken, as results arrive.

        The call is SubmitStreamPages: the commands taken while the last
        page went out leave as one message, and results come back the same
        way (SubmitStream on a server that predates it).

        Commands are taken from ``commands`` as the stream has room (at most
        256 unanswered), so it may be an endless async generator. The server
        runs commands for different aggregates concurrently and those for
        one aggregate in the order sent. A refused command is a result with
        ``error`` set (its ``RemoteError``), not the end of the stream; a
        command refused with a code worth retrying (``Aborted``,
        ``Unavailable``, ``ResourceExhausted`` with a ``retry_delay``) may be
        submitted again with the same command id. A broken stream is
        reopened and the unanswered commands sent again with their ids, so
        none runs twice, for as long as the stream is iterated (with the
        default policy; a ``max_attempts`` bounds the reopenings in a row,
        and then the iteration raises the stream's ``RemoteError``). An error raised by ``commands`` ends
        the stream and is raised here; leaving the iteration early (``break``,
        ``aclose()``) ends the call and stops taking commands.
        """

        def open_on(stub: command_service_pb2_grpc.CommandServiceStub, paged: bool) -> Any:  # a stream: no deadline
            if paged:
                return stub.SubmitStreamPages(metadata=self._call_metadata())
            return stub.SubmitStream(metadata=self._call_metadata())

        def encode(command: Command) -> command_service_pb2.SubmitRequest:
            return command_service_pb2.SubmitRequest(command=self._encode(command), dry_run=dry_run)

        if self.routes is not None:
            routes = self.routes
            routed = RoutedStream(
                routes,
                open_on,
                commands_of(commands),
                encode,
                retry=self._retry,
                dry_run=dry_run,
                method=self._stream_method,
                answer_timeout=self._attempt_timeout,
            )
            return routed.results()
        stream = CommandStream(
            lambda paged, _broken: open_on(self._commands, paged),  # one channel: a broken call reopens on it
            commands_of(commands),
            encode,
            retry=self._retry,
            dry_run=dry_run,
            method=self._stream_method,
            answer_timeout=self._attempt_timeout,
        )
        return stream.results()

    async def _routed(
        self, aggregate_id: str, send: Callable[[command_service_pb2_grpc.CommandServiceStub], Any]
    ) -> Any:
        """One attempt at a command: on the owner's channel when routing."""
        if self.routes is None:
            return await send(self._commands)
        stub, address = self.routes.route(aggregate_id)
        sent = self.routes.now()
        call = send(stub)
        try:
            response = await call
        except grpc.aio.AioRpcError as error:
            failed = remote_error(error)
            if member_gone(failed) or unanswered(failed):
                self.routes.unreachable(address, sent)
            raise
        self.routes.answered(address)
        self.routes.hinted(await call.trailing_metadata())
        return response

    def _encode(self, command: Command) -> command_pb2.Command:
        return command.encode(user_id=self._user_id, origin=self._origin)

    async def read(
        self,
        aggregate_id: str,
        *,
        from_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
        event_types: Sequence[str] = (),
        origin: str = "",
        min_position: int = 0,
    ) -> AsyncIterator[Event]:
        """The aggregate's events in version order from ``from_version``
        (default 1), or with ``backwards`` newest first from ``from_version``
        (default: the latest) down to version 1.

        ``limit``: at most about this many events, for paging: a page never
        ends between events that share a version (one stored event an
        upcaster split), so it may hold a few more; ask for the next page
        from the last version received + 1 (backwards: - 1); a page shorter
        than ``limit`` is the last. A stream broken by a retryable error is
        reopened where it broke, so no event is missed or repeated.
        ``min_position``: read your writes from a server that reads from a
        standby: the read includes at least the log up to this position
        (the server waits for it, or answers UNAVAILABLE, which is retried).
        To bound the whole read in time: ``read_all(..., timeout=…)``.
        """
        async for event in self._read(
            aggregate_id,
            from_version=from_version,
            limit=limit,
            backwards=backwards,
            event_types=event_types,
            origin=origin,
            min_position=min_position,
            deadline=None,
        ):
            yield event

    async def _read(
        self,
        aggregate_id: str,
        *,
        from_version: int | None,
        limit: int | None,
        backwards: bool,
        event_types: Sequence[str],
        origin: str,
        min_position: int,
        deadline: CallDeadline | None,
    ) -> AsyncIterator[Event]:
        """``read``; each stream's gRPC deadline from ``deadline`` (None: the
        client's per attempt)."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1 (or None: no limit), got {limit}")
        # Where to reopen: at the last version received (events can share a
        # version), skipping the ones of it already delivered.
        cursor = from_version if from_version is not None else (0 if backwards else 1)
        at_cursor = delivered = skip = 0

        def request() -> event_service_pb2.ReadAggregateRequest:
            nonlocal skip
            skip = at_cursor
            remaining = 0 if limit is None else limit - delivered + at_cursor
            return event_service_pb2.ReadAggregateRequest(
                aggregate_id=aggregate_id,
                from_version=cursor,
                event_types=event_types,
                origin=origin,
                limit=remaining,
                backwards=backwards,
                min_position=min_position,
            )

        async for envelope in self._read_envelopes(aggregate_id, request, deadline):
            if skip and envelope.version == cursor:
                skip -= 1
                continue
            if envelope.version == cursor:
                at_cursor += 1
            else:
                cursor, at_cursor = envelope.version, 1
            delivered += 1
            yield Event(envelope)

    async def _read_envelopes(
        self,
        aggregate_id: str,
        request: Callable[[], event_service_pb2.ReadAggregateRequest],
        deadline: CallDeadline | None,
    ) -> AsyncIterator[event_pb2.Event]:
        """ReadAggregate's events, in pages (ReadAggregatePages) from a server
        that has them, else one by one; ``request()`` is called at each
        (re)opening, after the last event taken."""
        what = f"read {aggregate_id!r}"

        def options() -> dict[str, Any]:
            timeout = self._attempt_timeout if deadline is None else deadline.attempt_timeout()
            return {"timeout": timeout, "metadata": self._call_metadata()}

        if self._paged_reads is not False:
            pages = resuming(
                self._retry, what, lambda: self._events.ReadAggregatePages(request(), **options()), bounded=True
            )
            try:
                async for page in pages:
                    self._paged_reads = True
                    for envelope in page.events:
                        yield envelope
                return
            except RemoteError as error:
                if error.code != grpc.StatusCode.UNIMPLEMENTED or self._paged_reads:
                    raise
                self._paged_reads = False  # a server from before pages
        envelopes = resuming(
            self._retry, what, lambda: self._events.ReadAggregate(request(), **options()), bounded=True
        )
        async for envelope in envelopes:
            yield envelope

    async def read_all(
        self,
        aggregate_id: str,
        *,
        from_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
        event_types: Sequence[str] = (),
        origin: str = "",
        min_position: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, like submit's)
    ) -> list[Event]:
        """``read`` into a list. ``timeout``: seconds for the whole read, its
        reopenings included (each stream's deadline cut to what is left),
        then ``DeadlineExceeded``."""
        deadline = CallDeadline(timeout, self._attempt_timeout)
        events = self._read(
            aggregate_id,
            from_version=from_version,
            limit=limit,
            backwards=backwards,
            event_types=event_types,
            origin=origin,
            min_position=min_position,
            deadline=deadline,
        )

        async def collected() -> list[Event]:
            return [event async for event in events]

        return await deadline.run(f"read {aggregate_id!r}", collected())

    async def parked_commands(
        self,
        reaction: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (as reactions.parked's)
    ) -> AsyncIterator[reaction_service_pb2.ParkedCommand]:
        """The commands ``reaction`` parked, oldest first, a page at a time
        (``ReactionService.ListParkedCommands``, each page retried as a
        read; ``timeout`` seconds for all of them): parked commands carry
        their metadata, so all of them may not fit in one message. ``NotFound`` (REACTION_NOT_FOUND) for a reaction
        no loaded plugin declares. ``reactions.parked`` with a page size."""
        async for parked in self.reactions.parked(reaction, timeout=timeout):
            yield parked

    def subscribe(
        self,
        *,
        checkpoints: CheckpointStore | None = None,
        after_position: int = 0,
        from_end: bool = False,
        aggregate_types: Sequence[str] = (),
        event_types: Sequence[str] = (),
        aggregate_id: str = "",
        origin: str = "",
        save_every: int = 1,
        after_event_id: str = "",
    ) -> Subscription:
        """Every committed event matching the filter, in log order: those
        after ``after_position`` (or, with ``from_end``, only new ones), then
        live ones, for as long as you iterate. A broken stream is resumed
        after the last event processed, however often and long the server is
        away (with the default policy: no ``max_attempts``, the backoff
        growing to 2 seconds); with ``checkpoints`` the subscription
        starts after the saved position (ignoring ``after_position`` and
        ``from_end``) and saves as it goes. ``after_event_id``: the id of
        the event seen at ``after_position`` (a ``Subscription.event_id``
        kept beside its position): the server refuses with ``LogRewound``
        when the log no longer holds it there, or ends below that position
        (without the id, beyond the end is ``InvalidArgument``
        POSITION_BEYOND_END). See :class:`Subscription`."""

        def open_call(request: event_service_pb2.SubscribeRequest) -> Any:
            return self._events.Subscribe(request, metadata=self._call_metadata())  # a stream: no deadline

        return Subscription(
            open_call,
            log_filter=LogFilter(
                aggregate_types=aggregate_types, event_types=event_types, aggregate_id=aggregate_id, origin=origin
            ),
            retry=self._retry,
            after_position=after_position,
            after_event_id=after_event_id,
            from_end=from_end,
            checkpoints=checkpoints,
            save_every=save_every,
        )

    def consume(
        self, group: str, *, consumer: str, max_in_flight: int = 100, reconnect_delay: float = 0.5
    ) -> GroupConsumer:
        """Consume subscription group ``group`` as ``consumer``: an async
        iterator of deliveries to ack or nack, shared with the group's other
        consumers (see ``service.client.groups``). Use it in ``async with``."""

        def open_call() -> Any:
            return self._groups.Consume(metadata=self._call_metadata())  # a stream: no deadline

        return GroupConsumer(
            open_call,
            group=group,
            consumer=consumer,
            max_in_flight=max_in_flight,
            reconnect_delay=reconnect_delay,
            retry=self._retry,
        )

    async def get_aggregate(
        self,
        aggregate_id: str,
        state_type: type[M],
        *,
        at_version: int | None = None,
        at_time: datetime | None = None,
        min_position: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, like submit's)
    ) -> AggregateState[M]:
        """The aggregate's state as a ``state_type`` message: now, or right
        after version ``at_version``, or as it was at ``at_time`` (a
        timezone-aware datetime; the version current then is in the result).
        At most one of the two.

        Raises ``NotFound`` (AGGREGATE_NOT_FOUND) if it has no events (or had
        none at ``at_time``), ``OutOfRange`` (VERSION_NOT_REACHED, metadata
        ``current_version``) if it has not reached ``at_version``,
        ``InvalidArgument`` (INVALID_VERSION) for an ``at_version`` of 0,
        TypeError if its state is another message type. ``min_position``:
        read your writes, as for ``read``. ``timeout``: seconds for the whole
        call, retries included (then ``DeadlineExceeded``).
        """
        deadline = CallDeadline(timeout, self._attempt_timeout)
        if at_version is not None and at_time is not None:
            raise ValueError("give at_version or at_time, not both")
        request = event_service_pb2.GetAggregateRequest(aggregate_id=aggregate_id, min_position=min_position)
        if at_version is not None:
            request.at_version = at_version
        if at_time is not None:
            if at_time.tzinfo is None:
                raise ValueError("at_time must be timezone-aware (a naive datetime names no moment)")
            request.at_time.FromDatetime(at_time)

        async def attempt() -> event_service_pb2.GetAggregateResponse:
            response: event_service_pb2.GetAggregateResponse = await self._events.GetAggregate(
                request, timeout=deadline.attempt_timeout(), metadata=self._call_metadata()
            )
            return response

        what = f"get {aggregate_id!r}"
        response = await deadline.run(what, call_with_retries(self._retry, what, attempt))
        return AggregateState(
            aggregate_id=response.aggregate_id,
            aggregate_type=response.aggregate_type,
            version=response.version,
            state=unpack_as(response.state, state_type),
        )
