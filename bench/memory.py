"""Server memory: RSS before, with 100,000 aggregates touched once, and
after their workers left on the idle timeout."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
from google.protobuf import any_pb2, wrappers_pb2

from bench.machine import rss_bytes
from bench.servers import BENCH_PLUGIN_ARGS, chronicle
from chronicle.v1 import command_pb2
from chronicle.v1 import command_service_pb2 as pb
from chronicle.v1 import command_service_pb2_grpc as pb_grpc

IDLE_TIMEOUT = 5.0


async def touch(address: str, count: int, *, prefix: str | None = None, in_flight: int = 256) -> int:
    """One command to each of ``count`` aggregates (``prefix-0`` …, or new
    ones), over SubmitStream."""
    payload = any_pb2.Any()
    payload.Pack(wrappers_pb2.UInt32Value(value=1))
    run = uuid.uuid4().hex[:6]
    window = asyncio.Semaphore(in_flight)
    done = 0
    async with grpc.aio.insecure_channel(address) as channel:
        call = pb_grpc.CommandServiceStub(channel).SubmitStream()

        async def send() -> None:
            for i in range(count):
                await window.acquire()
                aggregate_id = f"{prefix}-{i}" if prefix else f"mem-{run}-{i}"
                command = command_pb2.Command(command_id=str(uuid.uuid4()), aggregate_id=aggregate_id, payload=payload)
                await call.write(pb.SubmitRequest(command=command))
            await call.done_writing()

        async def receive() -> None:
            nonlocal done
            async for response in call:
                window.release()
                done += response.HasField("ok")

        await asyncio.gather(send(), receive())
    return done


def memory_profile(database_url: str, aggregates: int = 100_000) -> dict[str, float]:
    with chronicle(database_url, *BENCH_PLUGIN_ARGS, "--idle-timeout", str(IDLE_TIMEOUT)) as server:
        asyncio.run(touch(server.address, 2_000))  # warm every code path first
        time.sleep(IDLE_TIMEOUT * 2 + 2)
        before = rss_bytes(server.pid)
        start = time.perf_counter()
        touched = asyncio.run(touch(server.address, aggregates))
        elapsed = time.perf_counter() - start
        with_them = rss_bytes(server.pid)
        time.sleep(IDLE_TIMEOUT * 2 + 5)
        after = rss_bytes(server.pid)
    return {
        "aggregates": touched,
        "touch_seconds": elapsed,
        "rss_before_mib": before / 2**20,
        "rss_with_aggregates_mib": with_them / 2**20,
        "rss_after_eviction_mib": after / 2**20,
    }
