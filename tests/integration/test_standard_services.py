"""The standard gRPC services a client in any language may rely on, over a
real socket: health (Check, List, Watch) and server reflection (v1 and
v1alpha), as a plain gRPC client written from their public protos calls them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from chronicle.v1 import command_service_pb2 as cs
from service.api.health import LIVENESS, SERVICE_NAMES
from service.plugins.discovery import discover_plugins
from service.plugins.registry import Registry
from service.store.memory import MemoryStore
from tests.support.grpc_client import Client, asking_again_if_lost, connect, details_of, running_server, with_jwt_auth
from tests.support.security import JwtIssuer

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
        names = ("", *SERVICE_NAMES, LIVENESS)
        assert set(listed.statuses) == set(names)
        for name in names:
            checked = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert listed.statuses[name].status == checked.status == health_pb2.HealthCheckResponse.SERVING
        await app.health.set(False)  # as the store monitor does when the store goes
        listed = await stub.List(health_pb2.HealthListRequest(), timeout=10)
        assert {name: r.status for name, r in listed.statuses.items()} == {
            **dict.fromkeys(names, health_pb2.HealthCheckResponse.NOT_SERVING),
            LIVENESS: health_pb2.HealthCheckResponse.SERVING,  # the store's state is readiness', not liveness'
        }
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.channel.unary_unary(f"{HEALTH}/List", request_serializer=identity)(GARBAGE, timeout=10)
    assert (details_of(raised.value).code, details_of(raised.value).reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    )


# -- reflection -----------------------------------------------------------------------

V1 = "grpc.reflection.v1"
V1_METHOD = f"/{V1}.ServerReflection/ServerReflectionInfo"


def v1_messages() -> tuple[Any, Any]:
    """The request and response classes of grpc.reflection.v1, as a client
    built from its .proto has them: the v1alpha file's messages under the v1
    package (the two protocols differ in nothing else on the wire; grpcio
    ships no v1 module), in a pool of the test's own."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = "grpc/reflection/v1/reflection.proto", V1
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(".grpc.reflection.v1alpha.", f".{V1}.")
    proto.ClearField("service")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{V1}.ServerReflectionRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{V1}.ServerReflectionResponse")),
    )


async def reflect_v1(channel: grpc.aio.Channel, *requests: Any, metadata: Any = None) -> list[Any]:
    request_type, response_type = v1_messages()
    call = channel.stream_stream(
        V1_METHOD, request_serializer=request_type.SerializeToString, response_deserializer=response_type.FromString
    )
    return [r async for r in call(iter(requests), metadata=metadata, timeout=10)]


async def test_reflection_v1_lists_the_services_and_describes_commands(client: Client) -> None:
    request_type, _ = v1_messages()
    listed, described, missing = await reflect_v1(
        client.channel,
        request_type(list_services=""),
        request_type(file_containing_symbol="bank.v1.Deposit"),
        request_type(file_containing_symbol="no.such.Message"),
    )
    names = {s.name for s in listed.list_services_response.service}
    assert {*SERVICE_NAMES, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(f)
        for f in described.file_descriptor_response.file_descriptor_proto
    ]
    bank = next(f for f in files if f.package == "bank.v1")
    assert "Deposit" in {m.name for m in bank.message_type}
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert missing.original_request.file_containing_symbol == "no.such.Message"


async def test_reflection_v1_needs_credentials_when_authentication_is_on(tmp_path: Path) -> None:
    issuer = JwtIssuer()
    async with running_server(MemoryStore(), settings=with_jwt_auth(tmp_path, issuer)) as (app, _):
        request_type, _ = v1_messages()
        async with connect(app.address) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await asking_again_if_lost(lambda: reflect_v1(anonymous.channel, request_type(list_services="")))
            # Any authenticated caller, as for v1alpha: the policy grants eve nothing.
            eve = (("authorization", f"Bearer {issuer.token('eve')}"),)
            (listed,) = await reflect_v1(anonymous.channel, request_type(list_services=""), metadata=eve)
    details = details_of(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "NO_CREDENTIALS")
    assert "chronicle.v1.CommandService" in {s.name for s in listed.list_services_response.service}


