"""The Python client's group consumer when its stream ends under a write:
grpc.aio raises CancelledError from the write of a call cancelled under it
(``_raise_for_status`` of a locally cancelled call), which is the stream's
end, not a cancellation of the task writing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.client.groups import GroupConsumer


class CancelledUnderWrite:
    """A call cancelled while a write is in flight, as grpc.aio reports it."""

    def __init__(self) -> None:
        self._cancelled = False
        self.writing = asyncio.Event()
        self.release = asyncio.Event()

    async def write(self, request: Any) -> None:
        self.writing.set()
        await self.release.wait()
        if self._cancelled:
            raise asyncio.CancelledError()

    def cancel(self) -> bool:
        self._cancelled = True
        self.release.set()
        return True

    def cancelled(self) -> bool:
        return False  # what grpc.aio says of a call cancelled mid-write: its status is INTERNAL

    def done(self) -> bool:
        return self._cancelled

    async def done_writing(self) -> None:
        pass

    async def code(self) -> None:
        pass


async def test_an_ack_written_while_the_stream_is_cancelled_goes_with_the_stream() -> None:
    call = CancelledUnderWrite()
    consumer = GroupConsumer(lambda: call, group="g", consumer="c")
    consumer._call = call  # the stream is open
    await consumer.ack(["event-1"])
    await call.writing.wait()
    call.cancel()  # the iterator closed: the stream ends under the write

    await consumer.close()  # nothing raised

    assert consumer._flushing is not None and consumer._flushing.done() and not consumer._flushing.cancelled()


async def test_a_writer_that_is_itself_cancelled_stays_cancelled() -> None:
    call = CancelledUnderWrite()
    consumer = GroupConsumer(lambda: call, group="g", consumer="c")
    consumer._call = call
    await consumer.ack(["event-1"])
    await call.writing.wait()
    assert consumer._flushing is not None
    consumer._flushing.cancel()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer._flushing
