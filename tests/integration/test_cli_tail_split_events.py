"""``chronicle tail`` across a stream broken between the pieces of a split
event (an upcaster's: several events at one position). Breaking a real
server's stream between two messages sent back to back cannot be timed, so
a scripted EventService over a real socket serves a log holding one split
event and breaks the first stream right after its first piece, as a server
stopping or a connection lost would."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from chronicle.v1 import event_pb2, event_service_pb2, event_service_pb2_grpc
from tests.support.processes import cli, free_port

# position, event type, last of its position
LOG = [(2, "ledger.v1.Opened", False), (2, "ledger.v1.Bonus", True), (3, "ledger.v1.Deposited", True)]


class SplitLog(event_service_pb2_grpc.EventServiceServicer):
    """Subscribe over ``LOG``: the events after the requested position, then
    the caught-up mark; the first stream ends UNAVAILABLE after one event."""

    def __init__(self) -> None:
        self.requests: list[event_service_pb2.SubscribeRequest] = []
        self._lock = threading.Lock()

    def Subscribe(self, request: Any, context: Any) -> Iterator[event_service_pb2.SubscribeResponse]:
        with self._lock:
            self.requests.append(event_service_pb2.SubscribeRequest.FromString(request.SerializeToString()))
            first = len(self.requests) == 1
        for number, (position, event_type, last) in enumerate(p for p in LOG if p[0] > request.after_position):
            if first and number == 1:
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost (scripted)")
            event = event_pb2.Event(position=position, event_type=event_type, aggregate_id="book-1", version=1)
            event.payload.type_url = f"type.googleapis.com/{event_type}"
            yield event_service_pb2.SubscribeResponse(event=event, completes_position=last)
        yield event_service_pb2.SubscribeResponse(caught_up=event_service_pb2.CaughtUp(position=LOG[-1][0]))


@pytest.fixture
def split_log() -> Iterator[tuple[str, SplitLog]]:
    servicer = SplitLog()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    event_service_pb2_grpc.add_EventServiceServicer_to_server(servicer, server)
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    server.start()
    try:
        yield address, servicer
    finally:
        server.stop(grace=None)


def test_a_tail_broken_between_the_pieces_prints_each_once_and_resumes_before_their_position(
    split_log: tuple[str, SplitLog],
) -> None:
    address, servicer = split_log
    tail = cli("tail", "--from", "1", "--until-caught-up", server=address)
    printed = [json.loads(line)["event_type"] for line in tail.stdout.splitlines()]
    assert printed == ["ledger.v1.Opened", "ledger.v1.Bonus", "ledger.v1.Deposited"]
    assert [r.after_position for r in servicer.requests] == [1, 1]  # not after 2: the bonus came next
    assert "resuming after position 1" in tail.stderr
