"""Between ``SubscribeRequest`` / ``SubscribeResponse`` and the subscription
engine: validating the filter, encoding what the stream yields."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import replace

from chronicle.v1 import event_pb2
from chronicle.v1 import event_service_pb2 as pb
from service.api.codec import check_id, check_names, encode_event_into
from service.errors import FieldViolation, InvalidInput
from service.plugins.registry import Registry
from service.principal import Principal
from service.processing.subscriptions import CaughtUp, Checkpoint, Page, SubscriptionRequest
from service.security.policy import Authorizer
from service.store.records import TOMBSTONE_EVENT_TYPE, LogFilter, RecordedEvent
from service.values import canonical_uuid


def known_names(field: str, values: Iterable[str], known: frozenset[str], what: str) -> frozenset[str]:
    names = check_names(field, list(values), reason="INVALID_FILTER")
    unknown = sorted(set(names) - known)
    if unknown:
        # A typo would otherwise be a subscription that silently never matches.
        raise InvalidInput(
            f"no loaded plugin declares {what} {', '.join(unknown)}",
            reason="INVALID_FILTER",
            violations=tuple(FieldViolation(field, f"unknown {what} {name!r}") for name in unknown),
            metadata={"unknown": ",".join(unknown)},
        )
    return frozenset(names)


def known_event_types(field: str, values: Collection[str], registry: Registry) -> frozenset[str]:
    """``values`` as a filter of event types: each one a loaded plugin
    declares, one an upcaster reads (a stored name that no plugin declares
    any more), or the tombstone a deleted aggregate ends with; INVALID_FILTER
    otherwise."""
    if not values:
        return frozenset()  # no filter (most reads): nothing to look up
    declared = frozenset(spec.name for aggregate in registry.aggregates for spec in aggregate.events.values())
    return known_names(field, values, declared | registry.upcast_types | {TOMBSTONE_EVENT_TYPE}, "event type")


def decode_subscribe(request: pb.SubscribeRequest, registry: Registry) -> SubscriptionRequest:
    return SubscriptionRequest(
        after_position=request.after_position,
        from_end=request.from_end,
        log_filter=LogFilter(
            aggregate_types=known_names(
                "aggregate_types",
                request.aggregate_types,
                frozenset(a.name for a in registry.aggregates),
                "aggregate type",
            ),
            event_types=known_event_types("event_types", request.event_types, registry),
            aggregate_id=check_id("aggregate_id", request.aggregate_id, reason="INVALID_FILTER")
            if request.aggregate_id
            else None,
            origin=check_id("origin", request.origin, reason="INVALID_FILTER") if request.origin else None,
        ),
        after_event_id=_resume_event_id(request.after_event_id) if request.after_event_id else "",
    )


def _resume_event_id(value: str) -> str:
    """The id a subscriber resumes with, in the canonical form of a UUID
    (every event id is one): any form of it (upper case, no hyphens,
    braces) is taken, as group acks take it, and anything else is
    INVALID_EVENT_ID, so that a typo or a cut paste is said, not taken for
    a log that went back (LOG_REWOUND)."""
    check_id("after_event_id", value, reason="INVALID_EVENT_ID")
    canonical = canonical_uuid(value)
    if canonical is None:
        raise InvalidInput.for_field("after_event_id", "must be an event id (a UUID)", reason="INVALID_EVENT_ID")
    return canonical


def encode_marker(item: Checkpoint | CaughtUp) -> pb.SubscribeResponse:
    if isinstance(item, Checkpoint):
        return pb.SubscribeResponse(checkpoint=pb.Checkpoint(position=item.position, event_id=item.event_id))
    return pb.SubscribeResponse(caught_up=pb.CaughtUp(position=item.position, event_id=item.event_id))


def encode_page(page: Page) -> pb.SubscribeResponse:
    """The page as one message (for clients that asked for pages)."""
    response = pb.SubscribeResponse(completes_position=page.completes_position)
    add = response.page.events.add
    for event in page.events:
        encode_event_into(add(), event)
    return response


def encode_event_pages(events: list[RecordedEvent], max_bytes: int) -> list[event_pb2.EventPage]:
    """``events`` as EventPages, each ending with the event that brings the
    events' ``stored_size()`` to ``max_bytes`` (so one event larger than
    that is a page of its own)."""
    pages = []
    page = event_pb2.EventPage()
    add = page.events.add
    size = 0
    for event in events:
        encode_event_into(add(), event)
        size += event.stored_size()
        if size >= max_bytes:
            pages.append(page)
            page = event_pb2.EventPage()
            add = page.events.add
            size = 0
    if page.events:
        pages.append(page)
    return pages


def restrict_to_permitted(
    request: SubscriptionRequest, registry: Registry, authorizer: Authorizer, principal: Principal
) -> SubscriptionRequest:
    """The subscription narrowed to the aggregate types the caller may
    subscribe to, and for a tenant-scoped grant to its tenant's aggregates
    (the decisions are the ``Authorizer``'s). The narrowing is the store
    query's: the events of others are never read into the stream, and the
    position it reports still passes over them, so a resume after it
    neither misses nor repeats one."""
    wanted = request.log_filter
    permitted, prefix = authorizer.subscription_scope(
        principal, wanted.aggregate_types, (a.name for a in registry.aggregates), wanted.aggregate_id
    )
    if permitted == wanted.aggregate_types and prefix is None:
        return request
    return replace(request, log_filter=replace(wanted, aggregate_types=permitted, aggregate_id_prefix=prefix))
