"""``submit_stream`` for a routing client: each command over a stream to the
replica that owns its aggregate, the results in the order the commands were
taken, as with one stream.

One lane per member: a ``CommandStream`` (streaming.py: a window of
unanswered commands, a broken call reopened and its pending commands sent
again with their ids) fed from a queue. Each call of a lane opens on the
lane's member unless that member is marked down, else on another member
(``Routes.stub_for``). A call that broke because its member is gone or
going (``routing.member_gone``: UNAVAILABLE, or a CANCELLED the client did not ask
for, from a connection lost or refused, a server stopping, or a server that
says SHUTTING_DOWN) marks the member it was on down (``Routes.unreachable``,
which unary sends heed too) before the next call opens. A connection that
died silently (a member the client can no longer reach) ends its calls
UNAVAILABLE once the channel's keepalive ping goes unanswered
(``service.client.channels``), and moves the same way; so does a call whose
member kept its commands waiting for the client's attempt timeout without a
message (a process that hung while its connection still answers pings:
DEADLINE_EXCEEDED, the client's own; streaming.py). Nothing else marks a
member down; the lane reopens on the same member, with the retry policy's
backoff and attempts as for any break: a call a live member ended (its
reason says why: CREDENTIALS_CHANGED after the member read its key or
policy files again; or gRPC's own "max connection age", the member closing
an old connection), a call that broke with another error the retry policy
retries (RESOURCE_EXHAUSTED from a full queue, say), or a SubmitStreamPages
the member answered UNIMPLEMENTED (it predates it: SubmitStream follows).
The Node.js client (routed_stream.js) does the same.

The commands of one aggregate stay in one lane for as long as any of them
is unanswered, even if the topology changes meanwhile: the server runs one
stream's commands for one aggregate in the order sent, two streams' in no
particular order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from chronicle.v1 import command_service_pb2, command_service_pb2_grpc
from service.client.commands import Command
from service.client.errors import RemoteError
from service.client.results import StreamResult
from service.client.retry import RetryPolicy
from service.client.routing import Routes, member_gone, unanswered
from service.client.stopping import stop
from service.client.streaming import DEFAULT_WINDOW, CommandStream, StreamMethod

Lane = str | None  # a member's address; None: the seed
_END = object()


class RoutedStream:
    def __init__(
        self,
        routes: Routes,
        open_call: Callable[[command_service_pb2_grpc.CommandServiceStub, bool], Any],
        commands: AsyncIterator[Command],
        encode: Callable[[Command], command_service_pb2.SubmitRequest],
        *,
        retry: RetryPolicy,
        dry_run: bool,
        window: int = DEFAULT_WINDOW,
        method: StreamMethod | None = None,
        answer_timeout: float | None = None,
    ) -> None:
        self._routes = routes
        self._method = method or StreamMethod()
        self._open_call = open_call
        self._commands = commands
        self._encode = encode
        self._retry = retry
        self._dry_run = dry_run
        self._answer_timeout = answer_timeout
        self._window = asyncio.Semaphore(window)
        self._inputs: dict[Lane, asyncio.Queue[object]] = {}
        self._outputs: dict[Lane, asyncio.Queue[StreamResult | BaseException]] = {}
        self._lanes: list[asyncio.Task[None]] = []
        self._order: deque[tuple[Lane, str]] = deque()  # lane and aggregate of each command taken
        self._pinned: dict[str, tuple[Lane, int]] = {}  # aggregate → its lane, commands unanswered
        self._taken = asyncio.Event()  # set when a command was taken, or the caller's were all taken
        self._exhausted = False

    async def results(self) -> AsyncGenerator[StreamResult, None]:
        feeder = asyncio.create_task(self._feed())
        try:
            while True:
                while not self._order:
                    if self._exhausted:
                        return
                    await self._wait(asyncio.ensure_future(self._taken.wait()), feeder)
                    self._taken.clear()
                lane, aggregate_id = self._order[0]
                outcome = await self._wait(asyncio.ensure_future(self._outputs[lane].get()), feeder)
                if isinstance(outcome, BaseException):
                    raise outcome
                self._order.popleft()
                self._release(aggregate_id)
                self._window.release()
                yield outcome
        finally:
            # A lane's error reached the caller through its outputs, if at all.
            await stop(feeder, *self._lanes)

    async def _wait(self, waiting: asyncio.Future[Any], feeder: asyncio.Task[None]) -> Any:
        """``waiting``'s result; the caller's error instead if taking its
        next command failed."""
        if not feeder.done():
            await asyncio.wait({waiting, feeder}, return_when=asyncio.FIRST_COMPLETED)
        if feeder.done() and not feeder.cancelled() and (failure := feeder.exception()) is not None:
            waiting.cancel()
            raise failure
        return await waiting

    async def _feed(self) -> None:
        while True:
            await self._window.acquire()  # room first, as in CommandStream._pump
            try:
                command = await anext(self._commands)
            except StopAsyncIteration:
                self._window.release()
                break
            lane = self._lane_of(command.aggregate_id)
            self._order.append((lane, command.aggregate_id))
            await self._input(lane).put(command)
            self._taken.set()
        for queue in self._inputs.values():
            await queue.put(_END)
        self._exhausted = True
        self._taken.set()

    def _lane_of(self, aggregate_id: str) -> Lane:
        pinned = self._pinned.get(aggregate_id)
        if pinned is not None:
            lane, unanswered = pinned
        else:
            _, lane = self._routes.route(aggregate_id)
            unanswered = 0
        self._pinned[aggregate_id] = (lane, unanswered + 1)
        return lane

    def _release(self, aggregate_id: str) -> None:
        lane, unanswered = self._pinned[aggregate_id]
        if unanswered > 1:
            self._pinned[aggregate_id] = (lane, unanswered - 1)
        else:
            del self._pinned[aggregate_id]

    def _input(self, lane: Lane) -> asyncio.Queue[object]:
        queue = self._inputs.get(lane)
        if queue is None:
            queue = self._inputs[lane] = asyncio.Queue()
            self._outputs[lane] = asyncio.Queue()
            self._lanes.append(asyncio.create_task(self._run_lane(lane, queue), name=f"stream lane {lane}"))
        return queue

    async def _run_lane(self, lane: Lane, queue: asyncio.Queue[object]) -> None:
        output = self._outputs[lane]
        member: Lane = lane  # where the lane's current call is
        heard = self._routes.now()  # when that call opened or last answered

        def open_call(paged: bool, broken: RemoteError | None) -> Any:
            nonlocal member, heard
            if broken is not None and (member_gone(broken) or unanswered(broken)):
                self._routes.unreachable(member, heard)
            stub, member = self._routes.stub_for(lane)
            heard = self._routes.now()
            return self._open_call(stub, paged)

        async def commands() -> AsyncIterator[Command]:
            while (item := await queue.get()) is not _END:
                assert isinstance(item, Command)
                yield item

        stream = CommandStream(
            open_call,
            commands(),
            self._encode,
            retry=self._retry,
            dry_run=self._dry_run,
            method=self._method,
            answer_timeout=self._answer_timeout,
        )
        try:
            async for result in stream.results():
                self._routes.answered(member)
                heard = self._routes.now()
                await output.put(result)
        except Exception as error:
            await output.put(error)
