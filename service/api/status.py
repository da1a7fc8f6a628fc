"""The one table from Chronicle errors to gRPC status codes, and the rich
error details (``google.rpc``) every error carries.

Each error sends a ``google.rpc.Status`` in the ``grpc-status-details-bin``
trailer with an ``ErrorInfo`` (machine-readable ``reason``, domain
``chronicle``, metadata), a ``BadRequest`` when fields are at fault, and a
``RetryInfo`` when retrying later can succeed.

An error's ``message`` is what the caller reads. A store the server cannot
reach says only that (``errors.STORE_UNREACHABLE``): the driver's text,
which names the database's host and port, is the error's ``detail``, logged
here (at most once every ``STORE_LOG_EVERY`` seconds: in an outage every
call fails alike) and never sent.
"""

from __future__ import annotations

import logging
import time

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from chronicle.v1 import command_service_pb2
from service import errors
from service.processing.state import EventNotReadable

DOMAIN = "chronicle"
STORE_LOG_EVERY = 10.0

log = logging.getLogger(__name__)


class _StoreLog:
    """When a store failure's detail was last logged, and how many since."""

    at = float("-inf")
    unlogged = 0


# Looked up along the exception's MRO, so a subclass maps like its parent
# unless listed itself.
STATUS_BY_ERROR: dict[type[errors.ChronicleError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ValidationError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    errors.AggregateNotFound: grpc.StatusCode.NOT_FOUND,
    errors.VersionNotReached: grpc.StatusCode.OUT_OF_RANGE,
    errors.ResourceNotFound: grpc.StatusCode.NOT_FOUND,
    # The log went back under the reader: no retry heals it, a deliberate
    # re-sync does.
    errors.LogRewound: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.ProjectionFailed: grpc.StatusCode.INTERNAL,
    errors.ProjectionStopped: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AggregateTypeMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    errors.WrongExpectedVersion: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ConcurrencyConflict: grpc.StatusCode.ABORTED,
    errors.CommandIdReused: grpc.StatusCode.ALREADY_EXISTS,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.CredentialsChanged: grpc.StatusCode.UNAVAILABLE,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.AggregateForgotten: grpc.StatusCode.FAILED_PRECONDITION,
    errors.DocumentForgotten: grpc.StatusCode.FAILED_PRECONDITION,
    # The read model needs a rebuild: asking again gets the same answer.
    errors.DocumentInTwoForms: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AggregateDeleted: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NotEncrypted: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NotConfirmed: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PayloadNotDecryptable: grpc.StatusCode.DATA_LOSS,
    errors.ImportConflict: grpc.StatusCode.FAILED_PRECONDITION,
    # Another import wrote there meanwhile: importing again decides.
    errors.ImportRaced: grpc.StatusCode.ABORTED,
    errors.NotAvailableHere: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ProjectionLoaded: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    # Not the caller's deadline (DEADLINE_EXCEEDED): the server ended the
    # stream, and consuming again is the cure (clients reopen on ABORTED).
    errors.ConsumerStalled: grpc.StatusCode.ABORTED,
    errors.HandlerFailed: grpc.StatusCode.INTERNAL,
    errors.ConfigurationError: grpc.StatusCode.INTERNAL,
    # A setting an operator fixes (the master-key file), like a read this
    # server's configuration cannot serve: no retry heals it.
    errors.MasterKeysUnfit: grpc.StatusCode.FAILED_PRECONDITION,
    # A stored event the loaded plugins cannot read: no retry heals it, a
    # deployment does (the plugin that reads it, a fixed upcaster). Not
    # INTERNAL, which clients read as the server's own fault.
    EventNotReadable: grpc.StatusCode.FAILED_PRECONDITION,
}

# Worth retrying after a pause; the client is told so with RetryInfo.
RETRY_AFTER_SECONDS: dict[grpc.StatusCode, float] = {
    grpc.StatusCode.ABORTED: 0.05,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 0.2,
    grpc.StatusCode.UNAVAILABLE: 1.0,
}


def status_code(error: errors.ChronicleError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = STATUS_BY_ERROR.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def _packed(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _violations(error: errors.ChronicleError) -> list[errors.FieldViolation]:
    violations = list(getattr(error, "violations", ()))
    field = getattr(error, "field", None)
    if field and not violations:
        violations = [errors.FieldViolation(field, error.message)]
    return violations


def _retry_delay(code: grpc.StatusCode, error: errors.ChronicleError) -> duration_pb2.Duration | None:
    """The error's own delay (``RateLimited.retry_after``: when the tokens
    will be there), else the code's."""
    delay = getattr(error, "retry_after", None)
    if delay is None:
        delay = RETRY_AFTER_SECONDS.get(code)
    if delay is None:
        return None
    seconds, fraction = divmod(delay, 1)
    return duration_pb2.Duration(seconds=int(seconds), nanos=int(fraction * 1e9))


def _log_detail(error: errors.ChronicleError) -> None:
    """The driver's text of a store the server cannot reach, which the
    caller is not told: in the server's log, now and then."""
    if not isinstance(error, errors.StoreUnavailable) or not error.detail:
        return
    now = time.monotonic()
    if now - _StoreLog.at < STORE_LOG_EVERY:
        _StoreLog.unlogged += 1
        return
    more, _StoreLog.unlogged, _StoreLog.at = _StoreLog.unlogged, 0, now
    since = f" ({more} more calls failed alike since the last such line)" if more else ""
    log.warning("a call failed %s: %s%s", error.reason, error.detail, since)


def rich_status(error: errors.ChronicleError) -> grpc.Status:
    _log_detail(error)
    code = status_code(error)
    details = [_packed(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata))]
    violations = _violations(error)
    if violations:
        details.append(
            _packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in violations
                    ]
                )
            )
        )
    delay = _retry_delay(code, error)
    if delay is not None:
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message, details=details)
    return rpc_status.to_status(status)


def command_error(error: errors.ChronicleError) -> command_service_pb2.CommandError:
    """The same answer as ``rich_status``, as a message: for one command's
    result inside a call that carries many (SubmitStream)."""
    _log_detail(error)
    code = status_code(error)
    return command_service_pb2.CommandError(
        code=getattr(code_pb2, code.name),
        message=error.message,
        reason=error.reason,
        metadata=error.metadata,
        field_violations=[
            command_service_pb2.FieldViolation(field=v.field, description=v.description) for v in _violations(error)
        ],
        retry_after=_retry_delay(code, error),
    )


def internal_status(message: str = "internal error") -> grpc.Status:
    return rich_status(errors.ChronicleError(message, reason="INTERNAL"))
