"""``chronicle tail`` resumes with the id of the event it saw at its resume
point (``SubscribeRequest.after_event_id``), so that a log gone back under
it (a restore, a failover that lost commits) is refused, and exits 1 on
FAILED_PRECONDITION LOG_REWOUND instead of retrying it. A scripted
EventService over a real socket: streams broken (UNAVAILABLE) after events
and after the caught-up mark, the last reopening refused LOG_REWOUND."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from chronicle.v1 import event_pb2, event_service_pb2, event_service_pb2_grpc
from service.api.status import rich_status
from service.errors import LogRewound
from tests.support.processes import cli, free_port


class RewoundLog(event_service_pb2_grpc.EventServiceServicer):
    """First stream: events 2 and 3, broken; second: the caught-up mark at
    5, broken; third: refused LOG_REWOUND."""

    def __init__(self) -> None:
        self.requests: list[event_service_pb2.SubscribeRequest] = []
        self._lock = threading.Lock()

    def Subscribe(self, request: Any, context: Any) -> Iterator[event_service_pb2.SubscribeResponse]:
        with self._lock:
            self.requests.append(event_service_pb2.SubscribeRequest.FromString(request.SerializeToString()))
            number = len(self.requests)
        if number == 1:
            for position in (2, 3):
                event = event_pb2.Event(
                    position=position, event_id=f"e-{position}", event_type="ledger.v1.Deposited", version=position
                )
                event.payload.type_url = "type.googleapis.com/ledger.v1.Deposited"
                yield event_service_pb2.SubscribeResponse(event=event, completes_position=True)
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost (scripted)")
        if number == 2:
            yield event_service_pb2.SubscribeResponse(caught_up=event_service_pb2.CaughtUp(position=5, event_id="e-5"))
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost (scripted)")
        rewound = LogRewound("the log went back (scripted)", metadata={"position": "5", "log_head": "4"})
        context.abort_with_status(rich_status(rewound))


@pytest.fixture
def rewound_log() -> Iterator[tuple[str, RewoundLog]]:
    servicer = RewoundLog()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    event_service_pb2_grpc.add_EventServiceServicer_to_server(servicer, server)
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    server.start()
    try:
        yield address, servicer
    finally:
        server.stop(grace=None)


def test_a_tail_resumes_with_the_event_id_and_exits_on_log_rewound(rewound_log: tuple[str, RewoundLog]) -> None:
    address, servicer = rewound_log
    tail = cli("tail", "--from", "1", server=address, check=False)
    assert [json.loads(line)["position"] for line in tail.stdout.splitlines()] == ["2", "3"]  # JSON: 64-bit as strings
    assert [(r.after_position, r.after_event_id) for r in servicer.requests] == [(1, ""), (3, "e-3"), (5, "e-5")]
    assert tail.returncode == 1
    assert "LOG_REWOUND" in tail.stderr
