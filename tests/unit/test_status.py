"""The table from errors to gRPC codes, and the details every status carries."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from service import errors
from service.api import status
from service.api.status import rich_status, status_code


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidInput("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ValidationError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.InvalidArgumentError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFoundError("x"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExistsError("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.WrongExpectedVersion("a", 1, 2), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.ConcurrencyConflict("a", 1), grpc.StatusCode.ABORTED),
        (errors.CommandIdReused("c", "why"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.Overloaded("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.StoreUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.ConsumerStalled("x"), grpc.StatusCode.ABORTED),
        (errors.HandlerFailed("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_each_error_maps_to_its_code(error: errors.ChronicleError, code: grpc.StatusCode) -> None:
    assert status_code(error) == code


def _details(status: grpc.Status) -> status_pb2.Status:
    ((key, value),) = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    return status_pb2.Status.FromString(value)


def test_every_status_carries_error_info_with_the_reason() -> None:
    decoded = _details(rich_status(errors.ValidationError("no", reason="INSUFFICIENT_FUNDS", metadata={"b": "1"})))
    info = error_details_pb2.ErrorInfo()
    assert decoded.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == ("INSUFFICIENT_FUNDS", "chronicle", {"b": "1"})


def test_field_errors_carry_bad_request() -> None:
    decoded = _details(rich_status(errors.InvalidInput.for_field("command.aggregate_id", "empty", reason="R")))
    bad = error_details_pb2.BadRequest()
    assert decoded.details[1].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["command.aggregate_id"]


def test_retryable_errors_carry_retry_info() -> None:
    decoded = _details(rich_status(errors.Overloaded("full")))
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in decoded.details)
    assert retry.retry_delay.ToNanoseconds() > 0


def test_a_recorded_rejection_is_rebuilt_as_the_same_class() -> None:
    rebuilt = errors.rebuild_rejection("NotFoundError", "gone", "ACCOUNT_NOT_FOUND", {"field": "x"})
    assert type(rebuilt) is errors.NotFoundError
    assert (rebuilt.message, rebuilt.reason, rebuilt.field) == ("gone", "ACCOUNT_NOT_FOUND", "x")


def test_a_store_failures_detail_is_logged_now_and_then_and_never_sent(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver's text (host and port) stays in the server's log, at most
    one line per ``STORE_LOG_EVERY`` seconds, counting the calls between."""
    clock = [1000.0]
    monkeypatch.setattr("service.api.status.time.monotonic", lambda: clock[0])
    monkeypatch.setattr(status._StoreLog, "at", float("-inf"))
    monkeypatch.setattr(status._StoreLog, "unlogged", 0)
    caplog.set_level("WARNING", logger="service.api.status")
    down = errors.store_unreachable('connection to server at "db.internal", port 5432 failed')
    for _ in range(3):
        sent = status_pb2.Status.FromString(rich_status(down).trailing_metadata[0][1])
        assert sent.message == errors.STORE_UNREACHABLE and b"5432" not in sent.SerializeToString()
        assert status.command_error(down).message == errors.STORE_UNREACHABLE
    clock[0] += status.STORE_LOG_EVERY
    rich_status(down)
    rich_status(errors.StoreUnavailable("the server is shutting down", reason="SHUTTING_DOWN"))  # nothing to log
    assert [r.getMessage() for r in caplog.records] == [
        'a call failed STORE_UNAVAILABLE: connection to server at "db.internal", port 5432 failed',
        'a call failed STORE_UNAVAILABLE: connection to server at "db.internal", port 5432 failed'
        " (5 more calls failed alike since the last such line)",
    ]
    assert "5432" in str(down)  # what the other logs print
