"""``chronicle tail`` resumes with the id of the event it saw at its resume
point (``SubscribeRequest.after_event_id``), so that a log gone back under
it (a restore, a failover that lost commits) is refused, and exits 1 on
FAILED_PRECONDITION LOG_REWOUND instead of retrying it. A scripted
EventService over a real socket: streams broken (UNAVAILABLE) after events
and after the caught-up mark, the last reopening refused LOG_REWOUND.

Across runs, ``--from POSITION --after-event-id ID`` (the id a
``--checkpoints`` line or an event gives) is checked the same way: through
a real server on SQLite whose file is restored from an older copy."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from chronicle.v1 import event_pb2, event_service_pb2, event_service_pb2_grpc
from service.api.status import rich_status
from service.errors import LogRewound
from tests.support.processes import cli, free_port, server_process


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


def test_a_tail_resumed_in_another_run_with_the_event_id_is_refused_on_a_rewound_log(tmp_path: Path) -> None:
    database, backup = tmp_path / "events.db", tmp_path / "backup.db"
    port = free_port()
    with server_process(f"sqlite:///{database}", port=port) as server:
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address)  # position 1
        first = cli("tail", "--from", "0", "--until-caught-up", "--checkpoints", server=server.address)
        event, mark = [json.loads(line) for line in first.stdout.splitlines()]
        # The caught-up line gives the id to resume with: the event's at that position.
        assert mark == {"caught_up": 1, "event_id": event["event_id"]}
        with sqlite3.connect(database) as source, sqlite3.connect(backup) as target:
            source.backup(target)  # the log up to 1
        for amount in (1, 2):  # 2 and 3: lost in the restore
            cli("submit", "acc-1", "bank.v1.Deposit", f'{{"amount": {amount}}}', server=server.address)
        # On the same log, the id is the one there: the tail goes on from it.
        resumed = cli(
            "tail", "--from", "1", "--after-event-id", mark["event_id"], "--until-caught-up", "--checkpoints",
            server=server.address,
        )  # fmt: skip
        *events, last = [json.loads(line) for line in resumed.stdout.splitlines()]
        assert [e["position"] for e in events] == ["2", "3"] and last == {
            "caught_up": 3,
            "event_id": events[-1]["event_id"],
        }
    with sqlite3.connect(backup) as source, sqlite3.connect(database) as target:
        source.backup(target)  # restored: the log back to 1
    with server_process(f"sqlite:///{database}", port=port) as server:
        for owner in ("bob", "cy"):  # 2 and 3 again, other events
            cli("submit", f"acc-{owner}", "bank.v1.OpenAccount", f'{{"owner": "{owner}"}}', server=server.address)
        refused = cli(
            "tail", "--from", "3", "--after-event-id", last["event_id"], "--until-caught-up", server=server.address,
            check=False,
        )  # fmt: skip
        assert (refused.returncode, refused.stdout) == (1, "")
        assert "FAILED_PRECONDITION LOG_REWOUND" in refused.stderr
        # The same resume without the id is not checked: it would skip the new 2 and 3.
        unchecked = cli("tail", "--from", "3", "--until-caught-up", server=server.address)
        assert unchecked.stdout == ""
        # An id with nothing to check it against, or one that is no event id, is said as such.
        at_end = cli(
            "tail", "--after-event-id", last["event_id"], "--until-caught-up", server=server.address, check=False
        )
        assert at_end.returncode == 2 and "--after-event-id goes with --from POSITION" in at_end.stderr
        typo = cli("tail", "--from", "1", "--after-event-id", "not-an-id", server=server.address, check=False)
        assert typo.returncode == 1 and "INVALID_ARGUMENT INVALID_EVENT_ID" in typo.stderr
