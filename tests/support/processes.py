"""Running the real server as a separate process, as a user would."""

from __future__ import annotations

import os
import signal
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(address: str, timeout: float = 20.0, process: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {process.returncode}: {process.stdout and process.stdout.read()}"
                )
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"no server serving on {address} after {timeout}s")


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    address: str

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


@contextmanager
def server_process(
    database_url: str,
    *,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    port: int | None = None,
) -> Iterator[ServerProcess]:
    """A server process on ``port`` (a free one if None: pass the same port
    to restart a server where its clients expect it)."""
    address = f"127.0.0.1:{port or free_port()}"
    command = [sys.executable, "-m", "service", "serve", "--listen", address, "--database-url", database_url, *extra]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    server = ServerProcess(process, address)
    try:
        wait_until_serving(address, process=process)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stdout:
            process.stdout.close()


def cli(*args: str, server: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "service", *args, "--server", server],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"chronicle {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result
