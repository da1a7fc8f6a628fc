"""The Python client's ``Subscription.position`` against a server from before
``completes_position`` (which never sets it), scripted here since no such
server is at hand: a position counts as done only once an event of a higher
one, or a checkpoint covering it, shows that no further piece of a split
event can come (tests/integration/test_split_event_checkpoints.py: the
same against a real server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from chronicle.v1 import event_pb2, event_service_pb2
from service.client import MemoryCheckpoints, RetryPolicy
from service.client.subscription import LogFilter, Subscription


class OldServerStream:
    """A Subscribe call answering ``messages``, then waiting (a live stream)."""

    def __init__(self, messages: list[event_service_pb2.SubscribeResponse]) -> None:
        self._messages = messages

    def __aiter__(self) -> AsyncIterator[event_service_pb2.SubscribeResponse]:
        return self._answers()

    async def _answers(self) -> AsyncIterator[event_service_pb2.SubscribeResponse]:
        for message in self._messages:
            yield message
        await asyncio.Event().wait()

    def cancel(self) -> bool:
        return True


def page(*positions: int) -> event_service_pb2.SubscribeResponse:
    return event_service_pb2.SubscribeResponse(
        page=event_pb2.EventPage(events=[event_pb2.Event(position=p, event_type="x.v1.Y") for p in positions])
    )


def checkpoint(position: int) -> event_service_pb2.SubscribeResponse:
    return event_service_pb2.SubscribeResponse(checkpoint=event_service_pb2.Checkpoint(position=position))


def subscription(messages: list[event_service_pb2.SubscribeResponse], saved: MemoryCheckpoints) -> Subscription:
    return Subscription(
        lambda request: OldServerStream(messages),
        log_filter=LogFilter(),
        retry=RetryPolicy(),
        after_position=0,
        from_end=False,
        checkpoints=saved,
        save_every=1,
    )


async def positions_after(messages: list[event_service_pb2.SubscribeResponse], handled: int) -> list[int]:
    """The checkpoint saved after the consumer finished each of ``handled``
    events (asking for the next one), and once more when it then stopped
    while handling the one after."""
    saved = MemoryCheckpoints()
    followed = subscription(messages, saved)
    events = aiter(followed)
    checkpoints = []
    async with asyncio.timeout(10):
        await anext(events)
        for _ in range(handled):
            await anext(events)
            checkpoints.append(saved.position or 0)
    await events.aclose()
    return [*checkpoints, saved.position or 0]


async def test_a_position_is_done_only_when_an_event_of_a_higher_one_comes() -> None:
    # Two pieces at 5 then one at 7, one page: the consumer finishes the first
    # piece (5 not done), the second (5 still open as far as this side can
    # tell: the page's next event is at 7, so 5 is done), then stops on 7.
    assert await positions_after([page(5, 5, 7)], handled=2) == [0, 5, 5]


async def test_pieces_across_messages_wait_for_the_next_message() -> None:
    # A message ends after the first piece; an old server does not say
    # whether more of 5 follows, so 5 waits until an event at 8 comes.
    assert await positions_after([page(3, 5), page(5, 8)], handled=3) == [3, 3, 5, 5]


async def test_processed_waits_for_a_checkpoint_covering_the_last_position_handed_over() -> None:
    saved = MemoryCheckpoints()
    followed = subscription([page(4, 6), checkpoint(6), page(9)], saved)
    events = aiter(followed)
    async with asyncio.timeout(10):
        await anext(events)
        last = await anext(events)  # 4 done
        await followed.processed(last)  # 6 done, but more of 6 may follow
        assert saved.position == 4
        await anext(events)  # the checkpoint at 6 said no more of 6 comes
        assert saved.position == 6
    await events.aclose()
