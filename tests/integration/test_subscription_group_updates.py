"""UpdateGroup, over a real socket with the Python client, on SQLite and on
PostgreSQL: a running consumer's session takes the new settings (a shorter
ack timeout times out the event it holds), the group keeps its position and
parked events, the update is audited, and bad updates are refused with
their reasons, changing nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from chronicle.v1 import admin_service_pb2
from chronicle.v1 import subscription_group_service_pb2 as pb
from chronicle.v1 import subscription_group_service_pb2_grpc as pb_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.client import ChronicleClient, Delivery, RemoteError
from service.store.sqlite import SqliteStore
from tests.support.cluster import replica
from tests.support.grpc_client import details_of, running_server
from tests.support.waiting import eventually


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Application, Any]]:
    if request.param == "sqlite":
        store = SqliteStore(request.getfixturevalue("tmp_path") / "groups.db")
        async with running_server(store, anonymous_admin=True, poll_seconds=0.2, lease_seconds=1.5) as started:
            yield started
    else:
        async with replica(request.getfixturevalue("postgres_url"), anonymous_admin=True) as started:
            yield started


@pytest.fixture
async def client(server: tuple[Application, Any]) -> AsyncIterator[ChronicleClient]:
    async with ChronicleClient.connect(server[0].address) as connected:
        yield connected


async def open_account(client: ChronicleClient, name: str) -> None:
    await client.submit(name, bank.OpenAccount(owner="ann"))


async def test_a_running_consumer_takes_a_shorter_ack_timeout_for_the_event_it_holds(client: ChronicleClient) -> None:
    await open_account(client, "acc-1")
    await client.groups.create("billing", ack_timeout=600, retry_backoff=0.01, segments=1)
    attempts: list[int] = []

    async def hold_each() -> None:
        async with client.consume("billing", consumer="worker") as deliveries:
            async for delivery in deliveries:
                attempts.append(delivery.attempt)  # never answered: only a timeout sends it again

    task = asyncio.ensure_future(hold_each())
    try:
        await eventually(lambda: attempts == [1], what="the first delivery")
        updated = await client.groups.update("billing", ack_timeout=0.3)
        assert updated.ack_timeout.ToMilliseconds() == 300
        await eventually(lambda: attempts[:2] == [1, 2], what="the held event timed out under the new ack timeout")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_update_keeps_the_groups_position_and_parked_events_and_is_audited(
    client: ChronicleClient, server: tuple[Application, Any]
) -> None:
    for name in ("acc-1", "acc-2"):
        await open_account(client, name)
    await client.groups.create("billing", max_delivery_attempts=5, segments=2)

    async def answer(delivery: Delivery) -> None:
        if delivery.event.aggregate_id == "acc-1":
            await delivery.park("poison")
        else:
            await delivery.ack()

    async def consume() -> None:
        async with client.consume("billing", consumer="worker") as deliveries:
            async for delivery in deliveries:
                await answer(delivery)

    task = asyncio.ensure_future(consume())
    try:

        async def settled() -> bool:
            info = await client.groups.get("billing")
            return (info.acknowledged, info.parked, info.lag) == (1, 1, 0)

        await eventually(settled, what="one acknowledged, one parked")
        before = await client.groups.get("billing")
        updated = await client.groups.update("billing", max_delivery_attempts=2, retry_backoff=0.5, max_retry_backoff=8)
        assert (updated.max_delivery_attempts, updated.retry_backoff.ToMilliseconds()) == (2, 500)
        assert (updated.max_retry_backoff.ToMilliseconds(), updated.ack_timeout.ToMilliseconds()) == (8000, 30_000)
        assert (updated.position, updated.acknowledged, updated.parked, updated.segments) == (
            before.position,
            1,
            1,
            2,
        )
        assert [p.reason for p in await client.groups.parked("billing")] == ["poison"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    audit = await server[1].admin.QueryAudit(admin_service_pb2.QueryAuditRequest())
    groups = [e for e in audit.entries if "SubscriptionGroupService/" in e.command_type]
    entries = [(e.command_type.rsplit("/", 1)[1], e.aggregate_id, e.reason) for e in groups]
    assert entries == [("UpdateGroup", "group:billing", ""), ("CreateGroup", "group:billing", "")]


def seconds(value: int, nanos: int = 0) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=value, nanos=nanos)


@pytest.mark.parametrize(
    ("fields", "code", "reason", "violations"),
    [
        ({"name": "missing", "ack_timeout": seconds(1)}, grpc.StatusCode.NOT_FOUND, "GROUP_NOT_FOUND", []),
        ({"name": "bad name", "ack_timeout": seconds(1)}, grpc.StatusCode.INVALID_ARGUMENT, "BAD_GROUP_NAME", ["name"]),
        ({"name": "billing"}, grpc.StatusCode.INVALID_ARGUMENT, "NO_SETTING_GIVEN", []),
        (
            {"name": "billing", "ack_timeout": seconds(1, 2_000_000_000)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "BAD_GROUP_SETTING",
            ["ack_timeout"],
        ),
        (
            {"name": "billing", "ack_timeout": seconds(0, 5_000_000)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "BAD_GROUP_SETTING",
            ["ack_timeout"],
        ),
        (
            {"name": "billing", "max_delivery_attempts": 0},
            grpc.StatusCode.INVALID_ARGUMENT,
            "BAD_GROUP_SETTING",
            ["max_delivery_attempts"],
        ),
        (
            {"name": "billing", "max_retry_backoff": seconds(0, 500_000_000)},  # under the group's 1 s backoff
            grpc.StatusCode.INVALID_ARGUMENT,
            "BAD_GROUP_SETTING",
            ["max_retry_backoff"],
        ),
        ({"name": "billing", "segments": 8}, grpc.StatusCode.INVALID_ARGUMENT, "SETTING_NOT_UPDATABLE", ["segments"]),
    ],
)
async def test_bad_updates_are_refused_with_their_reasons_and_change_nothing(
    client: ChronicleClient,
    server: tuple[Application, Any],
    fields: dict[str, Any],
    code: grpc.StatusCode,
    reason: str,
    violations: list[str],
) -> None:
    await client.groups.create("billing", segments=4)
    before = await client.groups.get("billing")
    async with grpc.aio.insecure_channel(server[0].address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await pb_grpc.SubscriptionGroupServiceStub(channel).UpdateGroup(pb.UpdateGroupRequest(**fields))
    details = details_of(raised.value)
    assert (details.code, details.reason, details.field_violations) == (code, reason, violations)
    assert await client.groups.get("billing") == before


async def test_an_update_of_one_setting_leaves_the_others(client: ChronicleClient) -> None:
    await client.groups.create("billing", segments=4, ack_timeout=7)
    with pytest.raises(RemoteError) as missing:
        await client.groups.update("missing", max_delivery_attempts=3)
    assert missing.value.reason == "GROUP_NOT_FOUND"
    updated = await client.groups.update("billing", max_delivery_attempts=3)
    assert (updated.max_delivery_attempts, updated.segments, updated.ack_timeout.ToMilliseconds()) == (3, 4, 7000)
