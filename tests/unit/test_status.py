"""The table from errors to gRPC codes, and the details every status carries."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from service import errors
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
