"""``AdminService.ListAggregates``: aggregates by id prefix and type, a page
at a time, with an opaque token bound to the listing (``page_tokens``).
What it answers is every event's envelope, stored in the clear with or
without encryption at rest: ids, types, versions, and whether each was
deleted, has a key and was forgotten."""

from __future__ import annotations

from chronicle.v1 import admin_service_pb2 as pb
from service.api.codec import check_id
from service.api.page_tokens import checked_page_size, fingerprint, make_token, read_token
from service.errors import InvalidInput
from service.store.base import EventRecorder
from service.store.records import AggregateSummary
from service.values import MAX_ID_LENGTH


async def list_page(events: EventRecorder, request: pb.ListAggregatesRequest) -> pb.ListAggregatesResponse:
    prefix = request.prefix
    # Control characters are let through: a store may hold such ids (imported before imports refused them).
    if len(prefix) > MAX_ID_LENGTH:
        raise InvalidInput.for_field("prefix", f"must be at most {MAX_ID_LENGTH} characters", reason="INVALID_FILTER")
    aggregate_type = (
        check_id("aggregate_type", request.aggregate_type, reason="INVALID_FILTER") if request.aggregate_type else None
    )
    size = checked_page_size(request.page_size)
    listing = fingerprint("aggregates", prefix, aggregate_type or "")
    after = ""
    if request.page_token:
        ended_at = read_token(request.page_token, listing, bound_to="the prefix and aggregate type").get("a")
        if not isinstance(ended_at, str):
            raise InvalidInput.for_field(
                "page_token", "is not a page token this server made", reason="INVALID_PAGE_TOKEN"
            )
        after = ended_at
    page = await events.list_aggregates(prefix, after=after, limit=size + 1, aggregate_type=aggregate_type)
    more = len(page) > size
    page = page[:size]
    return pb.ListAggregatesResponse(
        aggregates=[_listed(a) for a in page],
        next_page_token=make_token(listing, a=page[-1].aggregate_id) if more else "",
    )


def _listed(aggregate: AggregateSummary) -> pb.ListedAggregate:
    return pb.ListedAggregate(
        aggregate_id=aggregate.aggregate_id,
        aggregate_type=aggregate.aggregate_type,
        version=aggregate.version,
        deleted=aggregate.deleted,
        has_key=aggregate.keyed,
        forgotten=aggregate.forgotten,
    )
