"""The Python client's side of the error contract: a status as it arrives
on the wire (built here by hand from the google.rpc protos, not by the
server's code) decodes into a typed error, and the retry policy decides
from it."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from chronicle.v1 import command_service_pb2
from service import errors
from service.api.status import rich_status
from service.client import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    RemoteError,
    ResourceExhausted,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    retryable,
)
from service.client.errors import command_error, remote_error

POLICY = RetryPolicy(max_attempts=4, initial_backoff=0.1, max_backoff=0.3, multiplier=2, jitter=0.5)
DETAILS_TRAILER = "grpc-status-details-bin"  # where gRPC carries a google.rpc.Status


def received(
    code: grpc.StatusCode, message: str, *details: Message, status_code: int | None = None
) -> grpc.aio.AioRpcError:
    """A failed call as a client receives it: the code and message, and a
    google.rpc.Status with ``details`` in the details trailer (its code is
    ``status_code`` when given, to make a trailer that contradicts the call)."""
    status = status_pb2.Status(code=code.value[0] if status_code is None else status_code, message=message)
    for detail in details:
        status.details.add().Pack(detail)
    trailers = grpc.aio.Metadata((DETAILS_TRAILER, status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, message)


def info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain="chronicle", metadata=metadata)


def test_a_domain_refusal_decodes_with_its_reason_and_metadata() -> None:
    refused = remote_error(
        received(grpc.StatusCode.FAILED_PRECONDITION, "no money", info("INSUFFICIENT_FUNDS", balance="3"))
    )
    assert isinstance(refused, FailedPrecondition)
    assert (refused.code, refused.reason, refused.message, refused.metadata) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_FUNDS",
        "no money",
        {"balance": "3"},
    )
    assert (refused.field_violations, refused.retry_delay) == ((), None)
    assert str(refused) == "FAILED_PRECONDITION INSUFFICIENT_FUNDS: no money"


def test_malformed_input_decodes_with_the_fields_at_fault() -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="command.aggregate_id", description="is empty"),
            error_details_pb2.BadRequest.FieldViolation(field="command.origin", description="has control characters"),
        ]
    )
    refused = remote_error(received(grpc.StatusCode.INVALID_ARGUMENT, "bad command", info("MISSING_ID"), bad))
    assert isinstance(refused, InvalidArgument)
    assert refused.reason == "MISSING_ID"
    assert [(v.field, v.description) for v in refused.field_violations] == [
        ("command.aggregate_id", "is empty"),
        ("command.origin", "has control characters"),
    ]


def test_an_overloaded_server_says_when_to_retry() -> None:
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1, nanos=250_000_000))
    refused = remote_error(received(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", info("AGGREGATE_QUEUE_FULL"), retry))
    assert isinstance(refused, ResourceExhausted)
    assert (refused.reason, refused.retry_delay) == ("AGGREGATE_QUEUE_FULL", 1.25)


def test_details_of_other_kinds_are_ignored() -> None:
    debug = error_details_pb2.DebugInfo(detail="stack")
    refused = remote_error(received(grpc.StatusCode.NOT_FOUND, "gone", debug, info("AGGREGATE_NOT_FOUND")))
    assert (type(refused), refused.reason) == (NotFound, "AGGREGATE_NOT_FOUND")


def test_an_error_without_details_is_typed_by_its_code() -> None:
    bare = grpc.aio.AioRpcError(grpc.StatusCode.DATA_LOSS, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone")
    refused = remote_error(bare)
    assert type(refused) is DataLoss
    assert (refused.reason, refused.message, refused.metadata) == ("DATA_LOSS", "gone", {})
    assert str(refused) == "DATA_LOSS: gone"  # the code once, not "DATA_LOSS DATA_LOSS"


def test_an_error_info_without_a_reason_falls_back_to_the_code() -> None:
    refused = remote_error(received(grpc.StatusCode.UNAVAILABLE, "down", info("")))
    assert (type(refused), refused.reason) == (Unavailable, "UNAVAILABLE")


def test_a_details_trailer_that_contradicts_the_call_is_ignored() -> None:
    contradicting = received(
        grpc.StatusCode.UNAVAILABLE, "down", info("SHOULD_NOT_BE_READ"), status_code=code_pb2.INVALID_ARGUMENT
    )
    refused = remote_error(contradicting)
    assert (type(refused), refused.reason, refused.metadata) == (Unavailable, "UNAVAILABLE", {})


# Each gRPC code's error class, written out here rather than read from the
# module's own table.
TYPED = [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
    (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
    (grpc.StatusCode.NOT_FOUND, NotFound),
    (grpc.StatusCode.OUT_OF_RANGE, OutOfRange),
    (grpc.StatusCode.ALREADY_EXISTS, AlreadyExists),
    (grpc.StatusCode.ABORTED, Aborted),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
    (grpc.StatusCode.UNAVAILABLE, Unavailable),
    (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
    (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
    (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
    (grpc.StatusCode.INTERNAL, Internal),
    (grpc.StatusCode.CANCELLED, Cancelled),
    (grpc.StatusCode.UNKNOWN, Unknown),
    (grpc.StatusCode.UNIMPLEMENTED, Unimplemented),
    (grpc.StatusCode.DATA_LOSS, DataLoss),
]


@pytest.mark.parametrize(("code", "typed"), TYPED, ids=[code.name for code, _ in TYPED])
def test_each_code_decodes_to_its_class_and_is_a_chronicle_error(code: grpc.StatusCode, typed: type) -> None:
    refused = remote_error(received(code, "x", info("R")))
    assert type(refused) is typed
    assert isinstance(refused, RemoteError) and isinstance(refused, errors.ChronicleError)
    assert command_error(command_service_pb2.CommandError(code=code.value[0])).__class__ is typed


def test_a_refused_command_of_a_stream_decodes_like_a_status() -> None:
    sent = command_service_pb2.CommandError(
        code=code_pb2.ABORTED,
        message="conflict",
        reason="CONCURRENCY_CONFLICT",
        metadata={"current_version": "4"},
        field_violations=[command_service_pb2.FieldViolation(field="command.expected_version", description="stale")],
        retry_after=duration_pb2.Duration(nanos=50_000_000),
    )
    refused = command_error(sent)
    assert isinstance(refused, Aborted)
    assert (refused.code, refused.reason, refused.message, refused.metadata, refused.retry_delay) == (
        grpc.StatusCode.ABORTED,
        "CONCURRENCY_CONFLICT",
        "conflict",
        {"current_version": "4"},
        0.05,
    )
    assert [(v.field, v.description) for v in refused.field_violations] == [("command.expected_version", "stale")]
    assert command_error(command_service_pb2.CommandError(code=code_pb2.NOT_FOUND)).reason == "NOT_FOUND"


def failure(code: grpc.StatusCode, retry_delay: float | None = None) -> RemoteError:
    return RemoteError("x", code=code, reason=code.name, retry_delay=retry_delay)


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED],
)
def test_transient_failures_are_retried_with_growing_capped_backoff(code: grpc.StatusCode) -> None:
    delays = [POLICY.delay(attempt, failure(code)) for attempt in (1, 2, 3)]
    for delay, base in zip(delays, (0.1, 0.2, 0.3), strict=True):
        assert delay is not None and base <= delay <= base * 1.5


def test_the_attempts_are_bounded() -> None:
    assert POLICY.delay(4, failure(grpc.StatusCode.UNAVAILABLE)) is None


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.INTERNAL,
    ],
)
def test_refusals_are_not_retried(code: grpc.StatusCode) -> None:
    assert POLICY.delay(1, failure(code)) is None


def test_the_servers_retry_delay_is_a_minimum() -> None:
    delay = POLICY.delay(1, failure(grpc.StatusCode.ABORTED, retry_delay=5.0))
    assert delay == 5.0


def test_a_server_going_away_is_left_after_the_backoff_not_its_retry_delay() -> None:
    """A draining replica ends its streams UNAVAILABLE SHUTTING_DOWN with the
    code's RetryInfo (1 s); the client reopens on a new connection, which a
    balancer places elsewhere, so the server's delay is not waited."""
    going = RemoteError("x", code=grpc.StatusCode.UNAVAILABLE, reason="SHUTTING_DOWN", retry_delay=1.0)
    delay = POLICY.delay(1, going)
    assert delay is not None and 0.1 <= delay <= 0.15
    unavailable = RemoteError("x", code=grpc.StatusCode.UNAVAILABLE, reason="STORE_UNAVAILABLE", retry_delay=1.0)
    assert POLICY.delay(1, unavailable) == 1.0


