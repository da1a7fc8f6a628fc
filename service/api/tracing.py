"""The RPC's span: a gRPC server interceptor, installed only when spans
would reach anyone (``service.observability.tracing.wanted``).

The span follows OpenTelemetry's semantic conventions for a gRPC server
span: ``rpc.system``, ``rpc.service`` and ``rpc.method`` from the start, and
as it ends the status code the call ended with, ``rpc.grpc.status_code``
(its number: 0 for OK, 3 for INVALID_ARGUMENT, …), on every span. Its status
is ERROR only for the codes that say the server failed (UNKNOWN,
DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS); a call
the server refused for the caller's reasons (INVALID_ARGUMENT,
FAILED_PRECONDITION, PERMISSION_DENIED, …) leaves it unset, as the
conventions say of server spans, and is told by its code. A refusal's
machine-readable reason (its ``ErrorInfo``) is ``chronicle.reason``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from service.api.interceptors import HandlerCache, Leave, gated
from service.observability.tracing import INSTRUMENTATION

# The codes of a server span whose status is ERROR (the others: unset).
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
STATUS_DETAILS_KEY = "grpc-status-details-bin"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class TracingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A SERVER span per RPC, continuing the client's trace."""

    def __init__(self, tracer_provider: Any = None) -> None:
        from opentelemetry import trace

        self._tracer = trace.get_tracer(INSTRUMENTATION, tracer_provider=tracer_provider)
        self._handlers = HandlerCache()

    async def _gate(self, method: str, request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Leave:
        from opentelemetry import context as otel_context
        from opentelemetry import propagate, trace

        carrier = {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        parent = propagate.extract(carrier)
        service, _, rpc = method.lstrip("/").partition("/")
        span = self._tracer.start_span(
            method.lstrip("/"),
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc},
        )
        # The RPC runs in a task of its own: what it attaches ends with it.
        otel_context.attach(trace.set_span_in_context(span, parent))
        return partial(_ended, span, context)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        return self._handlers.get(method, handler, lambda: gated(handler, method, self._gate, None))


def _ended(span: Any, context: grpc.aio.ServicerContext[Any, Any], raised: BaseException | None) -> None:
    """End ``span`` with the status the call ended with."""
    code = status_code(context, raised)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code != grpc.StatusCode.OK:
        reason = _reason(context)
        if reason:
            span.set_attribute("chronicle.reason", reason)
        if code in SERVER_ERRORS:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {reason or context.details() or ''}"))
    span.end()


def status_code(context: grpc.aio.ServicerContext[Any, Any], raised: BaseException | None) -> grpc.StatusCode:
    """The code of the call's status: the one it was aborted with (every
    refusal and failure, through the gate), else OK for a handler that
    returned; CANCELLED for one cancelled (the client went away), UNKNOWN
    for one that raised past everything (as gRPC answers it)."""
    code = context.code()
    if code is not None:
        return code if isinstance(code, grpc.StatusCode) else _CODES.get(code, grpc.StatusCode.UNKNOWN)
    if raised is None:
        return grpc.StatusCode.OK
    if isinstance(raised, asyncio.CancelledError | GeneratorExit) or context.cancelled():
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _reason(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The ``ErrorInfo`` reason of the status the call was aborted with."""
    for key, value in context.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            info = error_details_pb2.ErrorInfo()
            for detail in status.details:
                if detail.Unpack(info):
                    return str(info.reason)
    return ""
