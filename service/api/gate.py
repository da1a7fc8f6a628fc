"""What happens to every RPC around its servicer, in one place.

Before it, in order: the concurrency limit (too many RPCs in flight, or too many open
subscriptions: RESOURCE_EXHAUSTED), authentication (with ``--auth``: the
caller's ``Principal`` in ``current_principal``, or UNAUTHENTICATED), and
request decoding (bytes that do not parse: INVALID_ARGUMENT /
MALFORMED_REQUEST, where gRPC alone would say UNKNOWN). A refusal uses the
rich status of ``service.api.status`` and is reported to ``on_refused`` (the
audit log records refused calls through it, with the caller's address).
Around it: what the servicer raises becomes a status, a Chronicle error its
own (``service.api.status``), anything else INTERNAL without internals (the
bug is logged with its traceback); a PERMISSION_DENIED the servicer raised
is reported to ``on_denied`` first (the audit log records denied reads).

``RpcGate.wrap`` is applied to each method handler once, when the server is
built (``service.api.server``), not as gRPC interceptors: gRPC's aio server
runs its interceptor chain for every call (a coroutine per interceptor, and
a wrapped handler looked up again), which cost every RPC about 60 µs of the
event loop's time. Here a call pays one wrapper coroutine.

The health service is exempt from the limits and from authentication: load
balancers probe it without credentials, and it must answer when the server
is busy. Its requests are still parsed as every other's: one that does not
parse is INVALID_ARGUMENT / MALFORMED_REQUEST (``parsed_only``), where gRPC
alone would answer UNKNOWN with Python's exception text and log a traceback.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from grpc._cython.cygrpc import ExecuteBatchError

from service.api.decoding import Undecodable, UnparsableMessage, raising, tolerant
from service.api.live_streams import LiveStream, LiveStreams
from service.api.status import internal_status, rich_status
from service.errors import ChronicleError, Overloaded, PermissionDenied, Unauthenticated
from service.principal import Principal, current_peer, current_principal
from service.security.credentials import Authenticator

log = logging.getLogger(__name__)

# What a write raises when its call ended under it (the client cancelled
# while the write waited for flow control): grpc.aio's own handler treats it
# so. Not a public name of grpc's; an ExecuteBatchError is an Exception.
CallGone: type[Exception] = ExecuteBatchError
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
SUBSCRIBE_METHOD = "/chronicle.v1.EventService/Subscribe"
# Streams that live as long as their clients want: counted as subscriptions
# (a routing client's topology watch too: counted as an RPC, enough idle
# watchers would leave no room for commands).
SUBSCRIPTION_METHODS = frozenset(
    {
        SUBSCRIBE_METHOD,
        "/chronicle.v1.SubscriptionGroupService/Consume",
        "/chronicle.v1.ClusterService/WatchTopology",
    }
)

# Called with (method, request or None, error, the caller if it was
# authenticated, its address as gRPC gives it) when the gate refuses an RPC,
# or (``on_denied``) the servicer denies it.
OnRefused = Callable[[str, object, ChronicleError, Principal | None, str], Awaitable[None]]
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def refused_rpc_hooks(*hooks: OnRefused | None) -> OnRefused:
    """One ``on_refused`` hook that calls each of ``hooks`` in turn."""

    async def each(method: str, request: object, error: ChronicleError, principal: Principal | None, peer: str) -> None:
        for hook in hooks:
            if hook is not None:
                await hook(method, request, error, principal, peer)

    return each


class RpcGate:
    """At most ``max_rpcs`` RPCs in flight (subscriptions, which live as long
    as their clients want, counted apart up to ``max_subscriptions``, so that
    open subscribers never leave no room for commands); each caller
    authenticated when ``authenticator`` is set, and then held to quotas of
    its own: ``max_rpcs_per_principal`` RPCs and
    ``max_subscriptions_per_principal`` subscriptions at once, so that one
    principal cannot take every place, and, when it has a tenant
    (``tenant_of``: the policy's answer), at most ``max_rpcs_per_tenant``
    RPCs and ``max_subscriptions_per_tenant`` subscriptions by all its
    tenant's principals together, so that one tenant's many principals
    cannot lock the other tenants out; each request parsed.

    With authentication off every caller is the same anonymous one, and the
    server-wide limits are its only bounds. Per call, a quota costs a dict
    lookup on the way in and one on the way out."""

    def __init__(
        self,
        *,
        max_rpcs: int,
        max_subscriptions: int,
        max_rpcs_per_principal: int | None = None,
        max_subscriptions_per_principal: int | None = None,
        max_rpcs_per_tenant: int = 0,
        max_subscriptions_per_tenant: int = 0,
        tenant_of: Callable[[Principal], str] | None = None,
        authenticator: Authenticator | None = None,
        on_refused: OnRefused | None = None,
        on_denied: OnRefused | None = None,
        grant_of: Callable[[Principal], object] | None = None,
    ) -> None:
        """``grant_of``: what the policy grants a principal; a stream whose
        principal's grant changes is ended (``service.api.live_streams``).
        ``max_rpcs_per_tenant``, ``max_subscriptions_per_tenant``: 0, no
        tenant's limit of that kind."""
        self.max_rpcs = max_rpcs
        self.max_subscriptions = max_subscriptions
        self.max_rpcs_per_principal = max_rpcs_per_principal or max_rpcs
        self.max_subscriptions_per_principal = max_subscriptions_per_principal or max_subscriptions
        self.max_rpcs_per_tenant = max_rpcs_per_tenant
        self.max_subscriptions_per_tenant = max_subscriptions_per_tenant
        # Asked only where a tenant's limit of the call's kind is on: with
        # both off, a call pays no policy lookup.
        self._tenant_of = (
            tenant_of if tenant_of is not None and (max_rpcs_per_tenant or max_subscriptions_per_tenant) else None
        )
        self.in_flight = 0
        self.subscriptions = 0
        # Principal name -> its RPCs (subscriptions apart) and subscriptions
        # in flight; a name leaves when its count is back to 0.
        self.rpcs_of: dict[str, int] = {}
        self.subscriptions_of: dict[str, int] = {}
        # Tenant -> the RPCs (subscriptions apart) and subscriptions its
        # principals hold open; each counted under the tenant it was
        # admitted in (a reload that moves its principal counts its next
        # call elsewhere, not this one).
        self.rpcs_of_tenant: dict[str, int] = {}
        self.subscriptions_of_tenant: dict[str, int] = {}
        self._authenticator = authenticator
        self._on_refused = on_refused
        self._on_denied = on_denied
        # Authenticated streams, ended when their credentials or grants do.
        self.streams = (
            LiveStreams(authenticator, grant_of or (lambda principal: None)) if authenticator is not None else None
        )

    # -- per call ------------------------------------------------------------

    def _admit(
        self, subscription: bool, request: object, context: Context, stream: bool = False
    ) -> tuple[str | None, str, LiveStream | None]:
        """Raise the refusal, or count the call in and return the principal
        it is counted against (None: authentication is off), the tenant it
        is counted against ("": none, or no tenant's limit of its kind) and, for a ``stream``
        with authentication on, its registration in ``self.streams``; the
        caller counts it out (``_leave``)."""
        current_peer.set(context.peer)  # for audit entries written in the pipeline
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
        name = None
        tenant = ""
        credentials = None
        if self._authenticator is not None:
            credentials = self._authenticate(context)
            name = credentials[0].name
            held = (self.subscriptions_of if subscription else self.rpcs_of).get(name, 0)
            if held >= (self.max_subscriptions_per_principal if subscription else self.max_rpcs_per_principal):
                raise self._over_quota(subscription)
            tenant_limit = self.max_subscriptions_per_tenant if subscription else self.max_rpcs_per_tenant
            if tenant_limit and self._tenant_of is not None:
                tenant = self._tenant_of(credentials[0])
                of_tenant = self.subscriptions_of_tenant if subscription else self.rpcs_of_tenant
                if tenant and of_tenant.get(tenant, 0) >= tenant_limit:
                    raise self._over_tenant_quota(subscription, tenant)
        if isinstance(request, Undecodable):
            raise request.error()
        if subscription:
            self.subscriptions += 1
            if name is not None:
                self.subscriptions_of[name] = held + 1
            if tenant:
                self.subscriptions_of_tenant[tenant] = self.subscriptions_of_tenant.get(tenant, 0) + 1
        else:
            self.in_flight += 1
            if name is not None:
                self.rpcs_of[name] = held + 1
            if tenant:
                self.rpcs_of_tenant[tenant] = self.rpcs_of_tenant.get(tenant, 0) + 1
        if stream and credentials is not None and self.streams is not None:
            return name, tenant, self.streams.open(*credentials)
        return name, tenant, None

    def _over_quota(self, subscription: bool) -> Overloaded:
        if subscription:
            limit = self.max_subscriptions_per_principal
            return Overloaded(
                f"this principal has {limit} open subscriptions, its most; close one or retry later",
                reason="PRINCIPAL_TOO_MANY_SUBSCRIPTIONS",
                metadata={"max_subscriptions_per_principal": str(limit)},
            )
        limit = self.max_rpcs_per_principal
        return Overloaded(
            f"this principal has {limit} calls in flight, its most; retry later",
            reason="PRINCIPAL_TOO_MANY_REQUESTS",
            metadata={"max_rpcs_per_principal": str(limit)},
        )

    def _over_tenant_quota(self, subscription: bool, tenant: str) -> Overloaded:
        if not subscription:
            limit = self.max_rpcs_per_tenant
            return Overloaded(
                f"tenant {tenant!r} has {limit} calls in flight, its most; retry later",
                reason="TENANT_TOO_MANY_REQUESTS",
                metadata={"max_concurrent_rpcs_per_tenant": str(limit), "tenant": tenant},
            )
        limit = self.max_subscriptions_per_tenant
        return Overloaded(
            f"tenant {tenant!r} has {limit} open subscriptions, its most; close one or retry later",
            reason="TENANT_TOO_MANY_SUBSCRIPTIONS",
            metadata={"max_subscriptions_per_tenant": str(limit), "tenant": tenant},
        )

    def _leave(self, subscription: bool, name: str | None, tenant: str, stream: LiveStream | None = None) -> None:
        if stream is not None and self.streams is not None:
            self.streams.close(stream)
        if subscription:
            self.subscriptions -= 1
            counts, of_tenant = self.subscriptions_of, self.subscriptions_of_tenant
        else:
            self.in_flight -= 1
            counts, of_tenant = self.rpcs_of, self.rpcs_of_tenant
        if tenant:
            left = of_tenant[tenant] - 1
            if left:
                of_tenant[tenant] = left
            else:
                del of_tenant[tenant]
        if name is not None:
            held = counts[name] - 1
            if held:
                counts[name] = held
            else:
                del counts[name]

    def _authenticate(self, context: Context) -> tuple[Principal, float | None, dict[str, str], bytes | None]:
        """The caller, until when its credential holds, and what it was
        established from (the call's metadata and client certificate)."""
        assert self._authenticator is not None
        metadata, certificate = _metadata(context), _peer_certificate(context)
        try:
            principal, until = self._authenticator.authenticate_until(metadata, certificate)
        except ValueError as error:  # an unparsable peer certificate
            raise Unauthenticated(f"the client certificate is unusable: {error}", reason="BAD_CERTIFICATE") from None
        # Each RPC runs in a task of its own, so the value ends with the RPC.
        current_principal.set(principal)
        return principal, until, metadata, certificate

    async def _ended(self, method: str, stream: LiveStream | None, context: Context) -> None:
        """Called where the stream's task caught its cancellation: if
        ``self.streams`` ended it (its credentials expired or changed),
        answer why, audited as a refusal; otherwise the cancellation (a
        client that went away, a server stopping) goes on."""
        if stream is None or stream.ended is None:
            raise  # the CancelledError the caller is handling
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        await self._refuse(method, None, context, stream.ended)

    async def _fail(self, method: str, request: object, context: Context, error: Exception) -> None:
        """What the servicer raised, as the RPC's status (abort raises). A
        call whose client cancelled it under a pending write gets none: the
        write failed inside gRPC (``CallGone``), the client went away, which
        is no error of the server's, and no status could be sent. A
        message of its request stream that did not parse is the gate's own
        refusal, as a request that arrived alone and did not parse is."""
        if isinstance(error, CallGone):
            log.debug("%s: the call ended under a write (%s): its client went away", method, error)
            return
        if isinstance(error, UnparsableMessage):
            await self._refuse(method, request, context, error)
        if isinstance(error, ChronicleError):
            if isinstance(error, PermissionDenied) and self._on_denied is not None:
                await self._on_denied(method, request, error, _authenticated(), context.peer())
            await context.abort_with_status(rich_status(error))
        log.exception("unexpected error in %s", method, exc_info=error)
        await context.abort_with_status(internal_status())

    async def _refuse(self, method: str, request: object, context: Context, error: ChronicleError) -> None:
        if self._on_refused is not None:
            decoded = None if isinstance(request, Undecodable) else request
            await self._on_refused(method, decoded, error, _authenticated(), context.peer())
        await context.abort_with_status(rich_status(error))

    # -- at registration ---------------------------------------------------------

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` behind the gate, for each of the four RPC shapes."""
        if handler.request_deserializer is None:
            return handler
        if method.startswith(EXEMPT_PREFIXES):
            return parsed_only(method, handler)
        subscription = method in SUBSCRIPTION_METHODS
        # A request that arrives alone is parsed before the handler runs: an
        # Undecodable one is refused in ``admit``. Each message of a request
        # stream is parsed as the servicer reads it, and one that does not
        # parse raises there (``decoding.raising``), which ``fail`` refuses.
        streamed = handler.stream_unary is not None or handler.stream_stream is not None
        options = {
            "request_deserializer": (raising if streamed else tolerant)(handler.request_deserializer, method),
            "response_serializer": handler.response_serializer,
        }
        admit, leave, refuse, fail, ended = self._admit, self._leave, self._refuse, self._fail, self._ended
        # grpc.aio tells coroutine and async-generator behaviours from plain
        # ones by inspecting the function, so each shape is a real ``async def``.
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: object, context: Context) -> Any:
                try:
                    name, tenant, _ = admit(subscription, request, context)
                except ChronicleError as error:
                    await refuse(method, request, context, error)
                try:
                    return await inner_uu(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await fail(method, request, context, error)
                finally:
                    leave(subscription, name, tenant)

            return grpc.unary_unary_rpc_method_handler(unary_unary, **options)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: object, context: Context) -> None:
                try:
                    name, tenant, stream = admit(subscription, request, context, True)
                except ChronicleError as error:
                    await refuse(method, request, context, error)
                try:
                    await _write_all(inner_us(request, context), context, stream)
                except grpc.aio.AbortError:
                    raise
                except asyncio.CancelledError:
                    await ended(method, stream, context)
                except Exception as error:
                    await fail(method, request, context, error)
                finally:
                    leave(subscription, name, tenant, stream)

            return grpc.unary_stream_rpc_method_handler(unary_stream, **options)
        # Streamed requests: the gate sees None, and a message that does not
        # parse raises where the servicer reads it (its error becomes the
        # status like the servicer's own).
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
                try:
                    name, tenant, stream = admit(subscription, None, context, True)
                except ChronicleError as error:
                    await refuse(method, None, context, error)
                try:
                    return await inner_su(requests, context)
                except grpc.aio.AbortError:
                    raise
                except asyncio.CancelledError:
                    await ended(method, stream, context)
                except Exception as error:
                    await fail(method, None, context, error)
                finally:
                    leave(subscription, name, tenant, stream)

            return grpc.stream_unary_rpc_method_handler(stream_unary, **options)
        inner_ss = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any], context: Context) -> None:
            try:
                name, tenant, stream = admit(subscription, None, context, True)
            except ChronicleError as error:
                await refuse(method, None, context, error)
            try:
                await _write_all(inner_ss(requests, context), context, stream)
            except grpc.aio.AbortError:
                raise
            except asyncio.CancelledError:
                await ended(method, stream, context)
            except Exception as error:
                await fail(method, None, context, error)
            finally:
                leave(subscription, name, tenant, stream)

        return grpc.stream_stream_rpc_method_handler(stream_stream, **options)


def parsed_only(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` (of a method exempt from the gate: no limits, no
    credentials, no audit) with its request parsed as the gate parses
    others': bytes that do not parse are refused INVALID_ARGUMENT /
    MALFORMED_REQUEST before it runs. A request that arrives alone only: no
    exempt method streams its requests."""
    if handler.unary_unary is None and handler.unary_stream is None:
        return handler
    options = {
        "request_deserializer": tolerant(handler.request_deserializer, method),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: object, context: Context) -> Any:
            if isinstance(request, Undecodable):
                await context.abort_with_status(rich_status(request.error()))
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **options)
    inner_us = handler.unary_stream

    async def unary_stream(request: object, context: Context) -> None:
        if isinstance(request, Undecodable):
            await context.abort_with_status(rich_status(request.error()))
        await _write_all(inner_us(request, context), context, None)

    return grpc.unary_stream_rpc_method_handler(unary_stream, **options)


async def _write_all(produced: Any, context: Context, live: LiveStream | None) -> None:
    """Send what a streaming behaviour produces: each item of an async
    generator with ``context.write`` (which is what gRPC does with a
    generator behaviour: as a generator itself, the gate would add one more
    generator step to every message), or a behaviour that writes itself
    (a coroutine), awaited. A generator left early (an error, a cancelled
    call) is closed at once, so its own cleanup runs now, in this call.

    ``live`` (an authenticated stream) is not cancelled by ``LiveStreams``
    while a write is in flight: one cancelled there leaves its send pending
    in gRPC's core, which then refuses the status. Ended meanwhile, it is
    ended here, as soon as that write completes."""
    if not inspect.isasyncgen(produced):
        await produced
        return
    try:
        if live is None:
            async for item in produced:
                await context.write(item)
        else:
            async for item in produced:
                live.writing = True
                try:
                    await context.write(item)
                finally:
                    live.writing = False
                if live.ended is not None:
                    raise asyncio.CancelledError  # what ``LiveStreams`` would have done: ``ended`` answers it
    finally:
        await produced.aclose()


def _authenticated() -> Principal | None:
    """The caller, if this RPC authenticated it (None: authentication is
    off, or failed, or was not reached)."""
    principal = current_principal.get()
    return principal if principal.authenticated else None


AUTHORIZATION = "authorization"


def _metadata(context: Context) -> dict[str, str]:
    """The call's text metadata, the first value of each key. A second
    ``authorization`` is refused (``BAD_AUTHORIZATION_METADATA``), not
    ignored: a proxy in front that checked the other one would disagree
    with the server about who is calling."""
    values: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if not isinstance(value, str):
            continue
        name = key.lower()
        if name == AUTHORIZATION and name in values:
            raise Unauthenticated(
                "the call carries the authorization metadata more than once: send one 'Bearer <token>'",
                reason="BAD_AUTHORIZATION_METADATA",
            )
        values.setdefault(name, value)
    return values


def _peer_certificate(context: Context) -> bytes | None:
    certificates = context.auth_context().get("x509_pem_cert") or []
    return bytes(certificates[0]) if certificates else None
