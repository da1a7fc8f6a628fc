"""``chronicle.v1.SubscriptionGroupService``: subscription groups, their
consumers' streams, and their parked events (``service/groups.py``).

Creating and deleting groups, replaying and dismissing parked events take
the admin grant and are audited; consuming a group and listing its parked
events take the consume grant of the group's name and the subscribe grant
for every aggregate type the group reads (a group is shared: it cannot be
narrowed to what one caller may see, as Subscribe is; and a consumer's acks,
nacks and skips settle its events for every other consumer, so reading the
types is not enough). ListGroups shows a caller the groups it may consume,
an administrator all (their consumers' names and replica addresses are for
no one else), and an administrator lists the parked events of every group
(rows without payloads), its subscribe grant or not."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import duration_pb2

from chronicle.v1 import subscription_group_service_pb2 as pb
from chronicle.v1 import subscription_group_service_pb2_grpc as pb_grpc
from service.api.codec import MAX_VERSION, check_id, check_names, check_version, encode_event_into, timestamp
from service.api.page_tokens import fingerprint, make_token, read_token
from service.api.subscribe import known_names
from service.audit import AuditLog
from service.errors import ChronicleError, InvalidInput, PermissionDenied, ResourceNotFound, quoted
from service.groups import ConsumerSession, Delivery, NackAction, SubscriptionGroups, group_not_found
from service.plugins.registry import Registry
from service.principal import current_principal, tenant_of_prefix, tenant_prefix, tenant_problem
from service.security.policy import Authorizer
from service.store.base import LogReader
from service.store.grouping import (
    DEFAULT_UNANSWERED_TIMEOUTS,
    GroupConsumer,
    GroupParkedEvent,
    GroupSpec,
    GroupState,
)
from service.store.records import LogFilter
from service.values import canonical_uuid

log = logging.getLogger(__name__)

SERVICE = "chronicle.v1.SubscriptionGroupService"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_ATTEMPTS = 100
MAX_DURATION_MS = 3_600_000
MIN_ACK_TIMEOUT_MS = 10
MAX_SEGMENTS = 1024
MAX_IN_FLIGHT = 10_000
MAX_PARKED_PAGE = 1000
MAX_REASON = 1000
# The most parked events one confirmed dismissal takes (``dismiss_confirmed``).
MAX_CONFIRMED_DISMISSAL = 10_000


def _name(field: str, value: str, reason: str) -> str:
    if not _NAME.fullmatch(value):
        raise InvalidInput.for_field(
            field, "must be 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit", reason=reason
        )
    return value


def _parked_after(token: str, listing: str) -> tuple[int, str]:
    """Where ListParked's page ``token`` continues: after this parked event
    (a position and an event id: a split event's pieces share a position)."""
    fields = read_token(token, listing, bound_to="the group")
    position, event_id = fields.get("p"), fields.get("e")
    # A tampered token is input like any other (JSON's true is no int here).
    if type(position) is not int or not 0 <= position <= MAX_VERSION or not isinstance(event_id, str):
        raise InvalidInput.for_field("page_token", "is damaged", reason="INVALID_PAGE_TOKEN")
    return position, event_id


def group_name(field: str, value: str) -> str:
    return _name(field, value, "BAD_GROUP_NAME")


def _setting(field: str, description: str) -> InvalidInput:
    return InvalidInput.for_field(field, description, reason="BAD_GROUP_SETTING")


# What google.protobuf.Duration allows: about ±10,000 years, in seconds.
_MAX_DURATION_SECONDS = 315_576_000_000


def _millis(request: Any, field: str, default: int, *, minimum: int = 0) -> int:
    if not request.HasField(field):
        return default
    value: duration_pb2.Duration = getattr(request, field)
    # The Duration spec: nanos from -999,999,999 to 999,999,999, of the sign
    # of seconds when both are set (2 s is seconds=2, not nanos=2e9, which
    # was taken as 2 s; seconds=1 with nanos=-5e8 is no duration at all).
    if (
        abs(value.seconds) > _MAX_DURATION_SECONDS
        or abs(value.nanos) > 999_999_999
        or (value.seconds > 0 and value.nanos < 0)
        or (value.seconds < 0 and value.nanos > 0)
    ):
        raise _setting(
            field,
            "is not a valid google.protobuf.Duration: nanos must be from -999,999,999 to 999,999,999,"
            " with the sign of seconds",
        )
    if value.seconds < 0 or value.nanos < 0:
        raise _setting(field, "must not be negative")
    ms = value.seconds * 1000 + value.nanos // 1_000_000
    if ms < minimum or ms > MAX_DURATION_MS:
        raise _setting(field, f"must be from {minimum} ms to 1 hour")
    return ms


def _duration(ms: int) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromMilliseconds(ms)
    return duration


class SubscriptionGroupService(pb_grpc.SubscriptionGroupServiceServicer):
    def __init__(
        self,
        *,
        groups: SubscriptionGroups,
        log: LogReader,
        registry: Registry,
        authorizer: Authorizer,
        audit: AuditLog,
    ) -> None:
        self._groups = groups
        self._store = groups.store
        self._log = log
        self._registry = registry
        self._authorizer = authorizer
        self._audit = audit

    # -- checks ----------------------------------------------------------------

    def _known_aggregate_types(self) -> frozenset[str]:
        return frozenset(a.name for a in self._registry.aggregates)

    def _may_consume(self, spec: GroupSpec) -> bool:
        try:
            self._authorizer.check_consume_group(current_principal.get(), spec.name)
            self._check_consume(spec)
        except PermissionDenied:
            return False
        return self._authorizer.may_consume_group_of(
            current_principal.get(), spec.name, spec.log_filter.aggregate_id_prefix
        )

    def _group_tenant(self, asked: str) -> str:
        """The tenant of a group being created: the one asked for, else the
        creator's own. A creator with a tenant makes groups of no other."""
        own = self._authorizer.tenant_of(current_principal.get())
        if asked:
            problem = tenant_problem(asked)
            if problem:
                raise _setting("filter.tenant", problem)
            if own and asked != own:
                raise PermissionDenied(
                    f"a principal of tenant {quoted(own)} may not create a group of tenant {quoted(asked)}",
                    reason="SUBSCRIBE_DENIED",
                    metadata={"principal": current_principal.get().name, "tenant": asked},
                )
        return asked or own

    def _check_consume(self, spec: GroupSpec) -> None:
        """The subscribe grant for every aggregate type the group reads; for
        a group that names none, ``"*"``: it delivers every type the log
        holds, those of a retired plugin included (passed on as stored), so
        a grant of every declared type by name is not enough. A tenant's
        group may be consumed by that tenant's tenant-scoped grant too; a
        group of no tenant never by a tenant-scoped grant."""
        if not self._authorizer.enforcing:
            return
        principal = current_principal.get()
        prefix = spec.log_filter.aggregate_id_prefix
        if prefix is not None and self._authorizer.may_subscribe_in_tenant(
            principal, prefix, spec.log_filter.aggregate_types
        ):
            return
        asked = spec.log_filter.aggregate_types
        if asked:
            self._authorizer.subscribable(principal, asked, self._known_aggregate_types())  # raises, naming one
        elif not self._authorizer.may_subscribe_to_all(principal):
            who = principal.name or "an anonymous caller"
            raise PermissionDenied(
                f'{who} may not consume a group of every aggregate type: it takes the subscribe grant "*"',
                reason="SUBSCRIBE_DENIED",
                metadata={"principal": principal.name},
            )

    async def _consumable(self, field: str, name: str) -> GroupState:
        """Group ``name``, if the caller may consume it. A caller who may not
        subscribe to every aggregate type hears the same refusal for a group
        it may not consume as for one that does not exist; otherwise the
        refusals would tell it which group names exist (GROUP_NOT_FOUND) and
        which types a group reads (the one SUBSCRIBE_DENIED named), as
        ``check_read_aggregate`` keeps aggregates from being probed. The
        consume grant goes first: it is of the name alone, so its refusal
        (CONSUME_DENIED) says nothing of the group either."""
        self._authorizer.check_consume_group(current_principal.get(), group_name(field, name))
        state = await self._store.load_group(name)
        if state is not None and self._may_consume(state.spec):
            return state
        principal = current_principal.get()
        if state is None and (not self._authorizer.enforcing or self._authorizer.may_subscribe_to_all(principal)):
            raise group_not_found(name)  # it could have consumed any group: nothing to hide
        who = principal.name or "an anonymous caller"
        raise PermissionDenied(
            f"{who} may not consume group {quoted(name)}: it does not exist, or reads aggregate types {who} may not"
            " subscribe to",
            reason="SUBSCRIBE_DENIED",
            metadata={"principal": principal.name, "group": name},
        )

    async def _inspectable(self, field: str, name: str) -> GroupState:
        """Group ``name`` for ListParked. An administrator inspects every
        group ListGroups shows it (every group), whatever types it may
        subscribe to: a parked event's row is its id, position, aggregate
        id, attempts and the consumer's reason, never its payload, and the
        admin grant already reads aggregate ids in the audit log. Consuming,
        which delivers the payloads, still takes the subscribe grant. Anyone
        else: as ``_consumable``."""
        if self._authorizer.grant(current_principal.get()).admin:
            return await self._group(field, name)
        return await self._consumable(field, name)

    async def _group(self, field: str, name: str) -> GroupState:
        state = await self._store.load_group(group_name(field, name))
        if state is None:
            raise group_not_found(name)
        return state

    @contextlib.asynccontextmanager
    async def _admin(self, rpc: str, action: str, target: str) -> AsyncIterator[None]:
        """The admin grant, and the call audited (done or refused)."""
        principal = current_principal.get().name
        what = f"{SERVICE}/{rpc}"
        try:
            self._authorizer.check_admin(current_principal.get(), action)
            yield
        except ChronicleError as error:
            await self._audit.admin_action(what, principal=principal, aggregate_id=target, error=error)
            raise
        await self._audit.admin_action(what, principal=principal, aggregate_id=target)

    # -- RPCs -------------------------------------------------------------------

    async def CreateGroup(
        self, request: pb.CreateGroupRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateGroupResponse:
        async with self._admin("CreateGroup", "create subscription groups", "group:" + request.name[:100]):
            spec = await self._decode_spec(request)
            await self._store.create_group(spec)
        state = await self._group("name", spec.name)
        return pb.CreateGroupResponse(group=await self._info(state))

    async def _decode_spec(self, request: pb.CreateGroupRequest) -> GroupSpec:
        name = group_name("name", request.name)
        event_types = {spec.name for aggregate in self._registry.aggregates for spec in aggregate.events.values()}
        tenant = self._group_tenant(request.filter.tenant)
        log_filter = LogFilter(
            aggregate_id_prefix=tenant_prefix(tenant) if tenant else None,
            aggregate_types=known_names(
                "filter.aggregate_types",
                request.filter.aggregate_types,
                self._known_aggregate_types(),
                "aggregate type",
            ),
            event_types=known_names(
                "filter.event_types",
                request.filter.event_types,
                frozenset(event_types) | self._registry.upcast_types,
                "event type",
            ),
            origin=check_id("filter.origin", request.filter.origin, reason="INVALID_FILTER")
            if request.filter.origin
            else None,
        )
        attempts = request.max_delivery_attempts or 5
        if attempts > MAX_ATTEMPTS:
            raise _setting("max_delivery_attempts", f"must be at most {MAX_ATTEMPTS}")
        segments = request.segments or 16
        if segments > MAX_SEGMENTS or segments & (segments - 1):
            raise _setting("segments", f"must be a power of two from 1 to {MAX_SEGMENTS}")
        backoff = _millis(request, "retry_backoff", 1000)
        max_backoff = _millis(request, "max_retry_backoff", max(60_000, backoff))
        if max_backoff < backoff:
            raise _setting("max_retry_backoff", "must not be shorter than retry_backoff")
        ack_timeout = _millis(request, "ack_timeout", 30_000, minimum=MIN_ACK_TIMEOUT_MS)
        unanswered = _unanswered(request, DEFAULT_UNANSWERED_TIMEOUTS)
        head = await self._log.log_head()
        if request.from_end:
            start = head
        else:
            start = check_version("after_position", request.after_position, reason="POSITION_BEYOND_END")
            if start > head:
                raise InvalidInput(
                    f"position {start} is beyond the end of the log ({head})",
                    reason="POSITION_BEYOND_END",
                    metadata={"after_position": str(start), "log_head": str(head)},
                )
        spec = GroupSpec(
            name=name,
            log_filter=log_filter,
            start_position=start,
            segments=segments,
            max_attempts=attempts,
            retry_backoff_ms=backoff,
            max_retry_backoff_ms=max_backoff,
            ack_timeout_ms=ack_timeout,
            max_unanswered_timeouts=unanswered,
        )
        return spec

    async def UpdateGroup(
        self, request: pb.UpdateGroupRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UpdateGroupResponse:
        async with self._admin("UpdateGroup", "update subscription groups", "group:" + request.name[:100]):
            state = await self._group("name", request.name)
            spec = _updated(state.spec, request)
            if not await self._store.update_group(spec):
                raise group_not_found(spec.name)  # deleted (or made again) since it was read
        state = await self._group("name", spec.name)
        return pb.UpdateGroupResponse(group=await self._info(state))

    async def DeleteGroup(
        self, request: pb.DeleteGroupRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteGroupResponse:
        async with self._admin("DeleteGroup", "delete subscription groups", "group:" + request.name[:100]):
            name = group_name("name", request.name)
            if not await self._store.delete_group(name):
                raise group_not_found(name)
        return pb.DeleteGroupResponse()

    async def ListGroups(
        self, request: pb.ListGroupsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListGroupsResponse:
        states = await self._store.list_groups()
        head = await self._log.log_head()
        admin = self._authorizer.grant(current_principal.get()).admin
        return pb.ListGroupsResponse(groups=[_info(s, head) for s in states if admin or self._may_consume(s.spec)])

    async def _info(self, state: GroupState) -> pb.GroupInfo:
        return _info(state, await self._log.log_head())

    async def ListParked(
        self, request: pb.ListParkedRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListParkedResponse:
        if request.limit > MAX_PARKED_PAGE:
            raise InvalidInput.for_field("limit", f"must be at most {MAX_PARKED_PAGE}", reason="LIMIT_TOO_LARGE")
        # Bound like every position asked for: the stores hold positions as
        # signed 64-bit integers (SQLite answered INTERNAL to one beyond).
        after_position = check_version("after_position", request.after_position, reason="INVALID_POSITION")
        state = await self._inspectable("group", request.group)
        listing = fingerprint("group parked", state.spec.name)
        after = _parked_after(request.page_token, listing) if request.page_token else None
        limit = request.limit or 100
        # One more than the page: whether there is a next page is known, so
        # the last page (even a full one) has no token.
        found = await self._store.list_parked(
            state.spec.name, after_position=after_position, after=after, limit=limit + 1
        )
        page = found[:limit]
        last = page[-1] if len(found) > limit else None
        return pb.ListParkedResponse(
            parked=[_parked(p) for p in page],
            next_page_token=make_token(listing, p=last.position, e=last.event_id) if last is not None else "",
        )

    async def ReplayParked(
        self, request: pb.ReplayParkedRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReplayParkedResponse:
        async with self._admin("ReplayParked", "replay parked events", "group:" + request.group[:100]):
            event_ids = _event_ids(request.event_ids)
            state = await self._group("group", request.group)
            if event_ids:
                await self._check_parked(state.spec.name, event_ids)
            replaying = await self._store.replay_parked(state.spec.name, event_ids)
        return pb.ReplayParkedResponse(replaying=replaying)

    async def DismissParked(
        self, request: pb.DismissParkedRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DismissParkedResponse:
        async with self._admin("DismissParked", "dismiss parked events", "group:" + request.group[:100]):
            event_ids = _event_ids(request.event_ids)
            if not event_ids:
                # Not "all": deleting every parked event of a group, for good,
                # is no default an empty list should stand for.
                raise InvalidInput.for_field(
                    "event_ids", "must name at least one parked event to dismiss", reason="INVALID_EVENT_ID"
                )
            state = await self._group("group", request.group)
            missing = await self._store.dismiss_parked(state.spec.name, event_ids)
            if missing:
                raise _not_parked(state.spec.name, missing, "nothing dismissed")
            log.warning(
                "%d parked events of group %s dismissed by %r: %s",
                len(event_ids),
                state.spec.name,
                current_principal.get().name,
                ", ".join(event_ids[:10]) + (" …" if len(event_ids) > 10 else ""),
            )
        return pb.DismissParkedResponse(dismissed=len(event_ids))

    async def dismiss_confirmed(self, group: str, event_ids: Sequence[str]) -> tuple[int, int]:
        """DismissParked of up to ``MAX_CONFIRMED_DISMISSAL`` ids at once (the
        RPC takes 100), for the console's confirmed *Dismiss all*: in one
        transaction, so a failure midway dismisses none of them, where
        batches of 100 left the first ones dismissed. Not an RPC: the
        console calls it in process; the admin grant and the audit are
        DismissParked's (one entry). Ids no longer parked (a replay
        acknowledged since the confirmation) are left out and the rest
        dismissed, all or none again. (dismissed, gone)."""
        async with self._admin("DismissParked", "dismiss parked events", "group:" + group[:100]):
            if not 0 < len(event_ids) <= MAX_CONFIRMED_DISMISSAL:
                raise InvalidInput.for_field(
                    "event_ids", f"must name 1 to {MAX_CONFIRMED_DISMISSAL:,} parked events", reason="INVALID_EVENT_ID"
                )
            state = await self._group("group", group)
            wanted = list(dict.fromkeys(event_ids))
            gone = 0
            while wanted:  # each round leaves out at least one id: it ends
                missing = set(await self._store.dismiss_parked(state.spec.name, wanted))
                if not missing:
                    break
                gone += len(missing)
                wanted = [event_id for event_id in wanted if event_id not in missing]
            log.warning(
                "%d parked events of group %s dismissed by %r (all confirmed, %d gone meanwhile)",
                len(wanted),
                state.spec.name,
                current_principal.get().name,
                gone,
            )
        return len(wanted), gone

    async def _check_parked(self, group: str, event_ids: list[str]) -> None:
        """NOT_FOUND (PARKED_EVENT_NOT_FOUND), naming them, if any of
        ``event_ids`` is not among the group's parked events: a replay
        names events to deliver again, and one that is not parked (never
        was, or was acknowledged since, or a typo) would otherwise be
        passed over in silence (``replaying`` one short). None is replayed
        then: the caller sends the list again without them."""
        found = {parked.event_id for parked in await self._store.find_parked(group, event_ids)}
        missing = [event_id for event_id in event_ids if event_id not in found]
        if missing:
            raise _not_parked(group, missing, "nothing replayed")

    async def Consume(
        self, request_iterator: AsyncIterator[pb.ConsumeRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ConsumeResponse]:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("kind") != "start":
            raise _start_expected("the first request of Consume must be a start")
        start = first.start
        state = await self._consumable("start.group", start.group)
        consumer = _name("start.consumer", start.consumer, "BAD_CONSUMER_NAME")
        if start.max_in_flight > MAX_IN_FLIGHT:
            raise InvalidInput.for_field(
                "start.max_in_flight", f"must be at most {MAX_IN_FLIGHT}", reason="BAD_GROUP_SETTING"
            )
        session = await self._groups.open(state.spec, consumer=consumer, max_in_flight=start.max_in_flight or 100)
        listening = asyncio.ensure_future(_listen(requests, session))
        try:
            yield pb.ConsumeResponse(joined=pb.Joined(consumer=session.member_id, segments=state.spec.segments))
            while True:
                batch = await session.next_batch()
                if batch is None:
                    return
                session.writing()
                yield _deliveries(batch)
                session.written()
        finally:
            listening.cancel()
            self._groups.release(session)


def _event_ids(values: Iterable[str]) -> list[str]:
    """Event ids as a replay or a dismissal names them: at most 100, each a
    UUID (every event id is one: anything else, a typo or a cut paste, is a
    mistake to say, not "none of these is parked"), in canonical form, each
    once."""
    event_ids = check_names("event_ids", list(values), reason="INVALID_EVENT_ID")
    for index, event_id in enumerate(event_ids):
        canonical = canonical_uuid(event_id)
        if canonical is None:
            raise InvalidInput.for_field(
                f"event_ids[{index}]", "must be an event id (a UUID)", reason="INVALID_EVENT_ID"
            )
        event_ids[index] = canonical
    return list(dict.fromkeys(event_ids))


def _not_parked(group: str, missing: list[str], outcome: str) -> ResourceNotFound:
    shown = ", ".join(repr(event_id) for event_id in missing[:10])
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    return ResourceNotFound(
        f"not parked in group {group!r}: {shown}{more}; {outcome}",
        reason="PARKED_EVENT_NOT_FOUND",
        metadata={"group": group, "event_ids": ",".join(missing)[:1000]},
    )


def _answered_ids(values: Iterable[str]) -> list[str]:
    """The event ids of an ack or nack as they were delivered: any form of
    a UUID (upper case, braces, a urn:uuid: prefix, no hyphens) in the
    canonical one, as ReplayParked and DismissParked take them and as
    command ids are taken; an id that is no UUID as it came (the session
    refuses it, UNKNOWN_EVENT_ID, as one it never delivered)."""
    return [canonical_uuid(value) or value for value in values]


async def _listen(requests: AsyncIterator[pb.ConsumeRequest], session: ConsumerSession) -> None:
    """The consumer's acks and nacks, into its session; the end of its
    side of the stream ends the session."""
    try:
        async for request in requests:
            kind = request.WhichOneof("kind")
            if kind == "ack":
                session.ack(_answered_ids(request.ack.event_ids))
            elif kind == "nack":
                nack = request.nack
                session.nack(_answered_ids(nack.event_ids), _nack_reason(nack.reason), _nack_action(nack.action))
            elif kind == "start":
                raise _start_expected("a Consume stream has one start, its first request")
            else:
                # Empty (or of a kind this server does not know: a newer client's).
                raise InvalidInput(
                    "after its start, each request of a Consume stream carries an ack or a nack; this one carries"
                    " neither",
                    reason="ACK_OR_NACK_EXPECTED",
                )
    except asyncio.CancelledError:
        raise
    except ChronicleError as error:
        session.fail(error)
        return
    except Exception as error:  # the call itself broke (the client went away)
        session.fail(error)
        return
    session.end()


def _updated(spec: GroupSpec, request: pb.UpdateGroupRequest) -> GroupSpec:
    """``spec`` with the settings ``request`` sets, each checked as
    CreateGroup checks it."""
    fields = (
        "max_delivery_attempts",
        "retry_backoff",
        "max_retry_backoff",
        "ack_timeout",
        "max_unanswered_timeouts",
        "segments",
    )
    if not any(request.HasField(field) for field in fields):
        raise InvalidInput(
            f"an update names at least one setting to change: {', '.join(fields[:5])}", reason="NO_SETTING_GIVEN"
        )
    if request.HasField("segments") and request.segments != spec.segments:
        raise InvalidInput.for_field(
            "segments",
            f"a group's segments are fixed for its life ({spec.segments}): each segment's checkpoint is of the"
            " aggregates the count gives it; create another group to change it",
            reason="SETTING_NOT_UPDATABLE",
        )
    attempts = request.max_delivery_attempts if request.HasField("max_delivery_attempts") else spec.max_attempts
    if not 1 <= attempts <= MAX_ATTEMPTS:
        raise _setting("max_delivery_attempts", f"must be from 1 to {MAX_ATTEMPTS}")
    backoff = _millis(request, "retry_backoff", spec.retry_backoff_ms)
    max_backoff = _millis(request, "max_retry_backoff", spec.max_retry_backoff_ms)
    if max_backoff < backoff:
        raise _setting("max_retry_backoff", "must not be shorter than retry_backoff")
    ack_timeout = _millis(request, "ack_timeout", spec.ack_timeout_ms, minimum=MIN_ACK_TIMEOUT_MS)
    return dataclasses.replace(
        spec,
        max_attempts=attempts,
        retry_backoff_ms=backoff,
        max_retry_backoff_ms=max_backoff,
        ack_timeout_ms=ack_timeout,
        max_unanswered_timeouts=_unanswered(request, spec.max_unanswered_timeouts),
    )


def _unanswered(request: pb.CreateGroupRequest | pb.UpdateGroupRequest, default: int) -> int:
    """The request's ``max_unanswered_timeouts`` (``default`` if unset): 0 to
    ``MAX_ATTEMPTS``; 0 turns the cut off."""
    if not request.HasField("max_unanswered_timeouts"):
        return default
    if request.max_unanswered_timeouts > MAX_ATTEMPTS:
        raise _setting("max_unanswered_timeouts", f"must be from 0 (never) to {MAX_ATTEMPTS}")
    return request.max_unanswered_timeouts


def _nack_reason(reason: str) -> str:
    """What a parked event keeps of the nack that parked it. Not NUL: the
    other stores kept one, PostgreSQL ended the stream (UNSTORABLE_VALUE)."""
    if "\x00" in reason:
        raise InvalidInput.for_field("nack.reason", "must not contain NUL", reason="BAD_NACK_REASON")
    return reason[:MAX_REASON] or "NACKED"


_NACK_ACTIONS: dict[int, NackAction] = {
    pb.NACK_ACTION_UNSPECIFIED: NackAction.RETRY,
    pb.NACK_ACTION_RETRY: NackAction.RETRY,
    pb.NACK_ACTION_PARK: NackAction.PARK,
    pb.NACK_ACTION_SKIP: NackAction.SKIP,
}


def _nack_action(action: int) -> NackAction:
    """A value this server does not know (a newer client's) is refused
    rather than taken as a retry: the consumer meant something else."""
    known = _NACK_ACTIONS.get(action)
    if known is None:
        raise InvalidInput.for_field(
            "nack.action", f"{action} is no NackAction this server knows", reason="BAD_NACK_ACTION"
        )
    return known


def _start_expected(message: str) -> InvalidInput:
    return InvalidInput.for_field("start", message, reason="START_EXPECTED")


def _deliveries(batch: Iterable[Delivery]) -> pb.ConsumeResponse:
    response = pb.ConsumeResponse()
    add = response.deliveries.deliveries.add
    for delivery in batch:
        item = add()
        encode_event_into(item.event, delivery.event)
        item.attempt = delivery.attempt
        item.replayed = delivery.segment is None
    return response


def _info(state: GroupState, head: int) -> pb.GroupInfo:
    spec = state.spec
    position = state.position
    return pb.GroupInfo(
        name=spec.name,
        filter=pb.GroupFilter(
            aggregate_types=sorted(spec.log_filter.aggregate_types),
            event_types=sorted(spec.log_filter.event_types),
            origin=spec.log_filter.origin or "",
            tenant=tenant_of_prefix(spec.log_filter.aggregate_id_prefix),
        ),
        max_delivery_attempts=spec.max_attempts,
        retry_backoff=_duration(spec.retry_backoff_ms),
        max_retry_backoff=_duration(spec.max_retry_backoff_ms),
        ack_timeout=_duration(spec.ack_timeout_ms),
        max_unanswered_timeouts=spec.max_unanswered_timeouts,
        segments=spec.segments,
        position=position,
        log_head=head,
        lag=max(0, head - position),
        acknowledged=state.acknowledged,
        parked=state.parked,
        skipped=state.skipped,
        dismissed=state.dismissed,
        consumers=[consumer_info(c) for c in state.consumers],
    )


def consumer_info(consumer: GroupConsumer) -> pb.GroupConsumer:
    message = pb.GroupConsumer(consumer=consumer.consumer, segments=list(consumer.segments))
    report = consumer.report
    if report is not None:
        message.replica_address = report.replica_address
        message.replica_id = report.replica_id
        message.in_flight = report.in_flight
        message.since_last_heard.FromMilliseconds(round(report.heard_ago * 1000))
        if report.answered_ago is not None:
            message.since_last_answer.FromMilliseconds(round(report.answered_ago * 1000))
        if report.connected_ago is not None:
            message.since_connected.FromMilliseconds(round(report.connected_ago * 1000))
    return message


def _parked(parked: GroupParkedEvent) -> pb.GroupParkedEvent:
    return pb.GroupParkedEvent(
        event_id=parked.event_id,
        position=parked.position,
        aggregate_id=parked.aggregate_id,
        attempts=parked.attempts,
        reason=parked.reason,
        replaying=parked.replaying,
        event_type=parked.event_type,
        parked_at=timestamp(parked.parked_at_us) if parked.parked_at_us else None,
    )
