"""Requests whose bytes do not parse: a clear INVALID_ARGUMENT, not UNKNOWN.

gRPC parses a request with the handler's deserializer before any of our
code runs, and when that raises (truncated or corrupt Protobuf, a string
field holding invalid UTF-8) it answers UNKNOWN with the exception's text,
which a client cannot tell from a server bug. ``RequestDecoding`` gives every
handler a deserializer that never raises: bytes that do not parse become an
``Undecodable`` value, refused as INVALID_ARGUMENT (reason
MALFORMED_REQUEST) with the parser's explanation before the servicer runs.

It is the innermost interceptor, so the limits and authentication still come
first: a caller without credentials learns nothing from sending garbage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from service.api.interceptors import HandlerCache, OnRefused, gated
from service.errors import InvalidInput

MALFORMED_REQUEST = "MALFORMED_REQUEST"


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What arrived instead of a request: the bytes did not parse."""

    message_type: str
    problem: str

    def error(self) -> InvalidInput:
        return InvalidInput(
            f"the request does not parse as {self.message_type}: {self.problem}",
            reason=MALFORMED_REQUEST,
            metadata={"message_type": self.message_type},
        )


def tolerant(deserializer: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    """``deserializer`` returning ``Undecodable`` where it would raise."""
    owner = getattr(deserializer, "__self__", None)  # Message.FromString is a classmethod
    descriptor = getattr(owner, "DESCRIPTOR", None)
    message_type = str(descriptor.full_name) if descriptor is not None else f"request of {method}"

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, TypeError) as error:
            # Protobuf's text repeats the message type: keep only its cause.
            problem = str(error).rpartition(": ")[2] or type(error).__name__
            return Undecodable(message_type, problem)

    return deserialize


async def _refuse_undecodable(
    method: str, request: object, context: grpc.aio.ServicerContext[Any, Any]
) -> Callable[[], None] | None:
    if isinstance(request, Undecodable):
        raise request.error()
    return None


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream that ends in InvalidInput at the first message that
    did not parse (the servicer's guard turns that into the status)."""
    async for request in requests:
        if isinstance(request, Undecodable):
            raise request.error()
        yield request


def _streamed_requests(handler: grpc.RpcMethodHandler, deserializer: Callable[[bytes], Any]) -> Any:
    options = {"request_deserializer": deserializer, "response_serializer": handler.response_serializer}
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await inner_su(_checked(requests), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **options)
    inner_ss = handler.stream_stream

    async def stream_stream(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async for response in inner_ss(_checked(requests), context):
            yield response

    return grpc.stream_stream_rpc_method_handler(stream_stream, **options)


class RequestDecoding(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses requests that do not parse with INVALID_ARGUMENT / MALFORMED_REQUEST."""

    def __init__(self, *, on_refused: OnRefused | None = None) -> None:
        self._on_refused = on_refused
        self._handlers = HandlerCache()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        return self._handlers.get(method, handler, lambda: self._decoding(handler, method))

    def _decoding(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        deserializer = tolerant(handler.request_deserializer, method)
        if handler.request_streaming:
            return _streamed_requests(handler, deserializer)
        options = {"request_deserializer": deserializer, "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            replaced = grpc.unary_unary_rpc_method_handler(handler.unary_unary, **options)
        else:
            replaced = grpc.unary_stream_rpc_method_handler(handler.unary_stream, **options)
        return gated(replaced, method, _refuse_undecodable, self._on_refused)
