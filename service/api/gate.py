"""What happens to every RPC before its servicer, in one place.

In order: the concurrency limit (too many RPCs in flight, or too many open
subscriptions: RESOURCE_EXHAUSTED), authentication (with ``--auth``: the
caller's ``Principal`` in ``current_principal``, or UNAUTHENTICATED), and
request decoding (bytes that do not parse: INVALID_ARGUMENT /
MALFORMED_REQUEST, where gRPC alone would say UNKNOWN). A refusal uses the
rich status of ``service.api.status`` and is reported to ``on_refused`` (the
audit log records refused commands through it).

``RpcGate.wrap`` is applied to each method handler once, when the server is
built (``service.api.server``), not as gRPC interceptors: gRPC's aio server
runs its interceptor chain for every call (a coroutine per interceptor, and
a wrapped handler looked up again), which cost every RPC about 60 µs of the
event loop's time. Here a call pays one wrapper coroutine.

The health service is exempt: load balancers probe it without credentials,
and it must answer when the server is busy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from service.api.decoding import Undecodable, tolerant
from service.api.interceptors import produce
from service.api.status import rich_status
from service.errors import ChronicleError, Overloaded, Unauthenticated
from service.security.credentials import Authenticator
from service.security.principal import current_principal

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
SUBSCRIBE_METHOD = "/chronicle.v1.EventService/Subscribe"

# Called with (method, request or None, error) when the gate refuses an RPC.
OnRefused = Callable[[str, object, ChronicleError], Awaitable[None]]
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def refused_rpc_hooks(*hooks: OnRefused | None) -> OnRefused:
    """One ``on_refused`` hook that calls each of ``hooks`` in turn."""

    async def each(method: str, request: object, error: ChronicleError) -> None:
        for hook in hooks:
            if hook is not None:
                await hook(method, request, error)

    return each


class RpcGate:
    """At most ``max_rpcs`` RPCs in flight (subscriptions, which live as long
    as their clients want, counted apart up to ``max_subscriptions``, so that
    open subscribers never leave no room for commands); each caller
    authenticated when ``authenticator`` is set; each request parsed."""

    def __init__(
        self,
        *,
        max_rpcs: int,
        max_subscriptions: int,
        authenticator: Authenticator | None = None,
        on_refused: OnRefused | None = None,
    ) -> None:
        self.max_rpcs = max_rpcs
        self.max_subscriptions = max_subscriptions
        self.in_flight = 0
        self.subscriptions = 0
        self._authenticator = authenticator
        self._on_refused = on_refused

    # -- per call ------------------------------------------------------------

    def _admit(self, subscription: bool, request: object, context: Context) -> None:
        """Raise the refusal, or count the call in (the caller counts it out)."""
        if subscription:
            if self.subscriptions >= self.max_subscriptions:
                raise Overloaded(
                    f"the server has {self.max_subscriptions} open subscriptions; retry later",
                    reason="TOO_MANY_SUBSCRIPTIONS",
                    metadata={"max_subscriptions": str(self.max_subscriptions)},
                )
        elif self.in_flight >= self.max_rpcs:
            raise Overloaded(
                f"the server is handling {self.max_rpcs} calls; retry later",
                reason="TOO_MANY_REQUESTS",
                metadata={"max_concurrent_rpcs": str(self.max_rpcs)},
            )
        if self._authenticator is not None:
            self._authenticate(context)
        if isinstance(request, Undecodable):
            raise request.error()
        if subscription:
            self.subscriptions += 1
        else:
            self.in_flight += 1

    def _leave(self, subscription: bool) -> None:
        if subscription:
            self.subscriptions -= 1
        else:
            self.in_flight -= 1

    def _authenticate(self, context: Context) -> None:
        assert self._authenticator is not None
        try:
            principal = self._authenticator.authenticate(_metadata(context), _peer_certificate(context))
        except ValueError as error:  # an unparsable peer certificate
            raise Unauthenticated(f"the client certificate is unusable: {error}", reason="BAD_CERTIFICATE") from None
        # Each RPC runs in a task of its own, so the value ends with the RPC.
        current_principal.set(principal)

    async def _refuse(self, method: str, request: object, context: Context, error: ChronicleError) -> None:
        if self._on_refused is not None:
            await self._on_refused(method, None if isinstance(request, Undecodable) else request, error)
        await context.abort_with_status(rich_status(error))

    # -- at registration ---------------------------------------------------------

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` behind the gate, for each of the four RPC shapes."""
        if method.startswith(EXEMPT_PREFIXES) or handler.request_deserializer is None:
            return handler
        subscription = method == SUBSCRIBE_METHOD
        options = {
            "request_deserializer": tolerant(handler.request_deserializer, method),
            "response_serializer": handler.response_serializer,
        }
        admit, leave, refuse = self._admit, self._leave, self._refuse
        # grpc.aio tells coroutine and async-generator behaviours from plain
        # ones by inspecting the function, so each shape is a real ``async def``.
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: object, context: Context) -> Any:
                try:
                    admit(subscription, request, context)
                except ChronicleError as error:
                    await refuse(method, request, context, error)
                try:
                    return await inner_uu(request, context)
                finally:
                    leave(subscription)

            return grpc.unary_unary_rpc_method_handler(unary_unary, **options)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: object, context: Context) -> AsyncIterator[Any]:
                try:
                    admit(subscription, request, context)
                except ChronicleError as error:
                    await refuse(method, request, context, error)
                try:
                    async for item in produce(inner_us(request, context)):
                        yield item
                finally:
                    leave(subscription)

            return grpc.unary_stream_rpc_method_handler(unary_stream, **options)
        # Streamed requests: the gate sees None, and each message is checked
        # as it is read (the servicer's guard turns the error into the status).
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
                try:
                    admit(subscription, None, context)
                except ChronicleError as error:
                    await refuse(method, None, context, error)
                try:
                    return await inner_su(_checked(requests), context)
                finally:
                    leave(subscription)

            return grpc.stream_unary_rpc_method_handler(stream_unary, **options)
        inner_ss = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            try:
                admit(subscription, None, context)
            except ChronicleError as error:
                await refuse(method, None, context, error)
            try:
                async for item in produce(inner_ss(_checked(requests), context)):
                    yield item
            finally:
                leave(subscription)

        return grpc.stream_stream_rpc_method_handler(stream_stream, **options)


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream that ends in InvalidInput at the first message that
    did not parse."""
    async for request in requests:
        if isinstance(request, Undecodable):
            raise request.error()
        yield request


def _metadata(context: Context) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            values.setdefault(key.lower(), value)
    return values


def _peer_certificate(context: Context) -> bytes | None:
    certificates = context.auth_context().get("x509_pem_cert") or []
    return bytes(certificates[0]) if certificates else None
