"""The client's channels: keepalive pings that find a dead connection.

A connection whose peer vanished without closing it (a replica's host
gone, a network cut, a NAT or firewall that dropped the flow) looks open to
the client: a unary call on it waits for its deadline, and a stream (a
subscription, a command stream, the routing client's topology watch) waits
for ever. So while it has calls open, a channel pings its server every
``keepalive`` seconds and drops the connection when a ping goes unanswered
for ``keepalive_timeout``: its calls end UNAVAILABLE, which every part of
the client already answers (a unary command is tried again, a stream is
reopened and resumed, a routing client marks the member down and sends
elsewhere), and the channel connects afresh for the next call.

A channel whose server went away (a restart, a crash) tries to connect
again after gRPC's connection backoff, which grows from 1 s to 2 minutes by
default; until it connects, every call on it fails UNAVAILABLE at once, so
a subscriber would notice a server that came back after a long outage only
minutes later, and a command could spend its retries on a server that is
up. So the client caps that backoff at ``reconnect_backoff`` seconds (the
retry policy's ``max_backoff``, 2 s by default): a channel connects again
at most that long after its server is back.

Chronicle's servers accept a client's pings every 5 s or more
(``--min-client-ping-seconds``); a server that accepts fewer (gRPC's
default: one in five minutes while it sends nothing) answers an idle
stream's pings with GOAWAY ``too_many_pings``, which ends its calls
UNAVAILABLE (so they are reopened) and makes the channel ping half as often
on its next connection. Pass ``keepalive=None`` to such a server.

Each channel has a connection of its own (``grpc.use_local_subchannel_pool``):
gRPC otherwise shares one among a process's channels to the same target,
so a channel opened to leave a draining server (``going_away``) would get
the very connection it meant to leave.
"""

from __future__ import annotations

import grpc

DEFAULT_KEEPALIVE = 10.0
DEFAULT_KEEPALIVE_TIMEOUT = 10.0
DEFAULT_RECONNECT_BACKOFF = 2.0
# gRPC's first wait before connecting again (its own default), and the
# shortest cap this client sets.
_FIRST_RECONNECT_BACKOFF = 1.0
_LEAST_RECONNECT_BACKOFF = 0.1


def keepalive_options(keepalive: float | None, timeout: float = DEFAULT_KEEPALIVE_TIMEOUT) -> list[tuple[str, int]]:
    """gRPC's channel options for pinging every ``keepalive`` seconds while
    calls are open (None: never). Besides the two documented options, gRPC
    1.85 needs two more: ``http2.max_pings_without_data`` (by default a
    channel stops pinging after two pings with no data sent between, so an
    idle subscription would go unwatched) and ``http2.ping_timeout_ms``
    (which times a keepalive ping out; ``keepalive_timeout_ms`` alone left a
    silent connection open: tests/integration/test_client_keepalive.py)."""
    if keepalive is None:
        return []
    if keepalive <= 0 or timeout <= 0:
        raise ValueError("keepalive and keepalive_timeout must be positive (keepalive=None: no pings)")
    return [
        ("grpc.keepalive_time_ms", int(keepalive * 1000)),
        ("grpc.keepalive_timeout_ms", int(timeout * 1000)),
        ("grpc.http2.ping_timeout_ms", int(timeout * 1000)),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def reconnect_options(backoff: float | None) -> list[tuple[str, int]]:
    """gRPC's channel options for connecting again at most ``backoff``
    seconds apart (at least 0.1 s) after the server went away; None:
    gRPC's own backoff (up to 2 minutes)."""
    if backoff is None:
        return []
    most = max(backoff, _LEAST_RECONNECT_BACKOFF)
    return [
        ("grpc.initial_reconnect_backoff_ms", int(min(_FIRST_RECONNECT_BACKOFF, most) * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(most * 1000)),
    ]


def open_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None = None,
    *,
    keepalive: float | None = DEFAULT_KEEPALIVE,
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
    reconnect_backoff: float | None = DEFAULT_RECONNECT_BACKOFF,
) -> grpc.aio.Channel:
    """A channel to ``target``: plaintext, or TLS with ``credentials``."""
    options = [
        ("grpc.use_local_subchannel_pool", 1),
        *keepalive_options(keepalive, keepalive_timeout),
        *reconnect_options(reconnect_backoff),
    ]
    if credentials is not None:
        return grpc.aio.secure_channel(target, credentials, options=options)
    return grpc.aio.insecure_channel(target, options=options)
