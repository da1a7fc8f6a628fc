"""Subscription groups from the client's side: consuming a group (an async
iterator of deliveries to ack or nack) and administering groups.

    async with ChronicleClient.connect(address) as client:
        await client.groups.create("billing", aggregate_types=["Account"], max_delivery_attempts=3)
        async with client.consume("billing", consumer="worker-1") as deliveries:
            async for delivery in deliveries:
                handle(delivery.event)
                await delivery.ack()          # or: nack("why"), park("poison"), skip()

The server keeps the group's position: a consumer that stops (or dies) has
its unacknowledged events delivered to the group's other consumers, and one
that connects again goes on where the group stands. Each consumer gets all
of one aggregate's events, in order, one at a time: ack (or nack) an event
before its aggregate's next one comes.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Literal

import grpc
from google.protobuf import duration_pb2

from chronicle.v1 import subscription_group_service_pb2 as pb
from chronicle.v1 import subscription_group_service_pb2_grpc as pb_grpc
from service.client.call_deadline import CallDeadline
from service.client.errors import RemoteError, remote_error, retryable, status_lost
from service.client.handshake import HandshakeWatch
from service.client.results import Event
from service.client.retry import DEFAULT_RETRY, RetryPolicy, call_with_retries, log_retry, server_delay
from service.client.unary import UnaryCalls

log = logging.getLogger(__name__)

# The server ended the stream of a consumer that took no deliveries in and
# answered nothing for the group's ack timeout (ABORTED): consumed again.
CONSUMER_STALLED = "CONSUMER_STALLED"
CONSUMER_UNRESPONSIVE = "CONSUMER_UNRESPONSIVE"

GroupInfo = pb.GroupInfo

# What a nack asks for: see Delivery.nack.
NackAction = Literal["retry", "park", "skip"]
_NACK_ACTIONS: dict[str, pb.NackAction] = {
    "retry": pb.NACK_ACTION_RETRY,
    "park": pb.NACK_ACTION_PARK,
    "skip": pb.NACK_ACTION_SKIP,
}
GroupParkedEvent = pb.GroupParkedEvent


class Delivery:
    """One delivery of an event from a group: ``ack`` or ``nack`` it. The
    answer goes on the stream that delivered the event; once that stream
    has broken (a server restarting, a connection's age) it is dropped: the
    server gave the event's segment up with the stream, and delivers the
    event again, to this consumer or another."""

    __slots__ = ("_consumer", "_stream", "attempt", "event", "replayed")

    def __init__(self, consumer: GroupConsumer, message: pb.Delivery, stream: Any) -> None:
        self._consumer = consumer
        self._stream = stream  # the call that delivered it
        self.event = Event(message.event)
        self.attempt = message.attempt
        self.replayed = message.replayed

    async def ack(self) -> None:
        """Processed: the group will not deliver it again (barring a
        consumer that dies, or a stream that breaks, before the ack reaches
        the server)."""
        await self._consumer._ack_on(self._stream, [self.event.event_id])

    async def nack(self, reason: str = "", *, action: NackAction = "retry") -> None:
        """Not processed. ``"retry"``: deliver it again after the group's
        backoff, or park it after its maximum attempts; ``"park"``: park it
        now (``park``); ``"skip"``: settle it unprocessed (``skip``)."""
        await self._consumer._nack_on(self._stream, [self.event.event_id], reason, action)

    async def park(self, reason: str = "") -> None:
        """Poison: park it now with ``reason``, whatever attempts are left
        (ReplayParked delivers it again)."""
        await self.nack(reason, action="park")

    async def skip(self) -> None:
        """Settle it unprocessed: never delivered again, not parked, counted
        as the group's ``skipped``, not as acknowledged."""
        await self.nack(action="skip")

    def __repr__(self) -> str:
        return f"Delivery({self.event!r}, attempt={self.attempt}, replayed={self.replayed})"


class GroupConsumer:
    """One consumer's stream of a group (``ChronicleClient.consume``). Use it
    in ``async with`` (which ends the stream, giving this consumer's
    segments to the others at once) and iterate it for ``Delivery``\\ s. A
    stream broken by what a subscription is reopened after (UNAVAILABLE or
    CANCELLED: a server stopping; RESOURCE_EXHAUSTED with a ``RetryInfo``:
    a server at its ``--max-subscriptions``, TOO_MANY_SUBSCRIPTIONS;
    ABORTED, CONSUMER_STALLED among them, logged as a warning: the server
    cut this consumer for taking no deliveries in and answering nothing
    for the group's ack timeout, a handler holding the loop up;
    DEADLINE_EXCEEDED: ``errors.retryable``), or whose status
    grpc.aio lost (``errors.status_lost``), is opened again, without a
    bound: after ``reconnect_delay`` seconds, doubled for each stream in a
    row that broke before it joined, up to ``retry.max_backoff`` (2 s by
    default), never less than the server's ``RetryInfo``; so is one a stale
    token ended, when ``retry`` refreshes credentials (the server ends a
    stream at its JWT's exp), up to its ``max_attempts`` times in a row
    without joining (``retry.STALE_TOKEN_ATTEMPTS``, 5, when it has none).
    Other errors are raised as ``RemoteError``. A ``Delivery`` is answered
    on the stream that delivered it: an ack or nack made once that stream
    broke is dropped (the server gave the event's segment up with the
    stream and delivers the event again, to this consumer or another), so
    handlers that answer in their own tasks, after a reconnect, are safe.
    Each iteration (``aiter``) is one stream, open as long as its iterator:
    keep iterating one, rather than starting a loop again after a ``break``
    (which joins the group anew)."""

    def __init__(
        self,
        open_call: Callable[[], Any],
        *,
        group: str,
        consumer: str,
        max_in_flight: int = 100,
        reconnect_delay: float = 0.5,
        close_timeout: float = 5.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._open_call = open_call
        self._retry = retry
        self._close_timeout = close_timeout
        self.group = group
        self.consumer = consumer
        self._max_in_flight = max_in_flight
        self._reconnect_delay = reconnect_delay
        self._call: Any = None
        self._writing = asyncio.Lock()
        self._acks: list[str] = []
        self._acks_call: Any = None  # the stream that delivered the events of ``_acks``
        self._flushing: asyncio.Future[None] | None = None
        self.joined = asyncio.Event()
        self.member = ""  # the name the server gave this stream in the group
        self._closed = False
        policy = retry or DEFAULT_RETRY
        self._handshakes = HandshakeWatch(
            f"group {group}",
            policy.retry_for,
            probe=policy.probe_tls,
            probe_certificate=policy.probe_client_certificate,
        )

    async def __aenter__(self) -> GroupConsumer:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """End the stream: the server gives this consumer's segments (and
        its unacknowledged events) to the group's other consumers."""
        if self._flushing is not None:
            with contextlib.suppress(Exception):
                await self._flushing  # the acks made so far go out first
        self._closed = True
        call, self._call = self._call, None
        if call is not None:
            await self._leave(call)

    async def _leave(self, call: Any) -> None:
        """End ``call`` as a consumer that leaves: after the acks made so far
        went out, the client's half ends; the server reads every ack sent
        before that, then ends the stream: wait for that (briefly), so that
        no ack is cut off by the cancel."""
        if self._flushing is not None:
            with contextlib.suppress(Exception):
                await self._flushing
        with contextlib.suppress(Exception):
            await call.done_writing()
            async with asyncio.timeout(self._close_timeout):
                await call.code()
        call.cancel()

    def __aiter__(self) -> AsyncGenerator[Delivery, None]:
        return self._deliveries()

    async def ack(self, event_ids: Sequence[str]) -> None:
        """Ack events that the stream open now delivered (``Delivery.ack``
        acks on the stream that delivered its event, which may have broken
        since: prefer it)."""
        await self._ack_on(self._call, event_ids)

    async def nack(self, event_ids: Sequence[str], reason: str = "", *, action: NackAction = "retry") -> None:
        """Nack events that the stream open now delivered (prefer
        ``Delivery.nack``, as for ``ack``)."""
        await self._nack_on(self._call, event_ids, reason, action)

    async def _ack_on(self, call: Any, event_ids: Sequence[str]) -> None:
        """Queue acks of events that ``call`` delivered: the ones made while
        a message is being written go out together in the next one (one
        message per ack would cost more than the event itself). Dropped if
        ``call`` is no longer the stream open now: the server knows only
        the events a stream delivered (another's ids fail the stream,
        UNKNOWN_EVENT_ID), and a broken stream's events are delivered
        again anyway, to this consumer or, when its segment moved on, to
        another."""
        if call is None or call is not self._call:
            return
        if self._acks_call is not call:
            self._acks, self._acks_call = [], call
        self._acks.extend(event_ids)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush_acks())

    async def _flush_acks(self) -> None:
        while self._acks:
            batch, call, self._acks = self._acks, self._acks_call, []
            await self._write(call, pb.ConsumeRequest(ack=pb.Ack(event_ids=batch)))

    async def _nack_on(self, call: Any, event_ids: Sequence[str], reason: str, action: NackAction) -> None:
        nack = pb.Nack(event_ids=event_ids, reason=reason, action=_NACK_ACTIONS[action])
        await self._write(call, pb.ConsumeRequest(nack=nack))

    async def _write(self, call: Any, request: pb.ConsumeRequest) -> None:
        """Write ``request`` on ``call``, if it is still the stream open now
        (see ``_ack_on``)."""
        if call is None or call is not self._call:
            return  # the stream broke: its events go to another consumer (or to this one again)
        async with self._writing:
            if call is not self._call:
                return  # it broke while an earlier write went out
            # A broken stream: the reading side reports why it ended.
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                try:
                    await call.write(request)
                except asyncio.CancelledError:
                    # The call was cancelled under this write (its iterator
                    # was closed, ending the stream), not this task: the
                    # acks go with the stream, as a broken one's do. (grpc.aio
                    # raises CancelledError for a locally cancelled call whose
                    # status may say INTERNAL: ask whether it ended, not how.)
                    task = asyncio.current_task()
                    if call.done() and not (task is not None and task.cancelling()):
                        return
                    raise

    async def _deliveries(self) -> AsyncGenerator[Delivery, None]:
        start = pb.ConsumeRequest(
            start=pb.ConsumeStart(group=self.group, consumer=self.consumer, max_in_flight=self._max_in_flight)
        )
        stale = 0  # streams in a row a stale token ended before they joined
        broken = 0  # streams in a row that broke before they joined
        leaving = False
        while not self._closed:
            call = self._call = self._open_call()
            try:
                await call.write(start)
                while True:
                    message = await call.read()
                    if message is grpc.aio.EOF:
                        return
                    kind = message.WhichOneof("kind")
                    if kind == "joined":
                        self.member = message.joined.consumer
                        self.joined.set()
                        self._handshakes.received()
                        stale = broken = 0
                        continue
                    for item in message.deliveries.deliveries:
                        yield Delivery(self, item, call)
            except asyncio.CancelledError:
                if self._closed and call.cancelled():
                    return  # closed by ``close``, from another task
                raise
            except GeneratorExit:
                # The caller left its loop (a ``break``; the generator is
                # closed when it is collected, which may come before or after
                # ``close``): the stream ends as a consumer's that leaves,
                # the acks made so far sent first, not cancelled under them.
                leaving = True
                if self._call is call:
                    await self._leave(call)
                    if self._call is call:
                        self._call = None
                raise
            except grpc.aio.AioRpcError as failed:
                if self._closed:
                    return
                error = remote_error(failed)
                refused = await self._handshakes.failed(error)  # warns of a TLS failure; one that lasts is raised
                if refused is not None:
                    raise refused from failed
                # Opened again after what a subscription is reopened after
                # (``errors.retryable``): a server stopping (UNAVAILABLE), a
                # call that reached a server as it stopped, which gRPC
                # cancels before the server's code runs (CANCELLED; the
                # consumer's own cancellation is asyncio's CancelledError),
                # a full server (RESOURCE_EXHAUSTED with a RetryInfo:
                # TOO_MANY_SUBSCRIPTIONS), ABORTED, DEADLINE_EXCEEDED. A
                # status grpc.aio lost (an ack written as the server ended
                # the stream) says nothing of why it ended: the next stream
                # finds out.
                if not retryable(error) and not status_lost(failed):
                    if (
                        failed.code() != grpc.StatusCode.UNAUTHENTICATED
                        or self._retry is None
                        or self._retry.delay(stale + 1, error) is None
                    ):
                        raise error from failed
                    stale += 1  # a fresh token may cure it: the next stream asks for one
                broken += 1
                wait = self._reconnect_wait(broken, error)
                if error.reason in (CONSUMER_STALLED, CONSUMER_UNRESPONSIVE):
                    # Not the network's doing: this consumer kept a message
                    # unread, and answered nothing, for the group's ack
                    # timeout (a handler that held up the loop over it).
                    log.warning(
                        "group %s: %s; consuming again in %.3fs (iterate the deliveries without holding up"
                        " the loop, ack sooner, or give the group a longer ack_timeout)",
                        self.group,
                        error,
                        wait,
                    )
                else:
                    log_retry(
                        broken,
                        "group %s: stream broken (%s, retry %d); consuming again in %.3fs",
                        self.group,
                        failed.details(),
                        broken,
                        wait,
                    )
            finally:
                self.joined.clear()
                if not leaving and self._acks_call is call:
                    self._acks.clear()  # the events of a broken stream go out again anyway
                if self._call is call:
                    self._call = None
                    call.cancel()
            await asyncio.sleep(wait)

    def _reconnect_wait(self, broken: int, error: RemoteError) -> float:
        """How long to wait before opening the stream again after ``broken``
        streams in a row broke without joining: ``reconnect_delay``, doubled
        each time, up to the retry policy's ``max_backoff`` (or
        ``reconnect_delay`` if longer), and never less than the server's
        ``RetryInfo`` delay (``server_delay``: none when it is going)."""
        most = max(self._reconnect_delay, self._retry.max_backoff if self._retry is not None else 2.0)
        return max(min(most, self._reconnect_delay * 2.0 ** min(broken - 1, 32)), server_delay(error))


def _duration(value: timedelta | float | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    duration = duration_pb2.Duration()
    duration.FromTimedelta(value if isinstance(value, timedelta) else timedelta(seconds=value))
    return duration


class Groups(UnaryCalls[pb_grpc.SubscriptionGroupServiceStub]):
    """Administering subscription groups (``ChronicleClient.groups``).
    Creating, deleting and replaying take the admin grant."""

    # Creating and deleting are not idempotent: when an attempt's answer
    # was lost after the server acted, the retry answers AlreadyExists
    # (GROUP_EXISTS) or NotFound (GROUP_NOT_FOUND), which says the group is
    # as asked.

    async def create(
        self,
        name: str,
        *,
        aggregate_types: Sequence[str] = (),
        event_types: Sequence[str] = (),
        origin: str = "",
        after_position: int = 0,
        from_end: bool = False,
        max_delivery_attempts: int = 0,
        retry_backoff: timedelta | float | None = None,
        max_retry_backoff: timedelta | float | None = None,
        ack_timeout: timedelta | float | None = None,
        segments: int = 0,
        max_unanswered_timeouts: int | None = None,
        tenant: str = "",
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> GroupInfo:
        """Create group ``name`` (durations as ``timedelta`` or seconds).
        A count of 0 and a duration of None take the server's defaults; a
        duration of 0 is sent as 0 (a ``retry_backoff`` of 0 retries at
        once; an ``ack_timeout`` under 10 ms is BAD_GROUP_SETTING).
        ``max_unanswered_timeouts``: None the server's default (3), 0 never
        cut a consumer that answers nothing. ``tenant``: the group is that
        tenant's, delivering its events alone to its own callers ("": the
        creator's tenant, if it has one; docs/security.md#tenants).
        ``AlreadyExists`` (GROUP_EXISTS) if it exists."""
        request = pb.CreateGroupRequest(
            name=name,
            filter=pb.GroupFilter(
                aggregate_types=aggregate_types, event_types=event_types, origin=origin, tenant=tenant
            ),
            after_position=after_position,
            from_end=from_end,
            max_delivery_attempts=max_delivery_attempts,
            retry_backoff=_duration(retry_backoff),
            max_retry_backoff=_duration(max_retry_backoff),
            ack_timeout=_duration(ack_timeout),
            segments=segments,
            max_unanswered_timeouts=max_unanswered_timeouts,
        )
        response: pb.CreateGroupResponse = await self._call(
            f"create group {name}", self._stub.CreateGroup, request, timeout
        )
        return response.group

    async def update(
        self,
        name: str,
        *,
        max_delivery_attempts: int | None = None,
        retry_backoff: timedelta | float | None = None,
        max_retry_backoff: timedelta | float | None = None,
        ack_timeout: timedelta | float | None = None,
        max_unanswered_timeouts: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> GroupInfo:
        """Change group ``name``'s settings while it is consumed, keeping
        its position and parked events; each one left None stays. Its
        consumers' sessions take them at their next look at the group.
        ``NotFound`` (GROUP_NOT_FOUND) if there is none."""
        request = pb.UpdateGroupRequest(
            name=name,
            max_delivery_attempts=max_delivery_attempts,
            retry_backoff=_duration(retry_backoff),
            max_retry_backoff=_duration(max_retry_backoff),
            ack_timeout=_duration(ack_timeout),
            max_unanswered_timeouts=max_unanswered_timeouts,
        )
        response: pb.UpdateGroupResponse = await self._call(
            f"update group {name}", self._stub.UpdateGroup, request, timeout
        )
        return response.group

    async def delete(
        self,
        name: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> None:
        """Delete group ``name``; ``NotFound`` (GROUP_NOT_FOUND) if there is none."""
        await self._call(f"delete group {name}", self._stub.DeleteGroup, pb.DeleteGroupRequest(name=name), timeout)

    async def list(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> builtins.list[GroupInfo]:
        """Every group this caller may consume, with position, lag, consumers
        and its counts (acknowledged, parked, skipped, dismissed). Each
        consumer (``GroupConsumer`` of the protocol) carries what its
        session last reported: ``replica_address`` and
        ``replica_id`` of the replica it is connected to, ``in_flight``,
        ``since_last_answer``, ``since_last_heard`` and ``since_connected``
        (how long ago it joined) (Durations; unset before its first
        report, or before its first ack or nack; ``since_connected`` from
        a server of an older version too). A
        ``since_last_heard`` longer than two heartbeats (a third of the
        lease time each) tells a consumer whose replica stopped, still
        holding its segments until its lease lapses."""
        response: pb.ListGroupsResponse = await self._call(
            "list groups", self._stub.ListGroups, pb.ListGroupsRequest(), timeout
        )
        return list(response.groups)

    async def get(
        self,
        name: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> GroupInfo:
        """One group, as ``list`` shows it; ``LookupError`` if not listed."""
        for group in await self.list(timeout=timeout):
            if group.name == name:
                return group
        raise LookupError(f"no subscription group {name!r}")

    async def parked(
        self,
        group: str,
        *,
        after_position: int = 0,
        limit: int | None = None,
        page_size: int = 100,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> builtins.list[GroupParkedEvent]:
        """The group's parked events after ``after_position``, by position
        (event id within one): all of them, or the first ``limit``, read
        ``page_size`` at a time (``ListParked``'s ``limit``, up to 1,000),
        each page retried as a unary call is. Pages follow the server's
        ``next_page_token``: paging by position would pass over the rest of
        a split event's pieces, which share its position. A server from
        before page tokens sends none: a full page is then followed by
        position, and a shorter one is the last. ``timeout``: seconds for
        the whole listing, its pages and their retries included."""
        deadline = CallDeadline(timeout, self._timeout)
        return await deadline.run(
            f"list parked events of {group}", self._all_parked(group, after_position, limit, page_size, deadline)
        )

    async def _all_parked(
        self, group: str, after_position: int, limit: int | None, page_size: int, deadline: CallDeadline
    ) -> builtins.list[GroupParkedEvent]:
        parked: builtins.list[GroupParkedEvent] = []
        token = ""
        while limit is None or len(parked) < limit:
            size = page_size if limit is None else min(page_size, limit - len(parked))
            request = pb.ListParkedRequest(group=group, after_position=after_position, limit=size, page_token=token)
            page = await self._parked_page(group, request, deadline)
            parked.extend(page.parked)
            token = page.next_page_token
            if not token:
                if not page.parked or len(page.parked) < (size or 100):
                    break
                after_position = page.parked[-1].position  # a server from before page tokens
        return parked

    async def _parked_page(
        self, group: str, request: pb.ListParkedRequest, deadline: CallDeadline
    ) -> pb.ListParkedResponse:
        async def attempt() -> pb.ListParkedResponse:
            response: pb.ListParkedResponse = await self._stub.ListParked(
                request, timeout=deadline.attempt_timeout(), metadata=self._metadata()
            )
            return response

        return await call_with_retries(self._retry, f"list parked events of {group}", attempt)

    async def replay(
        self,
        group: str,
        event_ids: Sequence[str] = (),
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> int:
        """Deliver parked events again (none named: all the group's); how
        many. ``NotFound`` (PARKED_EVENT_NOT_FOUND, the ids in its metadata's
        ``event_ids``), and none replayed, if one named is not parked."""
        response: pb.ReplayParkedResponse = await self._call(
            f"replay parked events of {group}",
            self._stub.ReplayParked,
            pb.ReplayParkedRequest(group=group, event_ids=event_ids),
            timeout,
        )
        return response.replaying

    async def dismiss(
        self,
        group: str,
        event_ids: Sequence[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> int:
        """Delete parked events without delivering them again (at least one
        named; they count as the group's ``dismissed``, not as acknowledged); how many. All or none:
        ``NotFound`` (PARKED_EVENT_NOT_FOUND, the ids in its metadata's
        ``event_ids``), and none dismissed, if one named is not parked (as a
        retry after an answer lost on the way says of those dismissed)."""
        response: pb.DismissParkedResponse = await self._call(
            f"dismiss parked events of {group}",
            self._stub.DismissParked,
            pb.DismissParkedRequest(group=group, event_ids=event_ids),
            timeout,
        )
        return response.dismissed


__all__ = ["Delivery", "GroupConsumer", "GroupInfo", "GroupParkedEvent", "Groups", "RemoteError"]
