"""An administrator inspects every group it can list (docs/security.md):
ListGroups shows it every group, and ListParked and the console's group
page open each, whatever types it may subscribe to. They refused an
administrator without the subscribe grant of the group's types
(SUBSCRIBE_DENIED): it saw the group listed and could not open it. A
parked event's row carries no payload; consuming, which delivers them,
still takes the subscribe grant. A real server with authentication and the
console, gRPC over a socket, the console over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chronicle.v1 import subscription_group_service_pb2 as pb
from chronicle.v1 import subscription_group_service_pb2_grpc as pb_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application, start
from service.client import ChronicleClient
from service.store.memory import MemoryStore
from tests.integration.test_console_group_actions import Operator, park_all
from tests.support.console import console, text_of
from tests.support.grpc_client import TEST_SETTINGS, command, connect
from tests.support.security import POLICY, api_key_file, bearer, write

ROOT_KEY = "inspect-root-key-0123456789"  # root-actions: operator and teller (subscribes to accounts)
AUDITOR_KEY = "inspect-auditor-key-012345678"  # root: operator alone: admin, subscribes to nothing
BOB_KEY = "inspect-bob-key-0123456789"  # bob: no admin, no subscribe, no consume


@asynccontextmanager
async def parked_group(tmp_path: Path) -> AsyncIterator[Application]:
    policy = POLICY + '\n[principals."root-actions"]\nroles = ["operator", "teller"]\n'
    settings = replace(
        TEST_SETTINGS,
        auth=True,
        policy_file=write(tmp_path / "policy.toml", policy),
        api_keys_file=api_key_file(
            tmp_path / "keys.toml", [(ROOT_KEY, "root-actions", []), (AUDITOR_KEY, "root", []), (BOB_KEY, "bob", [])]
        ),
        console_listen="127.0.0.1:0",
    )
    app = await start(settings, store=MemoryStore())
    try:
        async with ChronicleClient.connect(app.address, token=ROOT_KEY) as client:
            await client.groups.create("billing", aggregate_types=["Account"])
            async with connect(app.address, interceptors=bearer(ROOT_KEY)) as root:
                for number in range(2):
                    await root.submit(command(f"acc-{number}", bank.OpenAccount(owner="ann"), user_id="root-actions"))
            await park_all(client, 2)
        yield app
    finally:
        await app.stop(grace=0.5, drain=0)


def reason_of(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:

    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return error.code(), info.reason
    return error.code(), ""


async def test_an_administrator_without_the_subscribe_grant_opens_every_group_it_lists(tmp_path: Path) -> None:
    async with parked_group(tmp_path) as app:
        async with connect(app.address, interceptors=bearer(AUDITOR_KEY)) as auditor:
            stub = pb_grpc.SubscriptionGroupServiceStub(auditor.channel)
            listed = [g.name for g in (await stub.ListGroups(pb.ListGroupsRequest())).groups]
            parked = (await stub.ListParked(pb.ListParkedRequest(group="billing"))).parked
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.ListParked(pb.ListParkedRequest(group="missing"))
            consume = stub.Consume()
            await consume.write(pb.ConsumeRequest(start=pb.ConsumeStart(group="billing", consumer="auditor")))
            with pytest.raises(grpc.aio.AioRpcError) as consuming:
                await consume.read()
        async with connect(app.address, interceptors=bearer(BOB_KEY)) as bob:
            with pytest.raises(grpc.aio.AioRpcError) as by_bob:
                await pb_grpc.SubscriptionGroupServiceStub(bob.channel).ListParked(
                    pb.ListParkedRequest(group="billing")
                )
        session = await Operator.log_in(console(app), AUDITOR_KEY)
        page = await session.get("/groups/billing")
    assert listed == ["billing"]
    assert sorted((p.aggregate_id, p.reason, p.attempts) for p in parked) == [
        ("acc-0", "cannot bill", 1),
        ("acc-1", "cannot bill", 1),
    ]
    # No payload travels with a parked row: the message has no field for one
    # (its type and when it was parked are what the group's settings and the
    # log's order already tell an administrator).
    assert set(pb.GroupParkedEvent.DESCRIPTOR.fields_by_name) == {
        "event_id",
        "position",
        "aggregate_id",
        "attempts",
        "reason",
        "replaying",
        "event_type",
        "parked_at",
    }
    assert reason_of(missing.value) == (grpc.StatusCode.NOT_FOUND, "GROUP_NOT_FOUND")
    # Consuming delivers the events: still the subscribe grant's.
    assert reason_of(consuming.value) == (grpc.StatusCode.PERMISSION_DENIED, "SUBSCRIBE_DENIED")
    assert reason_of(by_bob.value) == (grpc.StatusCode.PERMISSION_DENIED, "CONSUME_DENIED")
    told = text_of(page.text)
    assert page.status == 200, told
    assert "2 parked" in told and "cannot bill" in told and "acc-0" in told and "acc-1" in told
