"""The load generator: client processes that submit as fast as the server
answers, at a fixed concurrency, and time every command.

Each process runs one asyncio loop with one channel. Unary mode keeps
``concurrency`` Submit calls in flight; stream mode keeps ``concurrency``
commands in flight on one SubmitStream per process. Commands go to a pool
of ``aggregates`` ids, and a share of them to aggregates never seen before.

The clients share the two cores with the server and PostgreSQL, so they do
as little as they can: every request is built and serialized before the
clock starts, and sent as bytes.

Every side's CPU is counted over the same measured window: the client
processes build their requests, then wait at a barrier with the parent;
from there, all of them count the warm-up and the measured seconds from the
same moment, each client reads its own CPU at the window's edges, and the
parent calls ``sample`` (the server's and PostgreSQL's CPU) at the same
edges.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import random
import resource
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from typing import Any

import grpc
from google.protobuf import any_pb2, wrappers_pb2

from chronicle.v1 import command_pb2
from chronicle.v1 import command_service_pb2 as pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank

SUBMIT = "/chronicle.v1.CommandService/Submit"
SUBMIT_STREAM = "/chronicle.v1.CommandService/SubmitStream"
SUBMIT_STREAM_PAGES = "/chronicle.v1.CommandService/SubmitStreamPages"


@dataclass(frozen=True)
class LoadSpec:
    address: str
    mode: str  # "unary", "stream" or "pages" (SubmitStreamPages)
    concurrency: int
    seconds: float
    warmup: float = 1.0
    aggregates: int = 10_000
    new_share: float = 0.1
    events_per_command: int = 1
    prefix: str = "agg"
    processes: int = 2
    # "tally": the bench plugin's counter (UInt32Value(n) appends n events);
    # "bank": a deposit of 1 to one of ``aggregates`` accounts named
    # ``prefix-N``, opened beforehand (new_share is ignored).
    domain: str = "tally"


@dataclass
class LoadResult:
    completed: int = 0
    errors: int = 0
    error_reasons: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    client_cpu: float = 0.0
    # what ``sample`` returned at the start and the end of the measured window
    window: tuple[Any, Any] | None = None
    # every command id acknowledged (warm-up and after the window included):
    # each must be in the database afterwards
    acknowledged: list[str] = field(default_factory=list)

    def merge(self, other: LoadResult) -> None:
        self.completed += other.completed
        self.errors += other.errors
        for reason, count in other.error_reasons.items():
            self.error_reasons[reason] = self.error_reasons.get(reason, 0) + count
        self.latencies.extend(other.latencies)
        self.seconds = max(self.seconds, other.seconds)
        self.client_cpu += other.client_cpu
        self.acknowledged.extend(other.acknowledged)

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


# Enough requests for this many commands per second per process, at most.
_PREBUILT_RATE = 6000


class _Commands:
    """Serialized SubmitRequests, built before the measurement, with their
    command ids (sent as bytes, remembered as text)."""

    def __init__(self, spec: LoadSpec, worker: int) -> None:
        self._spec = spec
        self._random = random.Random(worker)
        self._fresh = itertools.count()
        self._worker = worker
        self._run = uuid.uuid4().hex[:6]
        count = int(_PREBUILT_RATE * (spec.warmup + spec.seconds + 1))
        self._ready = [self._built() for _ in range(count)]
        self._next = 0

    def next(self) -> tuple[str, bytes]:
        if self._next < len(self._ready):
            self._next += 1
            return self._ready[self._next - 1]
        return self._built()  # faster than foreseen: build on the fly

    def _built(self) -> tuple[str, bytes]:
        request = self._build()
        return request.command.command_id, request.SerializeToString()

    def _build(self) -> pb.SubmitRequest:
        spec = self._spec
        if spec.domain == "bank":
            payload = any_pb2.Any()
            payload.Pack(bank.Deposit(amount=1))
            aggregate_id = f"{spec.prefix}-{self._random.randrange(spec.aggregates)}"
            return pb.SubmitRequest(
                command=command_pb2.Command(command_id=str(uuid.uuid4()), aggregate_id=aggregate_id, payload=payload)
            )
        if self._random.random() < spec.new_share:
            aggregate_id = f"{spec.prefix}-new-{self._run}-{self._worker}-{next(self._fresh)}"
        else:
            aggregate_id = f"{spec.prefix}-{self._random.randrange(spec.aggregates)}"
        payload = any_pb2.Any()
        payload.Pack(wrappers_pb2.UInt32Value(value=spec.events_per_command))
        return pb.SubmitRequest(
            command=command_pb2.Command(command_id=str(uuid.uuid4()), aggregate_id=aggregate_id, payload=payload)
        )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _count_cpu_over_window(spec: LoadSpec, result: LoadResult) -> None:
    """This process's CPU from the end of the warm-up to the end of the
    measured seconds (timers on the running loop)."""
    loop = asyncio.get_running_loop()
    started: list[float] = []
    loop.call_later(spec.warmup, lambda: started.append(_cpu_seconds()))

    def end() -> None:
        result.client_cpu = _cpu_seconds() - started[0]

    loop.call_later(spec.warmup + spec.seconds, end)


async def _unary(spec: LoadSpec, share: int, commands: _Commands, result: LoadResult) -> None:
    _count_cpu_over_window(spec, result)
    async with grpc.aio.insecure_channel(spec.address) as channel:
        submit = channel.unary_unary(SUBMIT, request_serializer=None, response_deserializer=None)
        start = time.monotonic()
        measure_from = start + spec.warmup
        stop = measure_from + spec.seconds

        async def loop() -> None:
            while (now := time.monotonic()) < stop:
                sent = time.perf_counter()
                command_id, request = commands.next()
                try:
                    await submit(request, timeout=30)
                    ok = True
                    result.acknowledged.append(command_id)
                except grpc.aio.AioRpcError as error:
                    ok = False
                    reason = error.code().name
                if now >= measure_from and time.monotonic() <= stop:
                    if ok:
                        result.completed += 1
                        result.latencies.append(time.perf_counter() - sent)
                    else:
                        result.errors += 1
                        result.error_reasons[reason] = result.error_reasons.get(reason, 0) + 1

        await asyncio.gather(*(loop() for _ in range(share)))
        result.seconds = spec.seconds


async def _stream(spec: LoadSpec, share: int, commands: _Commands, result: LoadResult) -> None:
    _count_cpu_over_window(spec, result)
    async with grpc.aio.insecure_channel(spec.address) as channel:
        call = channel.stream_stream(
            SUBMIT_STREAM, request_serializer=None, response_deserializer=pb.SubmitStreamResponse.FromString
        )()
        in_flight = asyncio.Semaphore(share)
        sent_at: deque[tuple[float, str]] = deque()
        start = time.monotonic()
        measure_from = start + spec.warmup
        stop = measure_from + spec.seconds

        async def send() -> None:
            while time.monotonic() < stop:
                await in_flight.acquire()
                command_id, request = commands.next()
                sent_at.append((time.perf_counter(), command_id))
                await call.write(request)
            await call.done_writing()

        async def receive() -> None:
            async for response in call:
                sent, command_id = sent_at.popleft()
                in_flight.release()
                # Counted: answers heard inside the measured window only (the
                # answers to what was in flight when it closed come after).
                counted = measure_from <= time.monotonic() <= stop
                _answered(result, response, command_id, time.perf_counter() - sent, counted=counted)

        await asyncio.gather(send(), receive())
        result.seconds = spec.seconds


async def _pages(spec: LoadSpec, share: int, commands: _Commands, result: LoadResult) -> None:
    """Stream mode over SubmitStreamPages: each write carries every command
    whose place in flight came free since the last one (as the project's
    client sends them), each answer page frees its results' places."""
    _count_cpu_over_window(spec, result)
    async with grpc.aio.insecure_channel(spec.address) as channel:
        call = channel.stream_stream(
            SUBMIT_STREAM_PAGES, request_serializer=None, response_deserializer=pb.SubmitResultPage.FromString
        )()
        free = share
        freed = asyncio.Event()
        sent_at: deque[tuple[float, str]] = deque()
        start = time.monotonic()
        measure_from = start + spec.warmup
        stop = measure_from + spec.seconds

        async def send() -> None:
            nonlocal free
            while time.monotonic() < stop:
                while not free:
                    freed.clear()
                    await freed.wait()
                parts = []
                now = time.perf_counter()
                for _ in range(free):
                    command_id, request = commands.next()
                    sent_at.append((now, command_id))
                    parts.append(_field_one(request))
                free = 0
                await call.write(b"".join(parts))
            await call.done_writing()

        async def receive() -> None:
            nonlocal free
            async for page in call:
                free += len(page.results)
                freed.set()
                counted = measure_from <= time.monotonic() <= stop
                now = time.perf_counter()
                for response in page.results:
                    sent, command_id = sent_at.popleft()
                    _answered(result, response, command_id, now - sent, counted=counted)

        await asyncio.gather(send(), receive())
        result.seconds = spec.seconds


