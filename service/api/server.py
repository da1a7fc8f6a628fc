"""Building the gRPC server: Chronicle's services behind the gate
(``service.api.gate``, applied to each method handler as it is registered),
the standard health service and server reflection, and any interceptors
(tracing)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from chronicle.v1 import (
    admin_service_pb2_grpc,
    cluster_service_pb2_grpc,
    command_service_pb2_grpc,
    event_service_pb2_grpc,
    projection_service_pb2_grpc,
    reaction_service_pb2_grpc,
    subscription_group_service_pb2_grpc,
)
from service.api.admin_service import AdminService
from service.api.cluster_service import ClusterService
from service.api.command_service import CommandService
from service.api.event_service import EventService
from service.api.gate import RpcGate
from service.api.group_service import SubscriptionGroupService
from service.api.health import SERVICE_NAMES, Health
from service.api.projection_service import ProjectionService
from service.api.reaction_service import ReactionService

# gRPC's channel arguments are C ints: the largest number of milliseconds
# one holds, about 24.8 days.
MAX_MILLISECONDS = 2**31 - 1


def milliseconds(seconds: float) -> int:
    """``seconds`` as a channel argument in milliseconds: a longer duration
    than one holds (``--max-connection-age-seconds 30d``) is cut to the
    longest, which comes to the same for a connection's age or idle time;
    it was an OverflowError that stopped the server at start with a
    traceback."""
    return min(round(seconds * 1000), MAX_MILLISECONDS)


def keepalive_options(every: float, timeout: float) -> list[tuple[str, int]]:
    """gRPC's options for pinging each client on a connection with calls
    open (and, with ``client_ping_options``, on one without), every
    ``every`` seconds, and dropping the connection (ending its
    calls, freeing their places) when a ping is not answered within
    ``timeout``: a client that vanished without closing its connection (a
    host gone, a network cut) would otherwise hold its subscriptions for as
    long as the kernel keeps the socket, hours. Both timeouts are set: gRPC
    1.85 times a keepalive ping out by ``http2.ping_timeout_ms`` (measured:
    ``keepalive_timeout_ms`` alone left a silent peer connected), and
    ``keepalive_timeout_ms`` is the documented one. The pings go on while a
    call sends nothing (an idle subscription; tests/integration/test_keepalive.py)."""
    return [
        ("grpc.keepalive_time_ms", milliseconds(every)),
        ("grpc.keepalive_timeout_ms", milliseconds(timeout)),
        ("grpc.http2.ping_timeout_ms", milliseconds(timeout)),
    ]


def client_ping_options(floor: float) -> list[tuple[str, int]]:
    """gRPC's options for accepting a client's keepalive pings as often as
    every ``floor`` seconds on a connection with calls open, whether or not
    the server sends anything meanwhile. gRPC's default is one in five
    minutes while the server sends nothing: a client pinging more often on
    an idle subscription is sent GOAWAY ``too_many_pings`` after two such
    pings, and its calls end UNAVAILABLE. Chronicle's clients ping every ten
    seconds while they have calls open (``service.client.channels``): that
    is how a client finds out that its connection to a replica it can no
    longer reach is dead, and moves on.

    On a connection without calls the same bound holds: gRPC's own rule
    there (one ping in two hours, GOAWAY ``too_many_pings`` on the third
    ping sooner) refused the clients that keep pinging between calls (Go's
    PermitWithoutStream, Java's keepAliveWithoutCalls, grpc-js's
    keepalive_permit_without_calls). Pings are not calls, so such a
    connection is still closed after ``--max-connection-idle-seconds``
    (tests/integration/test_pings_without_calls.py). The same option has
    the server ping idle connections too (every ``--keepalive-seconds``),
    dropping those whose client vanished (no answer within the timeout)."""
    return [
        ("grpc.http2.min_ping_interval_without_data_ms", milliseconds(floor)),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def connection_age_options(age: float, grace: float) -> list[tuple[str, int]]:
    """gRPC's options for closing each client connection ``age`` seconds
    after it opened (0: never): the server sends GOAWAY, the client opens a
    new connection for its next calls, and the calls on the old one get
    ``grace`` seconds to finish before they end UNAVAILABLE. Behind a
    connection-level load balancer (a Kubernetes Service) that is what moves
    long-lived clients to replicas added since they connected."""
    if age <= 0:
        return []
    return [
        ("grpc.max_connection_age_ms", milliseconds(age)),
        ("grpc.max_connection_age_grace_ms", milliseconds(grace)),
    ]


def connection_limit_options(handshake_timeout: float, max_connections: int) -> list[tuple[str, int]]:
    """gRPC's options for closing a connection that has not finished its
    handshake (TLS, then HTTP/2's settings frame) within ``handshake_timeout``
    seconds, and for holding at most ``max_connections`` at once (one more is
    closed as soon as it is accepted; a connection counts from its accept).
    gRPC's defaults are 120 s and no cap: a few hundred sockets that never
    send a byte held every file descriptor the process had, and then the API,
    health checks and console all stopped (tests/integration/test_connection_limits.py)."""
    return [
        ("grpc.server_handshake_timeout_ms", milliseconds(handshake_timeout)),
        ("grpc.max_allowed_incoming_connections", max_connections),
    ]


def connection_idle_options(idle: float) -> list[tuple[str, int]]:
    """gRPC's option for closing a client connection that has had no call
    open for ``idle`` seconds (0: never): the server sends GOAWAY and
    closes it, and the client opens a new connection for its next call.
    An open stream (Subscribe, Consume, SubmitStream, WatchTopology, a
    health Watch) is a call however quiet it is; pings are not (gRPC counts
    calls only).

    gRPC looks once per ``idle``: a connection that never opened a call
    goes ``idle`` after it opened, one whose last call ended between
    ``idle`` and twice that after it (it saw the call at its last look and
    waits a whole period more).

    Without it a connection that finished its handshake and then sent
    nothing was held until its client went away, and the server did not
    then ping a connection without calls, so one whose host vanished was
    held for ever: enough of them took every place under ``--max-connections``
    (tests/integration/test_idle_connections.py)."""
    if idle <= 0:
        return []
    return [("grpc.max_connection_idle_ms", max(1, milliseconds(idle)))]


def build_server(
    *,
    commands: CommandService,
    events: EventService,
    admin: AdminService,
    projections: ProjectionService,
    reactions: ReactionService,
    cluster: ClusterService,
    groups: SubscriptionGroupService,
    health: Health,
    max_message_bytes: int,
    gate: RpcGate,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    reuse_port: bool = False,
    keepalive_seconds: float = 60.0,
    keepalive_timeout_seconds: float = 20.0,
    min_client_ping_seconds: float = 5.0,
    max_connection_age_seconds: float = 0.0,
    max_connection_age_grace_seconds: float = 30.0,
    max_connection_idle_seconds: float = 300.0,
    handshake_timeout_seconds: float = 10.0,
    max_connections: int = 10_000,
) -> grpc.aio.Server:
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Off unless asked: two servers must not share a port by mistake.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            *keepalive_options(keepalive_seconds, keepalive_timeout_seconds),
            *client_ping_options(min_client_ping_seconds),
            *connection_age_options(max_connection_age_seconds, max_connection_age_grace_seconds),
            *connection_limit_options(handshake_timeout_seconds, max_connections),
            *connection_idle_options(max_connection_idle_seconds),
        ],
    )
    methods = MethodTable(gate)
    gated = methods.gated
    command_service_pb2_grpc.add_CommandServiceServicer_to_server(commands, gated)
    event_service_pb2_grpc.add_EventServiceServicer_to_server(events, gated)
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(admin, gated)
    projection_service_pb2_grpc.add_ProjectionServiceServicer_to_server(projections, gated)
    reaction_service_pb2_grpc.add_ReactionServiceServicer_to_server(reactions, gated)
    cluster_service_pb2_grpc.add_ClusterServiceServicer_to_server(cluster, gated)
    subscription_group_service_pb2_grpc.add_SubscriptionGroupServiceServicer_to_server(groups, gated)
    # Health is exempt from the gate's limits and credentials, not from its
    # parsing (``gate.parsed_only``).
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, gated)
    # Reflection too is behind the gate: the API's shape is for callers the
    # server lets in.
    names = (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflecting = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflecting, gated)
    add_reflection_v1(reflecting, gated)
    server.add_generic_rpc_handlers((methods,))
    return server


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def add_reflection_v1(servicer: reflection_pb2_grpc.ServerReflectionServicer, registrar: _Registrar) -> None:
    """Serve ``servicer``, grpcio-reflection's v1alpha servicer, as
    ``grpc.reflection.v1.ServerReflection`` too: tools that speak only v1
    (grpc-java's and others' newer clients) get UNIMPLEMENTED from a server
    that offers v1alpha alone, and grpcio-reflection (1.85) has no v1
    module. The two protocols are one on the wire: v1 is v1alpha's
    reflection.proto under another package, every message, field number
    and type the same, and only the method's path names the package. So
    the library's servicer answers both, with v1alpha's (de)serializers.

    It is not among the services reflection lists: the library has no v1
    descriptor to describe it with, and a tool that describes every listed
    service would fail on it."""
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    registrar.add_registered_method_handlers(REFLECTION_V1, {"ServerReflectionInfo": handler})


class MethodTable(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Every method of the server in one table, found by its full name.

    The generated registration code would register each method with gRPC
    by name as well ("registered methods"). grpc.aio's server then keeps one
    pending request per registered method and, for every call that arrives,
    waits on all of them again with ``asyncio.wait``: a callback added to
    and removed from each of the 37 futures (one per method, health and
    reflection included) per call, about a fifth of the event loop's time
    under unary load in ``make profile``. Served as one generic handler,
    a call costs one pending request and one dict lookup."""

    def __init__(self, gate: RpcGate | None = None) -> None:
        """``gated``: the registrar whose methods go behind ``gate`` (none:
        as ``open``, for the bench's no-op server)."""
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self.gated = _Registrar(self._handlers, gate)
        self.open = _Registrar(self._handlers, None)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)


class _Registrar:
    """Stands in for the server while the generated code registers a
    service: each method handler goes into the table, behind the gate when
    there is one."""

    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler], gate: RpcGate | None) -> None:
        self._handlers = handlers
        self._gate = gate

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        # The generated code registers each service twice, as a generic
        # handler and by method; the second carries what we need.
        pass

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            method = f"/{service}/{name}"
            self._handlers[method] = handler if self._gate is None else self._gate.wrap(method, handler)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        raise AttributeError(f"the generated registration code called server.{name}, which _Registrar does not offer")
