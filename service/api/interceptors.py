"""gRPC server interceptors: what happens to every RPC before its servicer.

``ConcurrencyLimit`` refuses an RPC when too many are in flight;
``Authentication`` establishes the caller's ``Principal`` (or refuses with
UNAUTHENTICATED) and publishes it in ``current_principal`` for the servicer.
Both refuse with the rich status of ``service.api.status``, and report a
refused RPC to an optional ``on_refused`` hook (the audit log records refused
commands through it).

The health service is exempt from both: load balancers probe it without
credentials, and it must answer when the server is busy.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from service.api.status import rich_status
from service.errors import ChronicleError, Overloaded, Unauthenticated
from service.security.credentials import Authenticator
from service.security.principal import Principal, current_principal

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)

# What the interceptor runs before the servicer: raise a ChronicleError to
# refuse the RPC; return a callable to run when the RPC ends (or None).
Gate = Callable[[str, object, grpc.aio.ServicerContext[Any, Any]], Awaitable[Callable[[], None] | None]]
OnRefused = Callable[[str, object, ChronicleError], Awaitable[None]]


def refused_rpc_hooks(*hooks: OnRefused | None) -> OnRefused:
    """One ``on_refused`` hook that calls each of ``hooks`` in turn."""

    async def each(method: str, request: object, error: ChronicleError) -> None:
        for hook in hooks:
            if hook is not None:
                await hook(method, request, error)

    return each


class HandlerCache:
    """The handlers an interceptor returned, by method and inner handler.

    gRPC asks every interceptor for every RPC, but what one returns depends
    only on those two, and building it (closures and a new method handler)
    cost the event loop on every call. Bounded, in case an inner interceptor
    builds a new handler per call.
    """

    LIMIT = 1024

    def __init__(self) -> None:
        self._handlers: dict[tuple[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler] = {}

    def get(
        self, method: str, handler: grpc.RpcMethodHandler, build: Callable[[], grpc.RpcMethodHandler]
    ) -> grpc.RpcMethodHandler:
        key = (method, handler)
        wrapped = self._handlers.get(key)
        if wrapped is None:
            if len(self._handlers) >= self.LIMIT:
                self._handlers.clear()
            wrapped = self._handlers[key] = build()
        return wrapped


def _exempt(method: str) -> bool:
    return method.startswith(EXEMPT_PREFIXES)


async def _refuse(
    context: grpc.aio.ServicerContext[Any, Any],
    method: str,
    request: object,
    error: ChronicleError,
    on_refused: OnRefused | None,
) -> None:
    if on_refused is not None:
        await on_refused(method, request, error)
    await context.abort_with_status(rich_status(error))


def gated(handler: grpc.RpcMethodHandler, method: str, gate: Gate, on_refused: OnRefused | None) -> Any:
    """``handler`` with ``gate`` run first, for each of the four RPC shapes."""

    async def enter(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Callable[[], None] | None:
        try:
            return await gate(method, request, context)
        except ChronicleError as error:
            await _refuse(context, method, request, error, on_refused)
            raise  # not reached: abort raises

    async def leave_after(leave: Callable[[], None] | None) -> None:
        if leave is not None:
            leave()

    # grpc.aio tells coroutine and async-generator behaviours from sync ones
    # by inspecting the function, so each shape gets a real ``async def``.
    options = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            leave = await enter(request, context)
            try:
                return await inner_uu(request, context)
            finally:
                await leave_after(leave)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **options)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            leave = await enter(request, context)
            try:
                async for item in _produce(inner_us(request, context)):
                    yield item
            finally:
                await leave_after(leave)

        return grpc.unary_stream_rpc_method_handler(unary_stream, **options)
    # Streamed requests: the gate sees None and must not read them.
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            leave = await enter(None, context)
            try:
                return await inner_su(requests, context)
            finally:
                await leave_after(leave)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **options)
    inner_ss = handler.stream_stream

    async def stream_stream(requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        leave = await enter(None, context)
        try:
            async for item in _produce(inner_ss(requests, context)):
                yield item
        finally:
            await leave_after(leave)

    return grpc.stream_stream_rpc_method_handler(stream_stream, **options)


async def _produce(produced: Any) -> AsyncIterator[Any]:
    """Items of an async-generator behaviour; a behaviour that writes with
    ``context.write`` instead is a coroutine, awaited for its side effects."""
    if inspect.isasyncgen(produced):
        async for item in produced:
            yield item
    else:
        await produced


SUBSCRIBE_METHOD = "/chronicle.v1.EventService/Subscribe"


class ConcurrencyLimit(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """At most ``limit`` RPCs in flight; one more is RESOURCE_EXHAUSTED
    (reason TOO_MANY_REQUESTS, with RetryInfo) before anything runs.

    Subscriptions live as long as their clients want, so they are counted
    apart (``subscription_limit``, reason TOO_MANY_SUBSCRIPTIONS): open
    subscribers must not leave no room for commands.
    """

    def __init__(self, limit: int, *, subscription_limit: int, on_refused: OnRefused | None = None) -> None:
        self.limit = limit
        self.subscription_limit = subscription_limit
        self.in_flight = 0
        self.subscriptions = 0
        self._on_refused = on_refused
        self._handlers = HandlerCache()

    async def _subscription_gate(
        self, method: str, request: object, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Callable[[], None]:
        if self.subscriptions >= self.subscription_limit:
            raise Overloaded(
                f"the server has {self.subscription_limit} open subscriptions; retry later",
                reason="TOO_MANY_SUBSCRIPTIONS",
                metadata={"max_subscriptions": str(self.subscription_limit)},
            )
        self.subscriptions += 1

        def leave() -> None:
            self.subscriptions -= 1

        return leave

    async def _gate(
        self, method: str, request: object, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Callable[[], None]:
        if self.in_flight >= self.limit:
            raise Overloaded(
                f"the server is handling {self.limit} calls; retry later",
                reason="TOO_MANY_REQUESTS",
                metadata={"max_concurrent_rpcs": str(self.limit)},
            )
        self.in_flight += 1

        def leave() -> None:
            self.in_flight -= 1

        return leave

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or _exempt(method):
            return handler
        gate = self._subscription_gate if method == SUBSCRIBE_METHOD else self._gate
        return self._handlers.get(method, handler, lambda: gated(handler, method, gate, self._on_refused))


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            values.setdefault(key.lower(), value)
    return values


def _peer_certificate(context: grpc.aio.ServicerContext[Any, Any]) -> bytes | None:
    certificates = context.auth_context().get("x509_pem_cert") or []
    return bytes(certificates[0]) if certificates else None


class Authentication(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Sets ``current_principal`` for each RPC, or refuses it UNAUTHENTICATED."""

    def __init__(self, authenticator: Authenticator, *, on_refused: OnRefused | None = None) -> None:
        self._authenticator = authenticator
        self._on_refused = on_refused
        self._handlers = HandlerCache()

    async def _gate(self, method: str, request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            principal = self._authenticator.authenticate(_metadata(context), _peer_certificate(context))
        except ValueError as error:  # an unparsable peer certificate
            raise Unauthenticated(f"the client certificate is unusable: {error}", reason="BAD_CERTIFICATE") from None
        # Each RPC runs in a task of its own, so the value ends with the RPC.
        current_principal.set(principal)
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or _exempt(method):
            return handler
        return self._handlers.get(method, handler, lambda: gated(handler, method, self._gate, self._on_refused))


def caller() -> Principal:
    """The principal of the RPC being served (anonymous with auth off)."""
    return current_principal.get()