def _answered(
    result: LoadResult, response: pb.SubmitStreamResponse, command_id: str, latency: float, *, counted: bool
) -> None:
    """One streamed command's answer: acknowledged whenever it came; counted
    (completed with its latency, or an error by reason) inside the window."""
    if response.HasField("ok"):
        result.acknowledged.append(command_id)
    if not counted:
        return
    if response.HasField("ok"):
        result.completed += 1
        result.latencies.append(latency)
    else:
        result.errors += 1
        reason = response.error.reason or str(response.error.code)
        result.error_reasons[reason] = result.error_reasons.get(reason, 0) + 1


def _field_one(message: bytes) -> bytes:
    """``message`` as field 1 of a message (a SubmitPage's ``requests``):
    the page is the concatenation of its requests so encoded."""
    size, prefix = len(message), bytearray(b"\x0a")
    while size >= 0x80:
        prefix.append(size & 0x7F | 0x80)
        size >>= 7
    prefix.append(size)
    return bytes(prefix) + message


_RUNNERS = {"unary": _unary, "stream": _stream, "pages": _pages}


def _process(spec: LoadSpec, share: int, worker: int, ready: Barrier, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    result = LoadResult()
    runner = _RUNNERS[spec.mode]
    commands = _Commands(spec, worker)
    ready.wait(_READY_TIMEOUT)
    asyncio.run(runner(spec, share, commands, result))
    if len(result.latencies) > 200_000:
        result.latencies = random.Random(worker).sample(result.latencies, 200_000)
    out.put(result)


# Building the requests before the clock starts takes a few seconds.
_READY_TIMEOUT = 300.0


def run(spec: LoadSpec, sample: Callable[[], Any] | None = None) -> LoadResult:
    """Drive the load from ``spec.processes`` processes; merge their results.
    ``sample`` is called at the start and the end of the measured window;
    its two results are the merged result's ``window``."""
    processes = max(1, min(spec.processes, spec.concurrency))
    shares = [spec.concurrency // processes + (1 if i < spec.concurrency % processes else 0) for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = context.Queue()  # type: ignore[type-arg]
    ready = context.Barrier(processes + 1)
    workers = [context.Process(target=_process, args=(spec, share, i, ready, out)) for i, share in enumerate(shares)]
    for worker in workers:
        worker.start()
    ready.wait(_READY_TIMEOUT)
    started = time.monotonic()
    time.sleep(spec.warmup)
    first = sample() if sample else None
    time.sleep(max(0.0, started + spec.warmup + spec.seconds - time.monotonic()))
    last = sample() if sample else None
    merged = LoadResult()
    for _ in workers:
        merged.merge(out.get(timeout=spec.seconds + 120))
    for worker in workers:
        worker.join(30)
    merged.window = (first, last)
    return merged
