"""Starting what the benchmark measures: PostgreSQL, Chronicle, the no-op
gRPC server, each as its own process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.postgres import Cluster, start_cluster
from tests.support.processes import free_port

# Chronicle as the benchmark runs it: the benchmark's own plugin, nothing else.
BENCH_PLUGIN_ARGS = ("--no-discover-plugins", "--plugin", "bench.plugin")


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    address: str

    @property
    def pid(self) -> int:
        return self.process.pid


def wait_until_serving(address: str, process: subprocess.Popen[str]) -> None:
    """Until a server process started elsewhere reports SERVING."""
    _wait_for_port(address, process, health=True)


def _wait_for_port(address: str, process: subprocess.Popen[bytes] | subprocess.Popen[str], *, health: bool) -> None:
    """Until the server's health check says SERVING (``health``), or its port
    accepts a connection (the no-op server has no health service: a plain
    TCP connect, since gRPC's ``channel_ready_future`` leaves a thread
    polling the channel that prints a traceback once the channel closes)."""
    deadline = time.monotonic() + 60
    host, _, port = address.rpartition(":")
    with grpc.insecure_channel(address) as channel:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server on {address} exited with {process.returncode}")
            try:
                if health:
                    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                else:
                    socket.create_connection((host, int(port)), timeout=1).close()
                    return
            except (grpc.RpcError, OSError):
                pass
            time.sleep(0.1)
    raise TimeoutError(f"nothing served on {address}")


@contextmanager
def chronicle(database_url: str, *extra: str) -> Iterator[Server]:
    address = f"127.0.0.1:{free_port()}"
    command = [
        sys.executable,
        "-m",
        "service",
        "serve",
        "--listen",
        address,
        "--database-url",
        database_url,
        "--log-level",
        "WARNING",
        *extra,
    ]
    with _process(command, address, health=True) as server:
        yield server


@contextmanager
def noop() -> Iterator[Server]:
    address = f"127.0.0.1:{free_port()}"
    with _process([sys.executable, "-m", "bench.noop_server", address], address, health=False) as server:
        yield server


@contextmanager
def _process(command: Sequence[str], address: str, *, health: bool) -> Iterator[Server]:
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{address.replace(':', '-')}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(address, process, health=health)
        yield Server(process, address)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


@contextmanager
def postgres() -> Iterator[tuple[Cluster, str]]:
    """A throwaway cluster with PostgreSQL's default durability (fsync and
    synchronous_commit on), and a database for the run."""
    cluster = start_cluster(own=True)
    try:
        yield cluster, cluster.create_database()
    finally:
        cluster.shutdown()


def postmaster_pid(cluster: Cluster) -> int:
    assert cluster.datadir is not None
    return int((cluster.datadir / "postmaster.pid").read_text().splitlines()[0])


def settle(database_url: str) -> None:
    """Vacuum, analyse and checkpoint, so that the background work a bulk
    load leaves behind does not land in the next measurement."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
