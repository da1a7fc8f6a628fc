"""A subscription to the event log that keeps its place.

``EventService.Subscribe`` streams committed events in position order, with
checkpoints while nothing matching commits and one ``caught_up`` when the
catch-up reaches the live end. This side remembers the position of the last
event (or checkpoint) the consumer finished with; when the stream breaks
with an error worth retrying (a replica shutting down, a lost connection, a
server restarting, a database away) it reopens after that position, on
whichever replica answers, so the consumer sees every event once, in order:
with the default ``RetryPolicy`` as often and for as long as it takes, the
backoff growing to ``max_backoff`` (2 s); a policy with ``max_attempts``
gives up after that many reopenings in a row with nothing received. With a :class:`CheckpointStore` the
position also outlives the process: a restarted subscriber resumes after the
last saved one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chronicle.v1 import event_service_pb2
from service.client.checkpoints import CheckpointStore
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
    it does not end by itself. ``position`` is the last position processed,
    ``caught_up`` is set once the stream reached the live end.

    The position of an event counts as processed when the consumer asks for
    the next one (or calls ``processed(event)``), so an event whose
    processing was interrupted is delivered again after a restart (at least
    once), never skipped. Saving a
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
        self.caught_up = asyncio.Event()

    def __aiter__(self) -> AsyncGenerator[Event, None]:
        return self._events()

    async def processed(self, event: Event) -> None:
        """Mark ``event`` finished now and save the checkpoint: call it before
        leaving the loop after handling an event, which is otherwise only
        counted as finished when the next one is asked for."""
        self.position, self._from_end = max(self.position, event.position), False
        await self._save()

    def _request(self) -> event_service_pb2.SubscribeRequest:
        return event_service_pb2.SubscribeRequest(
            after_position=self.position,
            from_end=self._from_end,
            aggregate_types=self._filter.aggregate_types,
            event_types=self._filter.event_types,
            aggregate_id=self._filter.aggregate_id,
            origin=self._filter.origin,
            pages=True,
        )

    async def _events(self) -> AsyncGenerator[Event, None]:
        if self._checkpoints is not None:
            saved = await self._checkpoints.load()
            if saved is not None:
                self.position, self._from_end = saved, False
        unsaved = 0
        try:
            async for message in resuming(self._retry, "subscribe", lambda: self._open_call(self._request())):
                kind = message.WhichOneof("kind")
                if kind == "page" or kind == "event":
                    for envelope in message.page.events if kind == "page" else (message.event,):
                        yield Event(envelope)
                        # Back here: the consumer is done with it.
                        self.position, self._from_end = envelope.position, False
                        if self._checkpoints is not None:
                            unsaved += 1
                            if unsaved >= self._save_every:
                                await self._save()
                                unsaved = 0
                    continue
                # A checkpoint, or the caught-up mark (itself a checkpoint).
                marker = message.checkpoint if kind == "checkpoint" else message.caught_up
                self.position, self._from_end = max(self.position, marker.position), False
                if kind == "caught_up":
                    self.caught_up.set()
                await self._save()
                unsaved = 0
        finally:
            if unsaved:  # the consumer stopped: keep what it finished
                await self._save()

    async def _save(self) -> None:
        if self._checkpoints is not None:
            await self._checkpoints.save(self.position)
