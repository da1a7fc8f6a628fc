"""docs/deployment.md's claims that need a process and a socket: "`chronicle
health --server host:port` exits 0 when SERVING and 1 otherwise", also when
the server answers, NOT_SERVING (a store down, a shutdown under way), rather
than not answering at all (tests/integration/test_cli.py has that case)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.support.processes import cli


@pytest.fixture
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    """A gRPC server with only the standard health service, whose status
    for the whole server ("") the test sets."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


@pytest.mark.parametrize(
    ("status", "exit_status"),
    [(health_pb2.HealthCheckResponse.SERVING, 0), (health_pb2.HealthCheckResponse.NOT_SERVING, 1)],
    ids=["SERVING", "NOT_SERVING"],
)
def test_the_health_command_exits_0_when_serving_and_1_when_the_server_answers_not_serving(
    health_server: tuple[str, health.HealthServicer], status: int, exit_status: int
) -> None:
    address, servicer = health_server
    servicer.set("", status)
    result = cli("health", server=address, check=False)
    assert result.returncode == exit_status, result.stderr
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    assert json.loads(result.stdout)["status"] == name
