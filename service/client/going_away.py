"""Leaving a connection whose server said it is going.

A replica that stops first drains (``--shutdown-drain``): it says NOT_SERVING
and ends its subscriptions, group consumers and watches with UNAVAILABLE
``SHUTTING_DOWN``, while still answering new calls so that load balancers
see it leave. gRPC's server has no way to send HTTP/2 GOAWAY before its own
stop, so the client's connection stays open; and gRPC shares a connection
among the channels of a process with the same target and options. A stream
reopened on it, through an L4 balancer that chose the replica per
connection, lands on the same draining replica and is refused again until
it stops: the whole drain.

So a call that ends ``SHUTTING_DOWN`` makes the client's channel open a new
one, with a subchannel pool of its own (``channels.open_channel``), whose
connection the balancer places on a replica that is staying; the old one
finishes its calls in flight and is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

# Reasons a server gives when it is going: it ends its calls as it stops.
GOING_REASONS = frozenset({"SHUTTING_DOWN"})
# How long a channel left for a new connection keeps its calls in flight (a
# draining server ends its own within its grace).
RETIRE_GRACE = 60.0
# Kept until they have run: the loop holds only weak references to tasks.
_checks: set[asyncio.Task[None]] = set()


def watch_for_going(call: Any, going: Callable[[], None]) -> None:
    """Call ``going()`` when ``call`` (a ``grpc.aio`` call) ends with a reason
    in ``GOING_REASONS``. Its status is read in a task of its own as soon as
    it ends: before a reopening, which waits at least the retry policy's
    first backoff."""
    add_done_callback = getattr(call, "add_done_callback", None)
    if add_done_callback is None:  # not a grpc.aio call (a test's double)
        return

    def ended(_call: Any) -> None:
        # Most calls end OK: said at once by grpc.aio's inner call (no public
        # way), which spares each of them a task. Without it, every call's
        # status is read in a task.
        inner = getattr(call, "_cython_call", None)
        with contextlib.suppress(Exception):
            if inner is not None and inner.is_ok():
                return
        with contextlib.suppress(RuntimeError):  # the loop is closing: nothing to reopen
            task = asyncio.ensure_future(_check(call, going))
            _checks.add(task)
            task.add_done_callback(_checks.discard)

    add_done_callback(ended)


async def _check(call: Any, going: Callable[[], None]) -> None:
    if call.cancelled():
        return
    try:
        code = await call.code()
        if code != grpc.StatusCode.UNAVAILABLE:
            return
        reason = going_reason(await call.trailing_metadata())
    except (grpc.RpcError, asyncio.CancelledError):
        return
    if reason in GOING_REASONS:
        going()


def going_reason(trailing_metadata: Any) -> str:
    """The ``ErrorInfo`` reason in a status's trailing metadata ("" when none)."""
    for key, value in trailing_metadata or ():
        if key != "grpc-status-details-bin":
            continue
        with contextlib.suppress(Exception):  # a details trailer that does not parse says nothing
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""
