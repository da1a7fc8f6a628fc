"""A client's channel, bound to the event loop that first uses it.

A ``grpc.aio`` channel belongs to the event loop that was current when it
was made: used from another loop, its calls fail deep inside gRPC with
``RuntimeError: ... attached to a different loop``, and after ``close()``
with gRPC's ``UsageError``. Applications make their client where no loop
runs yet (at import, in a Django or Celery module), or hand it to a thread
that runs its own loop. So the client's channel is opened at its first
call, in the loop making that call, and binds the client to that loop; a
call from outside any loop, or from another loop, is refused with
``WrongEventLoop``, and one after ``close()`` with ``ClientClosed``, before
anything is sent: errors that say what to do (docs/clients.md, "One client
per event loop"). ``close()`` alone works from any loop: it closes the
channel on the loop it is bound to (``on_its_loop``), since one left
unclosed keeps its connection open until the garbage collector finds it.

A channel the client opened itself (``open_channel``) is also made afresh,
on a new connection, after a server said it is going (``going_away``): see
``LoopBoundChannel.reconnect``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any

import grpc

from service.client.errors import ClientClosed, WrongEventLoop
from service.client.going_away import RETIRE_GRACE, watch_for_going

_ONE_PER_LOOP = (
    "make the client in the event loop that uses it (in the app's lifespan or async main; "
    "one client per event loop), and close it there"
)


class LoopBoundChannel:
    """The channel ``open()`` makes, made at the first call (in the loop
    running it); or ``channel``, made already, bound to the loop of the
    first call. Its multicallables check the loop and ``close()`` at each
    call. ``owns``: ``close()`` closes the channel too (else only refuses
    further calls)."""

    def __init__(
        self,
        target: str,
        *,
        open_channel: Callable[[], grpc.aio.Channel] | None = None,
        channel: grpc.aio.Channel | None = None,
        owns: bool = True,
    ) -> None:
        if (open_channel is None) == (channel is None):
            raise ValueError("give open_channel or channel")
        self._target = target
        self._open = open_channel
        self._channel = channel
        self._owns = owns
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # Channels left for a new connection, closed once their calls end.
        self._retiring: dict[asyncio.Task[None], grpc.aio.Channel] = {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the channel is bound to (None before its first call)."""
        return self._loop

    @property
    def reopens(self) -> bool:
        """Whether ``reconnect`` can open a new channel (one made here)."""
        return self._open is not None

    def reconnect(self, channel: grpc.aio.Channel) -> None:
        """``channel``'s server said it is going (SHUTTING_DOWN): the next
        call opens a new channel, on a new connection. The old connection
        would otherwise carry every reopened stream back to the draining
        server (behind an L4 balancer a connection stays on the replica it
        reached), refused until that server stops. Its calls in flight go
        on: it is closed once they end, or after ``RETIRE_GRACE``."""
        if self._open is None or self._closed or self._channel is None or channel is not self._channel:
            return  # one given (cannot be made again), closed, or already replaced
        self._channel = None
        if self._owns:
            task = asyncio.ensure_future(channel.close(RETIRE_GRACE))
            self._retiring[task] = channel
            task.add_done_callback(lambda done: self._retiring.pop(done, None))

    def current(self) -> grpc.aio.Channel:
        """The channel, opened if need be, for a call from the running loop."""
        if self._closed:
            raise ClientClosed(
                f"the client of {self._target} is closed; make a new one (a client is closed once, at shutdown)"
            )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise WrongEventLoop(
                f"the client of {self._target} was called with no event loop running; call it from a coroutine "
                f"(use asyncio.run, or a synchronous facade of your own that runs one loop)"
            ) from None
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise WrongEventLoop(
                f"the client of {self._target} is bound to the event loop of its first call, "
                f"and was called from another: {_ONE_PER_LOOP}"
            )
        if self._channel is None:
            assert self._open is not None
            self._channel = self._open()
        return self._channel

    def _lazy(self, kind: str, method: str, *args: Any, **kwargs: Any) -> Any:
        return _LazyMultiCallable(self, kind, method, args, kwargs)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._lazy("unary_unary", method, *args, **kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._lazy("unary_stream", method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._lazy("stream_unary", method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._lazy("stream_stream", method, *args, **kwargs)

    async def close(self, grace: float | None = None) -> None:
        """Refuse further calls; close the channel if it was opened (and
        owned), on the loop it is bound to, wherever this is awaited.
        Closing twice is harmless.

        From another loop (an ``asyncio.run`` at exit for a client used in
        an earlier one, or a thread's loop), it is closed all the same, not
        left to the garbage collector with its connection open (a server
        counts it against ``--max-connections`` until then), on its own
        loop (``on_its_loop``); if that loop is closed (by the
        ``asyncio.run`` that ran it), at once, as gRPC's finalizer would."""
        self._closed = True
        channel, self._channel = self._channel, None
        retiring = list(self._retiring.items())
        if not self._owns or (channel is None and not retiring):
            return
        if not await on_its_loop(self._loop, lambda: self._close_channels(channel, retiring, grace)):
            for old in [channel, *(old for _, old in retiring)]:
                if old is not None:
                    _close_now(old)

    @staticmethod
    async def _close_channels(
        channel: grpc.aio.Channel | None,
        retiring: list[tuple[asyncio.Task[None], grpc.aio.Channel]],
        grace: float | None,
    ) -> None:
        """The channel and the retiring ones closed, on their own loop."""
        for task, old in retiring:  # their calls too: the client is done
            task.cancel()
            await old.close()
        if channel is not None:
            await channel.close(grace)

    async def __aenter__(self) -> LoopBoundChannel:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        state: grpc.ChannelConnectivity = self.current().get_state(try_to_connect)
        return state

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self.current().wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.current().channel_ready()


async def on_its_loop(loop: asyncio.AbstractEventLoop | None, work: Callable[[], Coroutine[Any, Any, None]]) -> bool:
    """Await ``work()`` run on ``loop`` (None: the running one), which a
    grpc.aio channel's close must be: here if it is the running loop;
    handed to it if it runs in another thread; run on it, in a worker
    thread, if it is stopped (a loop of ``run_until_complete``, idle now).
    False, nothing run, if it is closed: nothing runs on it again."""
    if loop is None or loop is asyncio.get_running_loop():
        await work()
    elif loop.is_closed():
        return False
    elif loop.is_running():
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work(), loop))
    else:
        await asyncio.to_thread(loop.run_until_complete, _settled(work))
    return True


# How long a stopped loop run for a close is let run on for what the close
# cancelled (bounded: a task of the application's own, frozen there, may
# never end).
SETTLE_SECONDS = 1.0


async def _settled(work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``work()``, then the loop's other tasks given up to ``SETTLE_SECONDS``
    to end: a call the close cancelled ends a moment later, on this loop
    (its status comes back through it). Stopped before, the loop would hold
    that call, and the call its connection, open until it ran again."""
    await work()
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        await asyncio.wait(others, timeout=SETTLE_SECONDS)


def _close_now(channel: grpc.aio.Channel) -> None:
    """Close ``channel`` without its loop, which runs no more: what
    ``grpc.aio.Channel.__del__`` does (the core channel destroyed, its
    connection closed), now rather than whenever the garbage collector
    reaches it; the client's stubs keep it reachable as long as the client is."""
    core = channel._channel  # grpc.aio's own finalizer reaches it so; no public synchronous close exists
    if not core.closed():
        core.close()


class _LazyMultiCallable:
    """A stub's method: made on the channel at its first call, checked at each."""

    def __init__(self, bound: LoopBoundChannel, kind: str, method: str, args: Any, kwargs: Any) -> None:
        self._bound = bound
        self._make = (kind, method, args, kwargs)
        self._made: tuple[grpc.aio.Channel, Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel = self._bound.current()
        if self._made is None or self._made[0] is not channel:
            kind, method, make_args, make_kwargs = self._make
            self._made = (channel, getattr(channel, kind)(method, *make_args, **make_kwargs))
        call = self._made[1](*args, **kwargs)
        if self._bound.reopens:
            watch_for_going(call, lambda: self._bound.reconnect(channel))
        return call
