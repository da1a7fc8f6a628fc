"""Helpers for gRPC aio server interceptors (tracing is one, when a tracer
provider is configured): a gate run before a handler, for each RPC shape,
and a cache of the wrapped handlers. Chronicle's own per-RPC checks are not
interceptors: see ``service.api.gate``."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from service.api.status import rich_status
from service.errors import ChronicleError

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)

# Run when the RPC ends, with what its handler raised (None: it returned;
# an abort is the grpc.aio.AbortError its status was sent with).
Leave = Callable[[BaseException | None], None]
# What the interceptor runs before the servicer: raise a ChronicleError to
# refuse the RPC; return a ``Leave`` to run when the RPC ends (or None).
Gate = Callable[[str, object, grpc.aio.ServicerContext[Any, Any]], Awaitable[Leave | None]]
OnRefused = Callable[[str, object, ChronicleError], Awaitable[None]]


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

    async def enter(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Leave | None:
        try:
            return await gate(method, request, context)
        except ChronicleError as error:
            await _refuse(context, method, request, error, on_refused)
            raise  # not reached: abort raises

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
            raised: BaseException | None = None
            try:
                return await inner_uu(request, context)
            except BaseException as error:
                raised = error
                raise
            finally:
                if leave is not None:
                    leave(raised)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **options)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            leave = await enter(request, context)
            raised: BaseException | None = None
            try:
                async for item in produce(inner_us(request, context)):
                    yield item
            except BaseException as error:
                raised = error
                raise
            finally:
                if leave is not None:
                    leave(raised)

        return grpc.unary_stream_rpc_method_handler(unary_stream, **options)
    # Streamed requests: the gate sees None and must not read them.
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            leave = await enter(None, context)
            raised: BaseException | None = None
            try:
                return await inner_su(requests, context)
            except BaseException as error:
                raised = error
                raise
            finally:
                if leave is not None:
                    leave(raised)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **options)
    inner_ss = handler.stream_stream

    async def stream_stream(requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        leave = await enter(None, context)
        raised: BaseException | None = None
        try:
            async for item in produce(inner_ss(requests, context)):
                yield item
        except BaseException as error:
            raised = error
            raise
        finally:
            if leave is not None:
                leave(raised)

    return grpc.stream_stream_rpc_method_handler(stream_stream, **options)


async def produce(produced: Any) -> AsyncIterator[Any]:
    """Items of an async-generator behaviour; a behaviour that writes with
    ``context.write`` instead is a coroutine, awaited for its side effects."""
    if inspect.isasyncgen(produced):
        async for item in produced:
            yield item
    else:
        await produced