@pytest.mark.parametrize(
    ("code", "retry_delay", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, None, True),
        (grpc.StatusCode.CANCELLED, None, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, None, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, None, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 0.2, True),
        (grpc.StatusCode.FAILED_PRECONDITION, None, False),
        (grpc.StatusCode.UNIMPLEMENTED, None, False),
    ],
)
def test_whether_an_error_is_worth_retrying_is_public(
    code: grpc.StatusCode, retry_delay: float | None, expected: bool
) -> None:
    error = remote_error(received(code, "x", *([] if retry_delay is None else [retry_info(retry_delay)])))
    assert retryable(error) is expected
    assert error.retryable is expected
    assert (POLICY.delay(1, error) is not None) is expected  # what the client itself retries


def retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromTimedelta(timedelta(seconds=seconds))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def test_resource_exhausted_is_retried_only_when_the_server_says_when() -> None:
    assert POLICY.delay(1, failure(grpc.StatusCode.RESOURCE_EXHAUSTED)) is None  # e.g. message too large
    assert POLICY.delay(1, failure(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=0.2)) is not None


def test_the_servers_own_statuses_decode_on_the_client() -> None:
    """The two sides together: what service.api.status sends is what the
    client reads (each side is checked against the wire format above)."""
    status = rich_status(errors.ConcurrencyConflict("acc-1", 3, attempts=5, current=4))
    call = grpc.aio.AioRpcError(
        status.code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata), status.details
    )
    refused = remote_error(call)
    assert isinstance(refused, Aborted)
    assert refused.metadata["current_version"] == "4"
    assert POLICY.delay(1, refused) is not None
