"""The RPC's span: a gRPC server interceptor, installed only when spans
would reach anyone (``service.observability.tracing.wanted``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from service.api.interceptors import HandlerCache, gated
from service.observability.tracing import INSTRUMENTATION


class TracingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A SERVER span per RPC, continuing the client's trace."""

    def __init__(self, tracer_provider: Any = None) -> None:
        from opentelemetry import trace

        self._tracer = trace.get_tracer(INSTRUMENTATION, tracer_provider=tracer_provider)
        self._handlers = HandlerCache()

    async def _gate(
        self, method: str, request: object, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Callable[[], None]:
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
        return span.end

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
