"""The liveness probe's health name: ``liveness`` answers SERVING whenever
the server's event loop answers, whatever its store (a database outage is
readiness NOT_SERVING, no reason to restart it), and does not answer at all
when the process is hung (SIGSTOP), which a TCP probe passes (the kernel
still accepts the connection). deployment.md's Kubernetes example probes it."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.postgres import Cluster
from tests.support.processes import cli, replica
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def status(address: str, service: str, within: float = 5.0) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=within
        )
        return int(answer.status)


async def test_liveness_serves_while_the_store_is_down_and_does_not_answer_when_hung(
    private_cluster: Cluster, tmp_path: Path
) -> None:
    url = private_cluster.create_database()
    with replica(url, log_path=tmp_path / "server.log", extra=["--health-interval", "0.2"]) as server:
        assert await status(server.address, "liveness") == SERVING
        await asyncio.to_thread(private_cluster.stop, "immediate")
        try:
            await eventually(lambda: _is(server.address, "", NOT_SERVING), what="readiness NOT_SERVING")
            assert await status(server.address, "liveness") == SERVING
            probe = await asyncio.to_thread(cli, "health", "--service", "liveness", server=server.address)
            assert '"SERVING"' in probe.stdout
        finally:
            await asyncio.to_thread(private_cluster.start)
        await eventually(lambda: _is(server.address, "", SERVING), what="readiness SERVING again")

        server.process.send_signal(signal.SIGSTOP)
        try:
            with socket.create_connection(("127.0.0.1", int(server.address.rsplit(":", 1)[1])), timeout=2):
                pass  # what a tcpSocket probe sees: a hung process passes it
            with pytest.raises(grpc.aio.AioRpcError) as unanswered:
                await status(server.address, "liveness", within=1.0)
            assert unanswered.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            probe = await asyncio.to_thread(
                cli, "health", "--service", "liveness", "--timeout", "1", server=server.address, check=False
            )
            assert probe.returncode != 0
        finally:
            server.process.send_signal(signal.SIGCONT)
        assert await status(server.address, "liveness") == SERVING


async def _is(address: str, service: str, expected: int) -> bool:
    try:
        return await status(address, service) == expected
    except grpc.aio.AioRpcError:
        return False
