"""What the server's refusals look like to a Python client.

Every error status becomes a :class:`RemoteError`, typed by its gRPC code,
carrying what the server put in the ``google.rpc`` details: the
machine-readable ``reason`` (``ErrorInfo``), its ``metadata``, the fields at
fault (``BadRequest``) and how long to wait before retrying (``RetryInfo``).
The classes are rooted in the project's one tree, so ``except
ChronicleError`` catches them too::

    ChronicleError (service.errors)
    └── RemoteError             any error status; code, reason, metadata, …
        ├── InvalidArgument         the command or request is malformed, or a rule on its input
        ├── FailedPrecondition      a rule on the aggregate's state; WRONG_EXPECTED_VERSION
        │   └── LogRewound              LOG_REWOUND: the log went back under a subscription (re-sync)
        ├── NotFound                the aggregate does not exist (and the command cannot create it)
        ├── OutOfRange              a version the aggregate has not reached (VERSION_NOT_REACHED)
        ├── AlreadyExists           it exists; or COMMAND_ID_REUSED
        ├── Aborted                 concurrent writers kept conflicting (retried)
        ├── ResourceExhausted       a queue or limit is full (retried when the server says when)
        ├── Unavailable             server or store unreachable (retried)
        ├── DeadlineExceeded        no answer in time (retried)
        ├── Unauthenticated
        ├── PermissionDenied
        ├── Internal                a handler failed; nothing was written
        ├── Cancelled               the server cancelled the call (it stopped; retried)
        ├── Unknown                 an error without a status (a server or proxy fault)
        ├── Unimplemented           the server has no such method (an older server)
        └── DataLoss                the store lost or corrupted data
    └── ClientUsageError        the client was used where it cannot work (no call was sent)
        ├── WrongEventLoop          from another event loop than the one it is bound to (WRONG_EVENT_LOOP)
        └── ClientClosed            after ``close()`` (CLIENT_CLOSED)
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chronicle.v1 import command_service_pb2
from service.errors import ChronicleError, FieldViolation


class RemoteError(ChronicleError):
    """An error status from the server. ``reason`` is the ``ErrorInfo``
    reason, or the code's name when the status carried none (a transport
    failure, say). ``retry_delay`` is the server's ``RetryInfo`` in seconds,
    None when it sent none."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        reason: str,
        metadata: Mapping[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.code = code
        self.field_violations = field_violations
        self.retry_delay = retry_delay
        # The ids of the commands a submit sent (set by submit and
        # submit_batch, also when the client made them up): after an error
        # that leaves the outcome unknown (DeadlineExceeded, Unavailable
        # once the retries are spent), the same ids sent again run at most
        # once and answer what was done.
        self.command_ids: tuple[str, ...] = ()

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed when made again (with the
        same command ids): see :func:`retryable`."""
        return retryable(self)

    @property
    def command_id(self) -> str | None:
        """The id of the one command a ``submit`` sent (None otherwise)."""
        return self.command_ids[0] if len(self.command_ids) == 1 else None

    def __str__(self) -> str:
        """'CODE REASON: message'; the reason left out when the server sent
        none (it is then the code's name: 'UNAVAILABLE: ...')."""
        reason = f" {self.reason}" if self.reason != self.code.name else ""
        return f"{self.code.name}{reason}: {self.message}"


class InvalidArgument(RemoteError):
    pass


class FailedPrecondition(RemoteError):
    pass


class LogRewound(FailedPrecondition):
    """FAILED_PRECONDITION ``LOG_REWOUND``: the log no longer holds what a
    subscription had read up to ``metadata["position"]`` (its end is now
    ``metadata["log_head"]``): the database was restored from an older copy,
    or failed over to a standby that lost its last commits, and events
    written since may sit at reused positions. Resuming would skip them, so
    the subscription stops: re-sync deliberately (docs/subscriptions.md,
    "When the log goes back"), never simply retry."""


class NotFound(RemoteError):
    pass


class OutOfRange(RemoteError):
    pass


class AlreadyExists(RemoteError):
    pass


class Aborted(RemoteError):
    pass


class ResourceExhausted(RemoteError):
    pass


class Unavailable(RemoteError):
    pass


class DeadlineExceeded(RemoteError):
    pass


class Unauthenticated(RemoteError):
    pass


class PermissionDenied(RemoteError):
    pass


class Internal(RemoteError):
    pass


class Cancelled(RemoteError):
    """CANCELLED from the server (one that stops cancels the calls it had
    not started); a caller's own cancellation is ``asyncio.CancelledError``."""


class Unknown(RemoteError):
    pass


class Unimplemented(RemoteError):
    pass


class DataLoss(RemoteError):
    pass


# Codes after which the same call may succeed: conflicts, a full queue, a
# server or store that is away, and a lost answer. CANCELLED here is never
# the caller's own doing (grpc.aio raises asyncio.CancelledError for that):
# a server that stops cancels the calls it received but had not started.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)


def retryable(error: RemoteError) -> bool:
    """Whether the same call may succeed when made again after ``error``
    (stale credentials aside): a code of ``RETRYABLE``, and
    ``RESOURCE_EXHAUSTED`` only with the server's ``RetryInfo`` (a full
    server, say TOO_MANY_SUBSCRIPTIONS; not gRPC's own "message too large").
    A command sent again must keep its command id (``error.command_ids``)."""
    if error.code not in RETRYABLE:
        return False
    return error.code != grpc.StatusCode.RESOURCE_EXHAUSTED or error.retry_delay is not None


class ClientUsageError(ChronicleError):
    """The client was used where it cannot work; nothing was sent."""


class WrongEventLoop(ClientUsageError):
    """A call from outside any event loop, or from another loop than the
    one the client's first call bound it to (reason WRONG_EVENT_LOOP)."""

    default_reason = "WRONG_EVENT_LOOP"


class ClientClosed(ClientUsageError):
    """A call after ``close()`` (reason CLIENT_CLOSED)."""

    default_reason = "CLIENT_CLOSED"


# What grpc.aio reports for a stream call when Core refused one of the
# client's writes because the call had already ended: the server's status
# came in as the client wrote, and grpc.aio replaces it with this one
# (grpc/grpc#36066). The server's status is lost, so the call's outcome is
# unknown; it is not an error of the server's.
_LOST_STATUS_DETAILS = "Internal error from Core"


def status_lost(error: grpc.aio.AioRpcError) -> bool:
    """Whether ``error`` is grpc.aio's stand-in for a stream's status it
    lost (``_LOST_STATUS_DETAILS``), rather than a status a server sent."""
    code: grpc.StatusCode = error.code()
    details: str | None = error.details()
    return code == grpc.StatusCode.INTERNAL and details == _LOST_STATUS_DETAILS


# The one table from gRPC codes to client errors; other codes are RemoteError.
ERROR_BY_CODE: dict[grpc.StatusCode, type[RemoteError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNKNOWN: Unknown,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.DATA_LOSS: DataLoss,
}


# Reasons with a class of their own (a subclass of their code's).
ERROR_BY_REASON: dict[str, type[RemoteError]] = {"LOG_REWOUND": LogRewound}


def remote_error(error: grpc.aio.AioRpcError) -> RemoteError:
    """The typed error for a failed call, with its rich details decoded."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or code.name
    reason, metadata, retry_delay = code.name, {}, None
    violations: tuple[FieldViolation, ...] = ()
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # a details trailer that contradicts the status: ignore it
        status = None
    for detail in status.details if status is not None else ():
        info, bad, retry = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest(), error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reason, metadata = info.reason or reason, dict(info.metadata)
        elif detail.Unpack(bad):
            violations = tuple(FieldViolation(v.field, v.description) for v in bad.field_violations)
        elif detail.Unpack(retry):
            retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
    cls = ERROR_BY_REASON.get(reason) or ERROR_BY_CODE.get(code, RemoteError)
    return cls(
        message, code=code, reason=reason, metadata=metadata, field_violations=violations, retry_delay=retry_delay
    )


_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def command_error(error: command_service_pb2.CommandError) -> RemoteError:
    """The typed error for one refused command of a stream, which carries in
    a ``CommandError`` what a unary call carries in its status."""
    code = _CODE_BY_NUMBER.get(error.code, grpc.StatusCode.UNKNOWN)
    cls = ERROR_BY_CODE.get(code, RemoteError)
    return cls(
        error.message or code.name,
        code=code,
        reason=error.reason or code.name,
        metadata=dict(error.metadata),
        field_violations=tuple(FieldViolation(v.field, v.description) for v in error.field_violations),
        retry_delay=error.retry_after.ToTimedelta().total_seconds() if error.HasField("retry_after") else None,
    )
