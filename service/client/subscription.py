"""A subscription to the event log that keeps its place.

``EventService.Subscribe`` streams committed events in position order, with
checkpoints while nothing matching commits and one ``caught_up`` when the
catch-up reaches the live end. This side remembers the last position whose
events the consumer all finished with (an upcaster may split one stored
event into several at one position: ``Subscription``); when the stream breaks
with an error worth retrying (a replica shutting down, a lost connection, a
server restarting, a database away) it reopens after that position, on
whichever replica answers, and passes over the events of the next position
it had handed over already, so the consumer sees every event once, in order:
with the default ``RetryPolicy`` as often and for as long as it takes, the
backoff growing to ``max_backoff`` (2 s); a policy with ``max_attempts``
gives up after that many reopenings in a row with nothing received. With a :class:`CheckpointStore` the
position also outlives the process: a restarted subscriber resumes after the
last saved one.

Every reopening, and a start from a saved checkpoint, sends beside the
position the id of the event seen there (``after_event_id``): a server that
no longer holds that event there (the database restored from an older
copy, or failed over to a standby that lost commits) refuses with
``LogRewound`` rather than going on after a position whose events may now be
others; so does a live stream whose log went back under it. It is never
retried: the subscriber re-syncs deliberately (docs/subscriptions.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chronicle.v1 import event_service_pb2
from service.client.checkpoints import CheckpointStore, ResumePoint, ResumePointStore
from service.client.results import Event
from service.client.retry import RetryPolicy, resuming


@dataclass(frozen=True, slots=True, kw_only=True)
class LogFilter:
    """Which events a subscription carries. Filters combine with AND, the
    entries of one list with OR; empty means everything."""

    aggregate_types: Sequence[str] = ()
    event_types: Sequence[str] = ()
    aggregate_id: str = ""
    origin: str = ""


class Subscription:
    """Iterate it (``async for event in subscription``) to get the events;
    it does not end by itself. ``position`` is the position to resume after:
    every event at or before it was processed. ``caught_up`` is set once the
    stream reached the live end. ``event_id`` is the id of the event seen
    at ``position`` (a checkpoint's: the event stored there), sent with it
    when the stream is opened again so that a log gone back is noticed
    (``LogRewound``); "" when unknown (a checkpoint saved without it).

    An event counts as processed when the consumer asks for the next one (or
    calls ``processed(event)``), so an event whose processing was
    interrupted is delivered again after a restart (at least once), never
    skipped. Its position counts only once every event of it was processed:
    an upcaster may split one stored event into several, all at its
    position, and a consumer that died on the second must get it after a
    restart. So ``position`` (and the checkpoint saved) stays at the
    position before until the server says the event was the last of its
    position (``completes_position``; within a message, the next event's
    higher position says so), a later event comes, or a server checkpoint
    covers it. Use it, never ``event.position``, as a checkpoint of your
    own. Saving a
    checkpoint after every event is the default; ``save_every=N`` saves after
    every N events (and at every server checkpoint), trading more repeats
    after a crash for fewer writes.
    """

    def __init__(
        self,
        open_call: Callable[[event_service_pb2.SubscribeRequest], Any],
        *,
        log_filter: LogFilter,
        retry: RetryPolicy,
        after_position: int,
        from_end: bool,
        checkpoints: CheckpointStore | None,
        save_every: int,
        after_event_id: str = "",
    ) -> None:
        if save_every < 1:
            raise ValueError("save_every must be at least 1")
        self._open_call = open_call
        self._filter = log_filter
        self._retry = retry
        self._from_end = from_end
        self._checkpoints = checkpoints
        self._save_every = save_every
        self.position = after_position
        self.event_id = after_event_id
        self.caught_up = asyncio.Event()
        # The position of the last event handed over (above ``position`` while
        # more events of it may follow), how many of its events were, and
        # the last one's id.
        self._handed = after_position
        self._handed_here = 0
        self._handed_id = after_event_id
        self._repeats = 0  # events of ``_handed`` to skip in a reopened stream
        # The event the consumer holds: its position, whether it completes
        # it, and its id.
        self._in_flight: tuple[int, bool, str] | None = None

    def __aiter__(self) -> AsyncGenerator[Event, None]:
        return self._events()

    async def processed(self, event: Event) -> None:
        """Mark ``event`` finished now and save the checkpoint: call it before
        leaving the loop after handling an event, which is otherwise only
        counted as finished when the next one is asked for. An event the
        server has not said is the last of its position (below) leaves the
        checkpoint before that position: it comes again after a restart."""
        if self._in_flight is not None and event.position == self._in_flight[0]:
            self._handed_over(*self._in_flight)
            self._in_flight = None
        await self._save()

    def _complete(self, position: int, event_id: str) -> None:
        """Every event at or before ``position`` is finished: resume after
        it, where the event ``event_id`` was seen ("": unknown)."""
        if position > self.position or (position == self.position and event_id):
            self.position, self.event_id = position, event_id
        self._from_end = False

    def _handed_over(self, position: int, completes: bool, event_id: str) -> None:
        """An event at ``position`` was handed over and finished; ``completes``:
        the server said it was the last of its position. An upcaster may split
        one stored event into several at one position: until the last of them
        is finished, the position to resume after is the one before (the last
        complete one), or a restart after it would skip the rest."""
        if position != self._handed:
            self._complete(self._handed, self._handed_id)
            self._handed, self._handed_here = position, 0
        self._handed_here += 1
        self._handed_id = event_id
        if completes:
            self._complete(position, event_id)

    def _request(self) -> event_service_pb2.SubscribeRequest:
        return event_service_pb2.SubscribeRequest(
            after_position=self.position,
            from_end=self._from_end,
            aggregate_types=self._filter.aggregate_types,
            event_types=self._filter.event_types,
            aggregate_id=self._filter.aggregate_id,
            origin=self._filter.origin,
            pages=True,
            after_event_id="" if self._from_end else self.event_id,
        )

    async def _events(self) -> AsyncGenerator[Event, None]:
        if self._checkpoints is not None:
            saved = await self._load()
            if saved is not None:
                self.position, self.event_id, self._from_end = saved.position, saved.event_id, False
        self._handed, self._handed_id = self.position, self.event_id
        unsaved = 0
        try:
            async for message in resuming(self._retry, "subscribe", self._open):
                kind = message.WhichOneof("kind")
                if kind == "page" or kind == "event":
                    envelopes = message.page.events if kind == "page" else (message.event,)
                    last = len(envelopes) - 1
                    for index, envelope in enumerate(envelopes):
                        if self._repeats and envelope.position == self._handed:
                            self._repeats -= 1  # reopened inside a split event: handed over already
                            continue
                        self._repeats = 0
                        # The last of its position: the next event in the
                        # message is at a higher one, or the server said so.
                        completes = (
                            message.completes_position
                            if index == last
                            else envelopes[index + 1].position > envelope.position
                        )
                        self._in_flight = (envelope.position, completes, envelope.event_id)
                        yield Event(envelope)
                        # Back here: the consumer is done with it (unless
                        # ``processed`` said so already).
                        if self._in_flight is not None:
                            self._handed_over(*self._in_flight)
                            self._in_flight = None
                        if self._checkpoints is not None:
                            unsaved += 1
                            if unsaved >= self._save_every:
                                await self._save()
                                unsaved = 0
                    continue
                # A checkpoint, or the caught-up mark (itself a checkpoint):
                # every event at or before it was sent, the last position's
                # pieces included.
                marker = message.checkpoint if kind == "checkpoint" else message.caught_up
                self._complete(marker.position, marker.event_id)
                if kind == "caught_up":
                    self.caught_up.set()
                await self._save()
                unsaved = 0
        finally:
            if unsaved:  # the consumer stopped: keep what it finished
                await self._save()

    def _open(self) -> Any:
        """The stream again, after the last complete position; the events of
        the position after it already handed over are skipped when they come
        again (a split event's first pieces), so none is seen twice."""
        self._repeats = self._handed_here if self._handed > self.position else 0
        return self._open_call(self._request())

    async def _load(self) -> ResumePoint | None:
        assert self._checkpoints is not None
        if isinstance(self._checkpoints, ResumePointStore):
            return await self._checkpoints.load_point()
        position = await self._checkpoints.load()  # a store of positions alone: not checked
        return None if position is None else ResumePoint(position)

    async def _save(self) -> None:
        if isinstance(self._checkpoints, ResumePointStore):
            await self._checkpoints.save_point(ResumePoint(self.position, self.event_id))
        elif self._checkpoints is not None:
            await self._checkpoints.save(self.position)
