"""The async client: submit commands, read events, load state."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message

from chronicle.v1 import (
    command_pb2,
    command_service_pb2,
    command_service_pb2_grpc,
    event_service_pb2,
    event_service_pb2_grpc,
)
from service.client.checkpoints import CheckpointStore
from service.client.results import AggregateState, Event, M, Submitted, unpack_as
from service.client.retry import DEFAULT_RETRY, RetryPolicy, call_with_retries, resuming
from service.client.subscription import LogFilter, Subscription

DEFAULT_ATTEMPT_TIMEOUT = 10.0


class ChronicleClient:
    """A typed client of one Chronicle server, for asyncio code::

        async with ChronicleClient.connect("127.0.0.1:50051", origin="billing") as client:
            done = await client.submit("acc-1", bank.Deposit(amount=100))
            account = await client.get_aggregate("acc-1", bank.Account)
            async for event in client.subscribe(checkpoints=FileCheckpoints(Path("billing.pos"))):
                ...

    Commands get a fresh command id (UUID 4) unless one is given; failed
    attempts that may succeed later are retried with the *same* id, which the
    server executes at most once (see ``retry.RetryPolicy``). Errors are
    :class:`~service.client.errors.RemoteError` subclasses carrying the
    server's code, reason and metadata.

    ``attempt_timeout`` bounds each attempt, in seconds (bound a whole call,
    retries included, with ``asyncio.timeout``); ``call_metadata`` is sent
    with every call (an ``authorization`` header, say).
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        origin: str = "",
        user_id: str = "",
        retry: RetryPolicy = DEFAULT_RETRY,
        attempt_timeout: float | None = DEFAULT_ATTEMPT_TIMEOUT,
        call_metadata: Sequence[tuple[str, str]] = (),
        owns_channel: bool = False,
    ) -> None:
        self._channel = channel
        self._commands = command_service_pb2_grpc.CommandServiceStub(channel)
        self._events = event_service_pb2_grpc.EventServiceStub(channel)
        self._origin = origin
        self._user_id = user_id
        self._retry = retry
        self._attempt_timeout = attempt_timeout
        self._call_metadata = tuple(call_metadata)
        self._owns_channel = owns_channel

    @classmethod
    def connect(
        cls,
        address: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        origin: str = "",
        user_id: str = "",
        retry: RetryPolicy = DEFAULT_RETRY,
        attempt_timeout: float | None = DEFAULT_ATTEMPT_TIMEOUT,
        call_metadata: Sequence[tuple[str, str]] = (),
    ) -> ChronicleClient:
        """A client over a new channel to ``address`` (host:port), closed
        with the client: plaintext, or TLS with ``credentials``
        (``grpc.ssl_channel_credentials(ca, key, cert)``, with a client
        certificate for mutual TLS). ``token`` (a JWT or an API key) is sent
        as ``authorization: Bearer <token>`` with every call."""
        channel = (
            grpc.aio.secure_channel(address, credentials)
            if credentials is not None
            else grpc.aio.insecure_channel(address)
        )
        if token is not None:
            call_metadata = (*call_metadata, ("authorization", f"Bearer {token}"))
        return cls(
            channel,
            origin=origin,
            user_id=user_id,
            retry=retry,
            attempt_timeout=attempt_timeout,
            call_metadata=call_metadata,
            owns_channel=True,
        )

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> ChronicleClient:
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
    ) -> Submitted:
        """Run the command ``message`` on ``aggregate_id``; return what it did.

        ``expected_version``: 0 means the aggregate must not exist yet, N that
        it must be at version N (else ``FailedPrecondition``,
        WRONG_EXPECTED_VERSION). Pass ``command_id`` to make a retry across
        restarts of *this* program safe too. Raises a ``RemoteError`` when
        the command is refused or the retries are spent.
        """
        payload = any_pb2.Any()
        payload.Pack(message)
        command = command_pb2.Command(
            command_id=command_id or str(uuid.uuid4()),
            aggregate_id=aggregate_id,
            payload=payload,
            user_id=self._user_id,
            origin=self._origin,
            metadata=dict(metadata or {}),
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
        command.timestamp.GetCurrentTime()
        if expected_version is not None:
            command.expected_version = expected_version
        request = command_service_pb2.SubmitRequest(command=command)

        async def attempt() -> command_service_pb2.SubmitResponse:
            response: command_service_pb2.SubmitResponse = await self._commands.Submit(
                request, timeout=self._attempt_timeout, metadata=self._call_metadata
            )
            return response

        what = f"submit {message.DESCRIPTOR.full_name} to {aggregate_id!r} (command {command.command_id})"
        response = await call_with_retries(self._retry, what, attempt)
        return Submitted(
            command_id=command.command_id,
            version=response.version,
            replayed=response.replayed,
            events=tuple(Event.of(e) for e in response.events),
        )

    async def read(
        self,
        aggregate_id: str,
        *,
        from_version: int = 1,
        event_types: Sequence[str] = (),
        origin: str = "",
    ) -> AsyncIterator[Event]:
        """The aggregate's events in version order, from ``from_version``.

        A stream broken by a retryable error is reopened after the last event
        received, so no event is missed or repeated.
        """
        cursor = from_version

        def open_stream() -> Any:
            request = event_service_pb2.ReadAggregateRequest(
                aggregate_id=aggregate_id, from_version=cursor, event_types=event_types, origin=origin
            )
            return self._events.ReadAggregate(request, timeout=self._attempt_timeout, metadata=self._call_metadata)

        async for envelope in resuming(self._retry, f"read {aggregate_id!r}", open_stream):
            cursor = envelope.version + 1
            yield Event.of(envelope)

    async def read_all(
        self, aggregate_id: str, *, from_version: int = 1, event_types: Sequence[str] = (), origin: str = ""
    ) -> list[Event]:
        """``read`` into a list."""
        events = self.read(aggregate_id, from_version=from_version, event_types=event_types, origin=origin)
        return [event async for event in events]

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
    ) -> Subscription:
        """Every committed event matching the filter, in log order: those
        after ``after_position`` (or, with ``from_end``, only new ones), then
        live ones, for as long as you iterate. A broken stream is resumed
        after the last event processed; with ``checkpoints`` the subscription
        starts after the saved position (ignoring ``after_position`` and
        ``from_end``) and saves as it goes. See :class:`Subscription`."""

        def open_call(request: event_service_pb2.SubscribeRequest) -> Any:
            return self._events.Subscribe(request, metadata=self._call_metadata)  # a stream: no deadline

        return Subscription(
            open_call,
            log_filter=LogFilter(
                aggregate_types=aggregate_types, event_types=event_types, aggregate_id=aggregate_id, origin=origin
            ),
            retry=self._retry,
            after_position=after_position,
            from_end=from_end,
            checkpoints=checkpoints,
            save_every=save_every,
        )

    async def get_aggregate(self, aggregate_id: str, state_type: type[M]) -> AggregateState[M]:
        """The aggregate's current state as a ``state_type`` message. Raises
        ``NotFound`` (AGGREGATE_NOT_FOUND) if it has no events, TypeError if
        its state is another message type."""
        request = event_service_pb2.GetAggregateRequest(aggregate_id=aggregate_id)

        async def attempt() -> event_service_pb2.GetAggregateResponse:
            response: event_service_pb2.GetAggregateResponse = await self._events.GetAggregate(
                request, timeout=self._attempt_timeout, metadata=self._call_metadata
            )
            return response

        response = await call_with_retries(self._retry, f"get {aggregate_id!r}", attempt)
        return AggregateState(
            aggregate_id=response.aggregate_id,
            aggregate_type=response.aggregate_type,
            version=response.version,
            state=unpack_as(response.state, state_type),
        )
