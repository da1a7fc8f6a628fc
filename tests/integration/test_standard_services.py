"""The standard gRPC services a client in any language may rely on, over a
real socket: health (Check, List, Watch), as a plain gRPC client written
from its public proto calls it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api.health import SERVICE_NAMES
from service.store.memory import MemoryStore
from tests.support.grpc_client import Client, details_of, running_server

HEALTH = "/grpc.health.v1.Health"
# Bytes that do not parse as any message: field 1, length-delimited, with a
# length far past the end.
GARBAGE = b"\x0a\xff\xff\xff\xff\x0f"


def identity(data: bytes) -> bytes:
    return data


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with running_server(MemoryStore()) as (_, connected):
        yield connected


# -- health ---------------------------------------------------------------------


async def test_a_malformed_health_check_is_invalid_argument_without_a_traceback(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    check = client.channel.unary_unary(f"{HEALTH}/Check", request_serializer=identity)
    watch = client.channel.unary_stream(f"{HEALTH}/Watch", request_serializer=identity)
    refused = {}
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await check(GARBAGE, timeout=10)
        refused["Check"] = details_of(raised.value)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await watch(GARBAGE, timeout=10).read()
        refused["Watch"] = details_of(raised.value)
    for details in refused.values():
        assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
        assert details.message.startswith("the request does not parse as grpc.health.v1.HealthCheckRequest: ")
        assert "Unexpected" not in details.message and "<class" not in details.message
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    # A well-formed Check still answers, on the same connection.
    checked = await health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert checked.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_list_reports_every_service_as_check_does() -> None:
    async with running_server(MemoryStore()) as (app, client):
        stub = health_pb2_grpc.HealthStub(client.channel)
        listed = await stub.List(health_pb2.HealthListRequest(), timeout=10)
        names = ("", *SERVICE_NAMES)
        assert set(listed.statuses) == set(names)
        for name in names:
            checked = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert listed.statuses[name].status == checked.status == health_pb2.HealthCheckResponse.SERVING
        await app.health.set(False)  # as the store monitor does when the store goes
        listed = await stub.List(health_pb2.HealthListRequest(), timeout=10)
        assert {name: r.status for name, r in listed.statuses.items()} == dict.fromkeys(
            names, health_pb2.HealthCheckResponse.NOT_SERVING
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.channel.unary_unary(f"{HEALTH}/List", request_serializer=identity)(GARBAGE, timeout=10)
    assert (details_of(raised.value).code, details_of(raised.value).reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    )
