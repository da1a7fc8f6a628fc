"""Between ``SubscribeRequest`` / ``SubscribeResponse`` and the subscription
engine: validating the filter, encoding what the stream yields."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from chronicle.v1 import event_service_pb2 as pb
from service.api.codec import check_id, check_names, encode_event
from service.errors import FieldViolation, InvalidInput
from service.plugins.registry import Registry
from service.principal import Principal
from service.processing.subscriptions import CaughtUp, Checkpoint, SubscriptionItem, SubscriptionRequest
from service.security.policy import Authorizer
from service.store.records import LogFilter


def _names(field: str, values: Iterable[str], known: frozenset[str], what: str) -> frozenset[str]:
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


def decode_subscribe(request: pb.SubscribeRequest, registry: Registry) -> SubscriptionRequest:
    event_types = {spec.name for aggregate in registry.aggregates for spec in aggregate.events.values()}
    return SubscriptionRequest(
        after_position=request.after_position,
        from_end=request.from_end,
        log_filter=LogFilter(
            aggregate_types=_names(
                "aggregate_types",
                request.aggregate_types,
                frozenset(a.name for a in registry.aggregates),
                "aggregate type",
            ),
            event_types=_names(
                "event_types", request.event_types, frozenset(event_types) | registry.upcast_types, "event type"
            ),
            aggregate_id=check_id("aggregate_id", request.aggregate_id, reason="INVALID_FILTER")
            if request.aggregate_id
            else None,
            origin=check_id("origin", request.origin, reason="INVALID_FILTER") if request.origin else None,
        ),
    )


def encode_item(item: SubscriptionItem) -> pb.SubscribeResponse:
    if isinstance(item, Checkpoint):
        return pb.SubscribeResponse(checkpoint=pb.Checkpoint(position=item.position))
    if isinstance(item, CaughtUp):
        return pb.SubscribeResponse(caught_up=pb.CaughtUp(position=item.position))
    return pb.SubscribeResponse(event=encode_event(item))


def restrict_to_permitted(
    request: SubscriptionRequest, registry: Registry, authorizer: Authorizer, principal: Principal
) -> SubscriptionRequest:
    """The subscription narrowed to the aggregate types the caller may
    subscribe to (the decision is the ``Authorizer``'s)."""
    asked = request.log_filter.aggregate_types
    permitted = authorizer.subscribable(principal, asked, (a.name for a in registry.aggregates))
    if permitted == asked:
        return request
    return replace(request, log_filter=replace(request.log_filter, aggregate_types=permitted))