# -- which messages are commands --------------------------------------------------------


def types_by_aggregate(
    response: cs.ListTypesResponse,
) -> dict[str, tuple[str, str, list[str], list[str], list[str]]]:
    return {
        t.name: (t.plugin, t.state_type, list(t.command_types), list(t.event_types), list(t.reaction_command_types))
        for t in response.aggregate_types
    }


async def test_list_types_names_each_aggregate_types_commands_events_and_state(client: Client) -> None:
    listed = types_by_aggregate(await client.commands.ListTypes(cs.ListTypesRequest(), timeout=10))
    # The registry's own view, as `chronicle plugins` prints it, is the witness.
    expected = {
        aggregate.name: (
            plugin.name,
            aggregate.state_type_name,
            sorted(name for name, spec in aggregate.commands.items() if not spec.internal),
            sorted(aggregate.events),
            sorted(name for name, spec in aggregate.commands.items() if spec.internal),
        )
        for plugin in Registry(discover_plugins()).plugins
        for aggregate in plugin.aggregates
    }
    assert listed == expected
    assert listed["Account"] == (
        "bank_account",
        "bank.v1.Account",
        ["bank.v1.CloseAccount", "bank.v1.Deposit", "bank.v1.OpenAccount", "bank.v1.Withdraw"],
        ["bank.v1.AccountClosed", "bank.v1.AccountOpened", "bank.v1.MoneyDeposited", "bank.v1.MoneyWithdrawn"],
        [],
    )
    # Only the transfers reaction ends a transfer: listed apart from what a client may send.
    assert listed["Transfer"][2:] == (
        ["bank.v1.TransferMoney"],
        [
            "bank.v1.TransferCompleted",
            "bank.v1.TransferFailed",
            "bank.v1.TransferRefunded",
            "bank.v1.TransferRequested",
        ],
        ["bank.v1.CompleteTransfer", "bank.v1.FailTransfer", "bank.v1.RecordRefund"],
    )


async def test_list_types_shows_a_caller_the_aggregate_types_it_may_read_or_submit_to(tmp_path: Path) -> None:
    issuer = JwtIssuer()
    async with running_server(MemoryStore(), settings=with_jwt_auth(tmp_path, issuer)) as (app, _):
        seen = {}
        async with connect(app.address) as anyone:
            for name in ("alice", "bob", "gateway", "eve", "root"):
                bearer_of = (("authorization", f"Bearer {issuer.token(name)}"),)
                response = await anyone.commands.ListTypes(cs.ListTypesRequest(), metadata=bearer_of, timeout=10)
                seen[name] = sorted(t.name for t in response.aggregate_types)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await anyone.commands.ListTypes(cs.ListTypesRequest(), timeout=10)
    assert seen == {
        "alice": ["Account"],  # reads and submits to accounts
        "bob": ["Box"],
        "gateway": ["Account"],  # submits to accounts, reads nothing
        "eve": [],  # granted nothing
        "root": ["Account", "Box", "Transfer", "User"],  # reads everything
    }
    assert details_of(raised.value).reason == "NO_CREDENTIALS"


async def test_a_health_check_of_an_unknown_service_is_not_found_with_its_reason(client: Client) -> None:
    """NOT_FOUND, as the health protocol says, and an ErrorInfo as every
    other refusal carries (grpcio's servicer sent the bare code)."""
    stub = health_pb2_grpc.HealthStub(client.channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Check(health_pb2.HealthCheckRequest(service="chronicle.v1.NoSuchService"), timeout=10)
    said = details_of(raised.value)
    assert (said.code, said.reason, said.metadata) == (
        grpc.StatusCode.NOT_FOUND,
        "SERVICE_NOT_FOUND",
        {"service": "chronicle.v1.NoSuchService"},
    )
    assert "chronicle.v1.CommandService" in said.message
