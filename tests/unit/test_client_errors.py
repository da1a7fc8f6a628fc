"""The Python client's side of the error contract: the rich status the
server builds (service.api.status) decodes into a typed error, and the retry
policy decides from it."""

from __future__ import annotations

import grpc
import pytest

from service import errors
from service.api.status import RETRY_AFTER_SECONDS, rich_status
from service.client import Aborted, FailedPrecondition, InvalidArgument, RemoteError, ResourceExhausted, RetryPolicy
from service.client.errors import remote_error

POLICY = RetryPolicy(max_attempts=4, initial_backoff=0.1, max_backoff=0.3, multiplier=2, jitter=0.5)


def as_received(error: errors.ChronicleError) -> grpc.aio.AioRpcError:
    """The failed call a client gets when the server raises ``error``."""
    status = rich_status(error)
    return grpc.aio.AioRpcError(
        status.code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata), status.details
    )


def test_a_domain_refusal_decodes_with_its_reason_and_metadata() -> None:
    refused = remote_error(
        as_received(errors.ValidationError("no money", reason="INSUFFICIENT_FUNDS", metadata={"balance": "3"}))
    )
    assert isinstance(refused, FailedPrecondition)
    assert (refused.reason, refused.message, refused.metadata) == ("INSUFFICIENT_FUNDS", "no money", {"balance": "3"})
    assert str(refused) == "FAILED_PRECONDITION INSUFFICIENT_FUNDS: no money"


def test_malformed_input_decodes_with_the_fields_at_fault() -> None:
    refused = remote_error(as_received(errors.InvalidInput.for_field("aggregate_id", "is empty", reason="MISSING_ID")))
    assert isinstance(refused, InvalidArgument)
    assert [(v.field, v.description) for v in refused.field_violations] == [("aggregate_id", "is empty")]


def test_an_overloaded_server_says_when_to_retry() -> None:
    refused = remote_error(as_received(errors.Overloaded("queue full", reason="AGGREGATE_QUEUE_FULL")))
    assert isinstance(refused, ResourceExhausted)
    assert refused.retry_delay == pytest.approx(RETRY_AFTER_SECONDS[grpc.StatusCode.RESOURCE_EXHAUSTED])


def test_an_error_without_details_is_typed_by_its_code() -> None:
    bare = grpc.aio.AioRpcError(grpc.StatusCode.DATA_LOSS, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone")
    refused = remote_error(bare)
    assert type(refused) is RemoteError
    assert (refused.reason, refused.message, refused.metadata) == ("DATA_LOSS", "gone", {})


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


def test_resource_exhausted_is_retried_only_when_the_server_says_when() -> None:
    assert POLICY.delay(1, failure(grpc.StatusCode.RESOURCE_EXHAUSTED)) is None  # e.g. message too large
    assert POLICY.delay(1, failure(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=0.2)) is not None


def test_a_conflict_after_the_servers_own_retries_decodes_as_aborted() -> None:
    refused = remote_error(as_received(errors.ConcurrencyConflict("acc-1", 3, attempts=5, current=4)))
    assert isinstance(refused, Aborted)
    assert refused.metadata["current_version"] == "4"
    assert POLICY.delay(1, refused) is not None
