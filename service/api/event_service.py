"""``chronicle.v1.EventService``: reading aggregates and their events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
from google.protobuf import any_pb2

from chronicle.v1 import event_pb2
from chronicle.v1 import event_service_pb2 as pb
from chronicle.v1 import event_service_pb2_grpc as pb_grpc
from service.api.codec import TYPE_URL_PREFIX, check_id, check_stored_id, check_version, encode_event, micros_of
from service.api.subscribe import (
    decode_subscribe,
    encode_event_pages,
    encode_marker,
    encode_page,
    known_event_types,
    restrict_to_permitted,
)
from service.errors import InvalidInput
from service.observability.subscriptions import SubscriptionTracker
from service.plugins.registry import Registry
from service.principal import current_principal
from service.processing.freshness import wait_for_position
from service.processing.history import EventRange, History
from service.processing.sendable import check_sendable, sendable_event_bytes
from service.processing.state import AggregateLoader
from service.processing.subscriptions import Page, Subscriptions
from service.security.policy import Authorizer
from service.store.base import EventRecorder, LogReader


class EventService(pb_grpc.EventServiceServicer):
    def __init__(
        self,
        store: EventRecorder,
        loader: AggregateLoader,
        authorizer: Authorizer,
        subscriptions: Subscriptions,
        registry: Registry,
        tracker: SubscriptionTracker | None = None,
        *,
        page_bytes: int = 1024 * 1024,
        log: LogReader | None = None,
        primary_log: LogReader | None = None,
        read_wait: float = 5.0,
        max_message_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._store = store
        # A stored event larger than this is refused by name, not sent (processing/sendable.py).
        self._sendable_bytes = sendable_event_bytes(max_message_bytes)
        # For min_position: the log these reads come from, and the primary's
        # (the same one unless reads come from a standby).
        self._log = log
        self._primary_log = primary_log or log
        self._read_wait = read_wait
        self._loader = loader
        self._authorizer = authorizer
        self._subscriptions = subscriptions
        self._registry = registry
        self._tracker = tracker or SubscriptionTracker()
        self._history = History(store, loader)
        self._page_bytes = page_bytes

    async def _caught_up(self, min_position: int, aggregate_id: str) -> None:
        """Read your writes: hold the read until it includes ``min_position``.

        The read is checked after the wait (on a standby behind, the caller's
        own new aggregate does not exist yet), but a caller that may read no
        type at all is refused first: it would be refused anyway, and the
        wait's answers (POSITION_BEYOND_END names the log's head) would tell
        it how far the log it may not read has grown."""
        if not min_position or self._log is None or self._primary_log is None:
            return
        if self._authorizer.enforcing:
            principal = current_principal.get()
            known = [aggregate.name for aggregate in self._registry.aggregates]
            if not self._authorizer.may_read_any(principal, known):
                self._authorizer.check_read_aggregate(principal, aggregate_id, None, known)
        await wait_for_position(self._log, min_position, primary=self._primary_log, max_wait=self._read_wait)

    async def _check_read(self, aggregate_id: str) -> None:
        """PERMISSION_DENIED (READ_DENIED) unless the caller may read this
        aggregate's type; for one that does not exist, unless it may read
        every type (otherwise the answer would tell the two apart)."""
        if not self._authorizer.enforcing:
            return
        head = await self._store.head(aggregate_id)
        self._authorizer.check_read_aggregate(
            current_principal.get(),
            aggregate_id,
            head.aggregate_type if head is not None else None,
            (aggregate.name for aggregate in self._registry.aggregates),
        )

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SubscribeResponse]:
        wanted = decode_subscribe(request, self._registry)
        if self._authorizer.enforcing:
            wanted = restrict_to_permitted(wanted, self._registry, self._authorizer, current_principal.get())
        pages = request.pages
        # One message per event unless the client asked for pages: the
        # subscription then hands over one event at a time, and holds the
        # rest where it can let go of them if the client stops reading.
        stream = await self._subscriptions.open(replace(wanted, per_event=not pages))
        with self._tracker.tracking(wanted.after_position) as handle:
            async for item in stream:
                position = item.position
                if isinstance(item, Page):
                    for event in item.events:
                        check_sendable(event, self._sendable_bytes)
                if not isinstance(item, Page):
                    response = encode_marker(item)
                elif pages:
                    response = encode_page(item)
                else:
                    response = pb.SubscribeResponse(
                        event=encode_event(item.events[0]), completes_position=item.completes_position
                    )
                # Only the message is held while gRPC sends it (a client
                # that does not read keeps it there), not its events too.
                del item
                yield response
                self._tracker.moved(handle, position)

    def _event_range(self, request: pb.ReadAggregateRequest) -> tuple[str, EventRange]:
        aggregate_id = check_stored_id("aggregate_id", request.aggregate_id, reason="INVALID_AGGREGATE_ID")
        return aggregate_id, EventRange(
            start=check_version("from_version", request.from_version),
            backwards=request.backwards,
            limit=request.limit or None,
            origin=check_id("origin", request.origin, reason="INVALID_FILTER") if request.origin else None,
            # As Subscribe's: a name no plugin declares (a typo, a missing
            # package) would read as "no such events", not as a mistake.
            event_types=known_event_types("event_types", request.event_types, self._registry),
        )

    async def ReadAggregate(
        self, request: pb.ReadAggregateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[event_pb2.Event]:
        aggregate_id, wanted = self._event_range(request)
        await self._caught_up(request.min_position, aggregate_id)
        await self._check_read(aggregate_id)
        async for page in self._history.pages(aggregate_id, wanted):
            for event in page:
                check_sendable(event, self._sendable_bytes)
                yield encode_event(event)

    async def ReadAggregatePages(
        self, request: pb.ReadAggregateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[event_pb2.EventPage]:
        aggregate_id, wanted = self._event_range(request)
        await self._caught_up(request.min_position, aggregate_id)
        await self._check_read(aggregate_id)
        async for page in self._history.pages(aggregate_id, wanted):
            # The events before one too large to send are sent, then it is refused.
            sendable = next((i for i, e in enumerate(page) if e.stored_size() > self._sendable_bytes), len(page))
            for response in encode_event_pages(page[:sendable], self._page_bytes):
                yield response
            if sendable < len(page):
                check_sendable(page[sendable], self._sendable_bytes)

    async def GetAggregate(
        self, request: pb.GetAggregateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetAggregateResponse:
        aggregate_id = check_stored_id("aggregate_id", request.aggregate_id, reason="INVALID_AGGREGATE_ID")
        await self._caught_up(request.min_position, aggregate_id)
        await self._check_read(aggregate_id)
        at = request.WhichOneof("at")
        if at == "at_version":
            if request.at_version < 1:
                raise InvalidInput.for_field("at_version", "must be 1 or more", reason="INVALID_VERSION")
            check_version("at_version", request.at_version)
            aggregate = await self._history.state(aggregate_id, at_version=request.at_version)
        elif at == "at_time":
            micros = micros_of(request.at_time, "at_time")
            shown = request.at_time.ToJsonString()
            aggregate = await self._history.state_at_time(aggregate_id, micros, shown_as=shown)
        else:
            aggregate = await self._history.state(aggregate_id)
        return pb.GetAggregateResponse(
            aggregate_id=aggregate_id,
            aggregate_type=aggregate.type.name,
            version=aggregate.version,
            state=any_pb2.Any(
                type_url=TYPE_URL_PREFIX + aggregate.type.state_type_name,
                value=aggregate.state.SerializeToString(),
            ),
        )
