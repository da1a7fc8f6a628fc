"""The Python client's group consumer when its stream ends under a write:
grpc.aio raises CancelledError from the write of a call cancelled under it
(``_raise_for_status`` of a locally cancelled call), which is the stream's
end, not a cancellation of the task writing."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from chronicle.v1 import event_pb2
from chronicle.v1 import subscription_group_service_pb2 as pb
from service.client.errors import RemoteError
from service.client.groups import GroupConsumer
from tests.support.broken_calls import ScriptedCall, lost


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


def _delivering(event_id: str) -> pb.ConsumeResponse:
    delivery = pb.Delivery(event=event_pb2.Event(event_id=event_id), attempt=1)
    return pb.ConsumeResponse(deliveries=pb.Deliveries(deliveries=[delivery]))


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.UNAVAILABLE, "gone"),
        (grpc.StatusCode.CANCELLED, "gone"),
        (grpc.StatusCode.INTERNAL, "Internal error from Core"),
    ],
)
async def test_a_stream_the_server_ended_without_being_asked_is_consumed_again(
    code: grpc.StatusCode, details: str
) -> None:
    """UNAVAILABLE (a server stopping) and CANCELLED (a call that reached a
    server as it stopped: gRPC cancels it before the server's code runs; the
    consumer's own cancellation is asyncio's CancelledError instead), as
    the client's retries and subscriptions treat them; and the INTERNAL that
    grpc.aio reports in place of a status it lost, when an ack was written
    as the server ended the stream (grpc/grpc#36066)."""
    calls = [
        ScriptedCall(pb.ConsumeResponse(joined=pb.Joined(consumer="c#1")), lost(details, code)),
        ScriptedCall(pb.ConsumeResponse(joined=pb.Joined(consumer="c#2")), _delivering("event-1")),
    ]
    consumer = GroupConsumer(lambda: calls.pop(0), group="g", consumer="c", reconnect_delay=0)
    async with consumer:
        delivered = [delivery.event.event_id async for delivery in consumer]
    assert delivered == ["event-1"] and calls == []
    assert consumer.member == "c#2"


@pytest.mark.parametrize(
    ("code", "details"),
    [(grpc.StatusCode.PERMISSION_DENIED, "no grant"), (grpc.StatusCode.INTERNAL, "internal error")],
)
async def test_a_stream_refused_for_good_raises(code: grpc.StatusCode, details: str) -> None:
    """Including an INTERNAL the server sent, which is not a lost status."""
    calls = [ScriptedCall(lost(details, code)), ScriptedCall()]
    consumer = GroupConsumer(lambda: calls.pop(0), group="g", consumer="c", reconnect_delay=0)

    async def consume() -> None:
        async with consumer:
            async for _ in consumer:
                pass

    with pytest.raises(RemoteError) as raised:
        await consume()
    assert raised.value.code == code and len(calls) == 1


def _acked(call: ScriptedCall) -> list[str]:
    return [event_id for request in call.written if request.HasField("ack") for event_id in request.ack.event_ids]


def _nacked(call: ScriptedCall) -> list[str]:
    return [event_id for request in call.written if request.HasField("nack") for event_id in request.nack.event_ids]


async def test_an_answer_to_a_delivery_of_a_broken_stream_is_dropped_not_sent_on_the_next_one() -> None:
    """A handler that acks in its own task (as ``max_in_flight`` invites)
    may answer after the stream that delivered its event broke and the
    next one opened. The server knows only the events a stream delivered:
    the answer, written on the new stream, failed it (INVALID_ARGUMENT
    UNKNOWN_EVENT_ID) when the event's segment had gone to another
    consumer, and the consumer raised. The broken stream's events come
    again anyway: the answer is dropped."""
    first = ScriptedCall(
        pb.ConsumeResponse(joined=pb.Joined(consumer="c#1")),
        _delivering("event-1"),
        _delivering("event-2"),
        lost("the server is shutting down", grpc.StatusCode.UNAVAILABLE),
    )
    second = ScriptedCall(pb.ConsumeResponse(joined=pb.Joined(consumer="c#2")), _delivering("event-3"))
    calls = [first, second]
    consumer = GroupConsumer(lambda: calls.pop(0), group="g", consumer="c", reconnect_delay=0)
    async with consumer:
        deliveries = aiter(consumer)
        one, two = await anext(deliveries), await anext(deliveries)
        three = await anext(deliveries)  # from the second stream: the first broke
        assert consumer.member == "c#2"
        await one.ack()
        await two.nack("late")
        await three.ack()
        assert consumer._flushing is not None
        await consumer._flushing
        assert [d async for d in deliveries] == []
    assert (_acked(second), _nacked(second)) == (["event-3"], [])
    assert (_acked(first), _nacked(first)) == ([], [])
