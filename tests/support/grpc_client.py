"""Talking to a real server over a real socket, as any client would."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chronicle.v1 import (
    admin_service_pb2_grpc,
    command_pb2,
    command_service_pb2,
    command_service_pb2_grpc,
    event_service_pb2_grpc,
    projection_service_pb2_grpc,
    reaction_service_pb2_grpc,
)
from service.app import Application, start
from service.client.errors import status_lost
from service.plugins.registry import Registry
from service.settings import Settings
from service.store.base import StoreAdapter
from tests.support.security import POLICY, JwtIssuer, write


def command(
    aggregate_id: str,
    message: Message,
    *,
    command_id: str | None = None,
    expected_version: int | None = None,
    origin: str = "tests",
    user_id: str = "tester",
    metadata: Mapping[str, str] | None = None,
) -> command_pb2.Command:
    payload = any_pb2.Any()
    payload.Pack(message)
    built = command_pb2.Command(
        command_id=command_id or str(uuid.uuid4()),
        aggregate_id=aggregate_id,
        payload=payload,
        origin=origin,
        user_id=user_id,
        metadata=dict(metadata or {}),
    )
    if expected_version is not None:
        built.expected_version = expected_version
    return built


@dataclass(frozen=True)
class ErrorDetails:
    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]
    field_violations: list[str]
    retry: bool


def details_of(error: grpc.aio.AioRpcError) -> ErrorDetails:
    """The rich error details the server sent with ``error``."""
    reason, metadata, fields, retry = "", {}, [], False
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else []:
        info, bad, retry_info = (
            error_details_pb2.ErrorInfo(),
            error_details_pb2.BadRequest(),
            error_details_pb2.RetryInfo(),
        )
        if detail.Unpack(info):
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Unpack(bad):
            fields = [v.field for v in bad.field_violations]
        elif detail.Unpack(retry_info):
            retry = True
    return ErrorDetails(error.code(), error.details() or "", reason, metadata, fields, retry)


def reason_of(error: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call (sync or asyncio), "" if none."""
    status = rpc_status.from_call(error)
    info = error_details_pb2.ErrorInfo()
    for detail in status.details if status is not None else []:
        if detail.Unpack(info):
            return str(info.reason)
    return ""


@dataclass
class Client:
    channel: grpc.aio.Channel
    commands: command_service_pb2_grpc.CommandServiceStub
    events: event_service_pb2_grpc.EventServiceStub
    admin: admin_service_pb2_grpc.AdminServiceStub
    projections: projection_service_pb2_grpc.ProjectionServiceStub
    reactions: reaction_service_pb2_grpc.ReactionServiceStub

    async def submit(self, built: command_pb2.Command) -> command_service_pb2.SubmitResponse:
        response: command_service_pb2.SubmitResponse = await self.commands.Submit(
            command_service_pb2.SubmitRequest(command=built), timeout=30
        )
        return response


@asynccontextmanager
async def connect(
    address: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    options: Sequence[tuple[str, Any]] = (),
) -> AsyncIterator[Client]:
    """A client of ``address``: plaintext, or TLS with ``credentials``."""
    channel = (
        grpc.aio.secure_channel(address, credentials, options=list(options), interceptors=list(interceptors))
        if credentials is not None
        else grpc.aio.insecure_channel(address, options=list(options), interceptors=list(interceptors))
    )
    async with channel:
        yield Client(
            channel,
            command_service_pb2_grpc.CommandServiceStub(channel),
            event_service_pb2_grpc.EventServiceStub(channel),
            admin_service_pb2_grpc.AdminServiceStub(channel),
            projection_service_pb2_grpc.ProjectionServiceStub(channel),
            reaction_service_pb2_grpc.ReactionServiceStub(channel),
        )


TEST_SETTINGS = Settings(listen="127.0.0.1:0", discover_plugins=True, shutdown_grace=1.0, shutdown_drain=0.0)


@asynccontextmanager
async def running_server(
    store: StoreAdapter,
    *,
    settings: Settings = TEST_SETTINGS,
    registry: Registry | None = None,
    tracer_provider: object | None = None,
    **overrides: object,
) -> AsyncIterator[tuple[Application, Client]]:
    """A server on a free port over ``store``, and a client connected to it."""
    app = await start(
        replace(settings, **overrides),  # type: ignore[arg-type]
        store=store,
        registry=registry,
        tracer_provider=tracer_provider,
    )
    try:
        async with connect(app.address) as client:
            yield app, client
    finally:
        await app.stop(grace=1.0)


def with_jwt_auth(tmp_path: Path, issuer: JwtIssuer, policy: str = POLICY) -> Settings:
    """``TEST_SETTINGS`` with authentication by ``issuer``'s tokens and
    ``policy`` (their files written under ``tmp_path``), for ``running_server``."""
    return replace(
        TEST_SETTINGS,
        auth=True,
        policy_file=write(tmp_path / "policy.toml", policy),
        jwt_key_file=write(tmp_path / "jwt.pem", issuer.public_key),
        jwt_issuer=issuer.issuer,
    )


T = TypeVar("T")

RETRYABLE = frozenset({grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


async def submit_retrying(
    client: Client, built: command_pb2.Command, attempts: int = 20
) -> command_service_pb2.SubmitResponse:
    """Submit as a well-behaved client does: retry what the server says is
    worth retrying, with the same command id, so nothing happens twice."""
    import asyncio

    for attempt in range(attempts):
        try:
            return await client.submit(built)
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRYABLE or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


async def asking_again_if_lost(call: Callable[[], Awaitable[T]], attempts: int = 3) -> T:
    """``call()`` made again when grpc.aio lost the status the server sent
    (``status_lost``): a call whose requests stream, refused by the server
    as it began while the client wrote its first message, can end INTERNAL
    "Internal error from Core" in the client instead (grpc/grpc#36066, seen
    under load). The project's clients ask again, and so do the tests that
    call such a method raw and assert the server's refusal."""
    for attempt in range(attempts):
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if not status_lost(error) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
