"""Every method the server serves, with --auth on, over a real socket: a
caller without credentials is UNAUTHENTICATED on each one, a principal the
policy grants nothing is refused each one with PERMISSION_DENIED and the
reason docs/security.md names (or gets what a method documents as open to
every authenticated caller), per-principal quotas hold for every kind of
long-lived stream, and the console's live tail ends with its session.

The method lists are built from the services' descriptors, so a new RPC
fails here until its expected answer is written down."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import cluster_service_pb2 as cluster
from chronicle.v1 import cluster_service_pb2_grpc as cluster_grpc
from chronicle.v1 import command_service_pb2 as cs
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import projection_service_pb2 as pj
from chronicle.v1 import reaction_service_pb2 as rx
from chronicle.v1 import reaction_service_pb2_grpc as rx_grpc
from chronicle.v1 import subscription_group_service_pb2 as groups
from chronicle.v1 import subscription_group_service_pb2_grpc as groups_grpc
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box import plugin as box_plugin
from domain_plugins.box.protos.box.v1 import box_pb2
from service.api.health import SERVICE_NAMES
from service.api.server import REFLECTION_V1
from service.app import Application, start
from service.plugins import Plugin, ProjectedEvent
from service.plugins.registry import Registry
from service.store.memory import MemoryStore
from tests.support.grpc_client import (
    asking_again_if_lost,
    command,
    connect,
    details_of,
    running_server,
    with_jwt_auth,
)
from tests.support.http import request
from tests.support.security import JwtIssuer, api_key_file, bearer
from tests.support.waiting import eventually

SECRET_OWNER = "ann-the-secret-owner"
ROOT_KEY = "audit-root-key-0123456789abcdef"


@dataclass
class Served:
    app: Application
    issuer: JwtIssuer

    def token(self, subject: str) -> str:
        return self.issuer.token(subject)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    issuer = JwtIssuer()
    async with running_server(
        MemoryStore(),
        settings=with_jwt_auth(tmp_path, issuer),
    ) as (app, _):
        served = Served(app, issuer)
        async with connect(app.address, interceptors=bearer(served.token("alice"))) as alice:
            await alice.submit(command("acc-1", bank.OpenAccount(owner=SECRET_OWNER), user_id=""))
        async with connect(app.address, interceptors=bearer(served.token("root"))) as root:
            await groups_grpc.SubscriptionGroupServiceStub(root.channel).CreateGroup(
                groups.CreateGroupRequest(name="everything")
            )
        yield served


def served_methods() -> dict[str, Any]:
    """Every method behind the gate, by full name: Chronicle's services and
    server reflection (health is open, and tested apart)."""
    pool = descriptor_pool.Default()
    assert reflection_pb2.DESCRIPTOR is not None  # registers reflection's service in the pool
    methods = {}
    for service in (*SERVICE_NAMES, reflection.SERVICE_NAME):
        for method in pool.FindServiceByName(service).methods:
            methods[f"/{service}/{method.name}"] = method
    # Reflection v1: v1alpha's method under v1's path (service.api.server.add_reflection_v1).
    methods[f"/{REFLECTION_V1}/ServerReflectionInfo"] = methods[f"/{reflection.SERVICE_NAME}/ServerReflectionInfo"]
    return methods


async def call_raw(
    channel: grpc.aio.Channel, path: str, method: Any, request: bytes, metadata: tuple[tuple[str, str], ...]
) -> list[bytes]:
    """One call of any shape, with ``request`` as its (only) message and
    ``metadata`` sent as given (the tests' bearer interceptors cover no
    stream-unary call); the messages it answered, up to the first. Asked
    again if grpc.aio lost the server's status (``asking_again_if_lost``)."""
    return await asking_again_if_lost(lambda: _call_once(channel, path, method, request, metadata))


async def _call_once(
    channel: grpc.aio.Channel, path: str, method: Any, request: bytes, metadata: tuple[tuple[str, str], ...]
) -> list[bytes]:
    if method.client_streaming and method.server_streaming:
        call = channel.stream_stream(path)(iter([request]), metadata=metadata, timeout=10)
        async for answer in call:
            call.cancel()
            return [answer]
        return []
    if method.client_streaming:
        return [await channel.stream_unary(path)(iter([request]), metadata=metadata, timeout=10)]
    if method.server_streaming:
        call = channel.unary_stream(path)(request, metadata=metadata, timeout=10)
        async for answer in call:
            call.cancel()
            return [answer]
        return []
    return [await channel.unary_unary(path)(request, metadata=metadata, timeout=10)]


async def test_every_method_refuses_a_caller_without_credentials(served: Served) -> None:
    outcomes = {}
    async with connect(served.app.address) as anonymous:
        for path, method in served_methods().items():
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call_raw(anonymous.channel, path, method, b"", ())
            details = details_of(raised.value)
            outcomes[path] = (details.code, details.reason)
        # Health alone answers without credentials, as documented.
        health = await health_pb2_grpc.HealthStub(anonymous.channel).Check(health_pb2.HealthCheckRequest())
    assert outcomes == dict.fromkeys(outcomes, (grpc.StatusCode.UNAUTHENTICATED, "NO_CREDENTIALS"))
    assert len(outcomes) == 50
    assert health.status == health_pb2.HealthCheckResponse.SERVING


# -- a principal the policy grants nothing -------------------------------------------

OPEN = "open to every authenticated caller"


def submit(message: Message) -> cs.SubmitRequest:
    return cs.SubmitRequest(command=command("acc-1", message, user_id=""))


def start_consuming(group: str) -> groups.ConsumeRequest:
    return groups.ConsumeRequest(start=groups.ConsumeStart(group=group, consumer="worker"))


# What a principal the policy does not name ("eve") sends to each method,
# and what docs/security.md (and the protos) say it gets: a refusal's
# reason, or OPEN.
UNGRANTED: dict[str, tuple[Message, str]] = {
    "/chronicle.v1.CommandService/Submit": (submit(bank.Deposit(amount=1)), "SUBMIT_DENIED"),
    "/chronicle.v1.CommandService/SubmitBatch": (
        cs.SubmitBatchRequest(commands=[command("acc-1", bank.Deposit(amount=1), user_id="")]),
        "SUBMIT_DENIED",
    ),
    # Streams answer each command on its own: the refusal is the command's.
    "/chronicle.v1.CommandService/SubmitStream": (submit(bank.Deposit(amount=1)), "SUBMIT_DENIED"),
    # Lists the aggregate types the caller may read or submit to: none.
    "/chronicle.v1.CommandService/ListTypes": (cs.ListTypesRequest(), OPEN),
    "/chronicle.v1.CommandService/SubmitStreamPages": (
        cs.SubmitPage(requests=[submit(bank.Deposit(amount=1))]),
        "SUBMIT_DENIED",
    ),
    "/chronicle.v1.EventService/ReadAggregate": (ev.ReadAggregateRequest(aggregate_id="acc-1"), "READ_DENIED"),
    "/chronicle.v1.EventService/ReadAggregatePages": (ev.ReadAggregateRequest(aggregate_id="acc-1"), "READ_DENIED"),
    "/chronicle.v1.EventService/GetAggregate": (ev.GetAggregateRequest(aggregate_id="acc-1"), "READ_DENIED"),
    "/chronicle.v1.EventService/Subscribe": (ev.SubscribeRequest(), "SUBSCRIBE_DENIED"),
    "/chronicle.v1.AdminService/QueryAudit": (admin.QueryAuditRequest(), "ADMIN_DENIED"),
    "/chronicle.v1.AdminService/ForgetAggregate": (admin.ForgetAggregateRequest(aggregate_id="acc-1"), "ADMIN_DENIED"),
    "/chronicle.v1.AdminService/RewrapKeys": (admin.RewrapKeysRequest(), "ADMIN_DENIED"),
    "/chronicle.v1.AdminService/ListAggregates": (admin.ListAggregatesRequest(prefix="acc-"), "ADMIN_DENIED"),
    "/chronicle.v1.AdminService/ForgetAggregates": (
        admin.ForgetAggregatesRequest(prefix="acc-", confirm=1),
        "ADMIN_DENIED",
    ),
    "/chronicle.v1.AdminService/ExportLog": (admin.ExportLogRequest(), "ADMIN_DENIED"),
    "/chronicle.v1.AdminService/ImportLog": (admin.ImportLogRequest(), "ADMIN_DENIED"),
    "/chronicle.v1.AdminService/DeleteAggregate": (admin.DeleteAggregateRequest(aggregate_id="acc-1"), "ADMIN_DENIED"),
    "/chronicle.v1.ProjectionService/GetDocument": (
        pj.GetDocumentRequest(projection="bank.balances_by_owner", key=SECRET_OWNER),
        "READ_DENIED",
    ),
    "/chronicle.v1.ProjectionService/GetDocuments": (
        pj.GetDocumentsRequest(projection="bank.balances_by_owner", keys=[SECRET_OWNER]),
        "READ_DENIED",
    ),
    "/chronicle.v1.ProjectionService/ListDocuments": (
        pj.ListDocumentsRequest(projection="bank.balances_by_owner"),
        "READ_DENIED",
    ),
    "/chronicle.v1.ProjectionService/CountDocuments": (
        pj.CountDocumentsRequest(projection="bank.balances_by_owner"),
        "READ_DENIED",
    ),
    "/chronicle.v1.ProjectionService/GetProjection": (
        pj.GetProjectionRequest(name="bank.balances_by_owner"),
        "READ_DENIED",
    ),
    # Lists what the caller may read: nothing.
    "/chronicle.v1.ProjectionService/ListProjections": (pj.ListProjectionsRequest(), OPEN),
    "/chronicle.v1.ProjectionService/ListParkedEvents": (
        pj.ListParkedEventsRequest(projection="bank.balances_by_owner"),
        "READ_DENIED",
    ),
    "/chronicle.v1.ProjectionService/RebuildProjection": (
        pj.RebuildProjectionRequest(name="bank.balances_by_owner"),
        "ADMIN_DENIED",
    ),
    "/chronicle.v1.ProjectionService/SkipEvent": (
        pj.SkipEventRequest(projection="bank.balances_by_owner", position=1),
        "ADMIN_DENIED",
    ),
    "/chronicle.v1.ProjectionService/DeleteProjection": (
        pj.DeleteProjectionRequest(name="bank.balances_by_owner.v0"),
        "ADMIN_DENIED",
    ),
    "/chronicle.v1.ReactionService/ListReactions": (rx.ListReactionsRequest(), OPEN),
    "/chronicle.v1.ReactionService/GetReaction": (rx.GetReactionRequest(name="bank.transfers"), "READ_DENIED"),
    "/chronicle.v1.ReactionService/ListParkedCommands": (
        rx.ListParkedCommandsRequest(reaction="bank.transfers"),
        "READ_DENIED",
    ),
    "/chronicle.v1.ReactionService/ReplayParkedCommand": (
        rx.ReplayParkedCommandRequest(reaction="bank.transfers", command_id="c-1"),
        "ADMIN_DENIED",
    ),
    "/chronicle.v1.ReactionService/DismissParkedCommand": (
        rx.DismissParkedCommandRequest(reaction="bank.transfers", command_id="c-1"),
        "ADMIN_DENIED",
    ),
    "/chronicle.v1.ReactionService/ReplayAllParkedCommands": (
        rx.ReplayAllParkedCommandsRequest(reaction="bank.transfers"),
        "ADMIN_DENIED",
    ),
    "/chronicle.v1.ReactionService/DismissAllParkedCommands": (
        rx.DismissAllParkedCommandsRequest(reaction="bank.transfers"),
        "ADMIN_DENIED",
    ),
    "/chronicle.v1.ReactionService/ResetReaction": (
        rx.ResetReactionRequest(name="bank.transfers", position=1),
        "ADMIN_DENIED",
    ),
    "/chronicle.v1.ReactionService/DropProcessState": (
        rx.DropProcessStateRequest(reaction="bank.transfers", state_key="t-1"),
        "ADMIN_DENIED",
    ),
    # A process state may hold personal data: reading one is an administrator's.
    "/chronicle.v1.ReactionService/GetProcessState": (
        rx.GetProcessStateRequest(reaction="bank.transfers", state_key="t-1"),
        "ADMIN_DENIED",
    ),
    "/chronicle.v1.ReactionService/ListProcessStates": (
        rx.ListProcessStatesRequest(reaction="bank.transfers"),
        "ADMIN_DENIED",
    ),
    # Routing clients of any principal follow the topology.
    "/chronicle.v1.ClusterService/GetTopology": (cluster.GetTopologyRequest(), OPEN),
    "/chronicle.v1.ClusterService/WatchTopology": (cluster.WatchTopologyRequest(), OPEN),
    "/chronicle.v1.SubscriptionGroupService/CreateGroup": (groups.CreateGroupRequest(name="mine"), "ADMIN_DENIED"),
    "/chronicle.v1.SubscriptionGroupService/DeleteGroup": (
        groups.DeleteGroupRequest(name="everything"),
        "ADMIN_DENIED",
    ),
    "/chronicle.v1.SubscriptionGroupService/UpdateGroup": (
        groups.UpdateGroupRequest(name="everything", max_delivery_attempts=1),
        "ADMIN_DENIED",
    ),
    # Lists the groups the caller may consume: none.
    "/chronicle.v1.SubscriptionGroupService/ListGroups": (groups.ListGroupsRequest(), OPEN),
    "/chronicle.v1.SubscriptionGroupService/Consume": (start_consuming("everything"), "CONSUME_DENIED"),
    "/chronicle.v1.SubscriptionGroupService/ListParked": (
        groups.ListParkedRequest(group="everything"),
        "CONSUME_DENIED",
    ),
    "/chronicle.v1.SubscriptionGroupService/ReplayParked": (
        groups.ReplayParkedRequest(group="everything"),
        "ADMIN_DENIED",
    ),
    "/chronicle.v1.SubscriptionGroupService/DismissParked": (
        groups.DismissParkedRequest(group="everything", event_ids=["3f0c6a6e-8d0c-4a57-9e1b-2f7a4b9c1d23"]),
        "ADMIN_DENIED",
    ),
    # Reflection is behind the gate for the API's shape, not the policy.
    f"/{reflection.SERVICE_NAME}/ServerReflectionInfo": (
        reflection_pb2.ServerReflectionRequest(list_services=""),
        OPEN,
    ),
    f"/{REFLECTION_V1}/ServerReflectionInfo": (reflection_pb2.ServerReflectionRequest(list_services=""), OPEN),
}
STREAMED_COMMANDS = {"/chronicle.v1.CommandService/SubmitStream", "/chronicle.v1.CommandService/SubmitStreamPages"}


async def test_every_method_refuses_a_principal_the_policy_grants_nothing(served: Served) -> None:
    methods = served_methods()
    assert set(UNGRANTED) == set(methods), "a method without its expected answer to an ungranted caller"
    metadata = (("authorization", f"Bearer {served.token('eve')}"),)
    outcomes, leaks = {}, []
    async with connect(served.app.address) as eve:
        for path, (sent, _) in UNGRANTED.items():
            try:
                answers = await call_raw(eve.channel, path, methods[path], sent.SerializeToString(), metadata)
            except grpc.aio.AioRpcError as error:
                details = details_of(error)
                outcomes[path] = details.reason if details.code == grpc.StatusCode.PERMISSION_DENIED else details
                said = " ".join([details.message, *details.metadata.values()])
            else:
                outcomes[path] = OPEN
                said = b" ".join(answers).decode("latin-1")
                if path in STREAMED_COMMANDS:
                    (answer,) = answers
                    results = (
                        cs.SubmitResultPage.FromString(answer).results
                        if path.endswith("Pages")
                        else [cs.SubmitStreamResponse.FromString(answer)]
                    )
                    (result,) = results
                    assert result.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
                    outcomes[path] = result.error.reason
            if SECRET_OWNER in said or (path.startswith("/chronicle.v1.EventService/") and "Account" in said):
                leaks.append(path)
    assert outcomes == {path: expected for path, (_, expected) in UNGRANTED.items()}
    assert leaks == []
    # Every refused call audited exactly once, with eve's address, those
    # refused inside the command pipeline (Submit and its streams, filed
    # under the command's type) as those the gate or a servicer refused
    # (filed under the RPC's name). An administrator's action is audited by
    # its servicer, and the gate's denial hook recorded it a second time.
    async with connect(served.app.address, interceptors=bearer(served.token("root"))) as root:
        entries = (await root.admin.QueryAudit(admin.QueryAuditRequest(principal="eve", limit=1000))).entries
    refused = [path for path, (_, expected) in UNGRANTED.items() if expected != OPEN]
    submits = [path for path in refused if path.startswith("/chronicle.v1.CommandService/")]
    expected_entries = Counter({path.lstrip("/"): 1 for path in refused if path not in submits})
    expected_entries["bank.v1.Deposit"] = len(submits)
    assert Counter(e.command_type for e in entries) == expected_entries
    assert all(e.peer.startswith("ipv4:127.0.0.1:") for e in entries), [(e.reason, e.peer) for e in entries]


# -- denials in the audit log ---------------------------------------------------------


async def audit_entries(served: Served, **fields: Any) -> list[tuple[str, str, str, str]]:
    async with connect(served.app.address, interceptors=bearer(served.token("root"))) as root:
        response = await root.admin.QueryAudit(admin.QueryAuditRequest(**fields))
    return sorted((e.principal, e.command_type, e.reason, e.aggregate_id) for e in response.entries)


async def test_denied_reads_of_reactions_and_groups_are_audited(served: Served) -> None:
    # docs/security.md: every read or subscription the policy denied is in
    # the audit log, whichever service answered it.
    async with connect(served.app.address, interceptors=bearer(served.token("bob"))) as bob:
        reactions = rx_grpc.ReactionServiceStub(bob.channel)
        group_service = groups_grpc.SubscriptionGroupServiceStub(bob.channel)
        for denied in (
            reactions.GetReaction(rx.GetReactionRequest(name="bank.transfers")),
            reactions.ListParkedCommands(rx.ListParkedCommandsRequest(reaction="bank.transfers")),
            group_service.ListParked(groups.ListParkedRequest(group="everything")),
        ):
            with pytest.raises(grpc.aio.AioRpcError):
                await denied
        consume = group_service.Consume()
        await consume.write(start_consuming("everything"))
        assert await reason_of_first(consume) == "CONSUME_DENIED"
    assert await audit_entries(served, principal="bob") == [
        ("bob", "chronicle.v1.ReactionService/GetReaction", "READ_DENIED", ""),
        ("bob", "chronicle.v1.ReactionService/ListParkedCommands", "READ_DENIED", ""),
        ("bob", "chronicle.v1.SubscriptionGroupService/Consume", "CONSUME_DENIED", ""),
        ("bob", "chronicle.v1.SubscriptionGroupService/ListParked", "CONSUME_DENIED", ""),
    ]


async def test_a_denied_skip_is_audited_once(served: Served) -> None:
    async with connect(served.app.address, interceptors=bearer(served.token("bob"))) as bob:
        with pytest.raises(grpc.aio.AioRpcError):
            await bob.projections.SkipEvent(pj.SkipEventRequest(projection="bank.balances_by_owner", position=1))
    assert await audit_entries(served, principal="bob") == [
        ("bob", "chronicle.v1.ProjectionService/SkipEvent", "ADMIN_DENIED", "projection:bank.balances_by_owner"),
    ]


async def test_a_denied_rebuild_is_audited_once(served: Served) -> None:
    # The servicer audits an administrator's action, done or refused; the
    # gate's denial hook recorded the refusal a second time.
    async with connect(served.app.address, interceptors=bearer(served.token("bob"))) as bob:
        with pytest.raises(grpc.aio.AioRpcError):
            await bob.projections.RebuildProjection(pj.RebuildProjectionRequest(name="bank.balances_by_owner"))
    assert await audit_entries(served, principal="bob") == [
        (
            "bob",
            "chronicle.v1.ProjectionService/RebuildProjection",
            "ADMIN_DENIED",
            "projection:bank.balances_by_owner",
        ),
    ]


# -- quotas on every long-lived stream ----------------------------------------------


@pytest.fixture
async def quota_server(tmp_path: Path) -> AsyncIterator[Served]:
    issuer = JwtIssuer()
    async with running_server(
        MemoryStore(),
        settings=replace(with_jwt_auth(tmp_path, issuer), max_subscriptions_per_principal=1, max_rpcs_per_principal=1),
    ) as (app, _):
        served = Served(app, issuer)
        async with connect(app.address, interceptors=bearer(served.token("root"))) as root:
            accounts = groups.GroupFilter(aggregate_types=["Account"])
            await groups_grpc.SubscriptionGroupServiceStub(root.channel).CreateGroup(
                groups.CreateGroupRequest(name="tellers", filter=accounts)
            )
        yield served


async def reason_of_first(call: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    return details_of(raised.value).reason


async def test_a_topology_watch_a_group_consumer_and_a_subscription_share_the_principals_quota(
    quota_server: Served,
) -> None:
    gate = quota_server.app.gate
    assert gate is not None
    async with connect(quota_server.app.address, interceptors=bearer(quota_server.token("alice"))) as alice:
        watch = cluster_grpc.ClusterServiceStub(alice.channel).WatchTopology(cluster.WatchTopologyRequest())
        assert (await watch.read()).HasField("topology")
        consume = groups_grpc.SubscriptionGroupServiceStub(alice.channel).Consume()
        await consume.write(start_consuming("tellers"))
        subscribe = alice.events.Subscribe(ev.SubscribeRequest())
        refused = [await reason_of_first(consume), await reason_of_first(subscribe)]
        watch.cancel()
        await eventually(lambda: not gate.subscriptions_of, what="the watch counted out")
        consume = groups_grpc.SubscriptionGroupServiceStub(alice.channel).Consume()
        await consume.write(start_consuming("tellers"))
        joined = await consume.read()
        consume.cancel()
    assert refused == ["PRINCIPAL_TOO_MANY_SUBSCRIPTIONS"] * 2
    assert joined.joined.consumer.startswith("worker")


async def test_an_open_command_stream_holds_one_of_the_principals_calls(quota_server: Served) -> None:
    async with connect(quota_server.app.address, interceptors=bearer(quota_server.token("alice"))) as alice:
        stream = alice.commands.SubmitStreamPages()
        await stream.initial_metadata()  # accepted: the call is in the gate
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await alice.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acc-1"))
        # Subscriptions are counted apart: one is still let in.
        subscribe = alice.events.Subscribe(ev.SubscribeRequest())
        assert (await subscribe.read()).HasField("caught_up")
        subscribe.cancel()
        await stream.done_writing()
        assert [page async for page in stream] == []
    assert details_of(raised.value).reason == "PRINCIPAL_TOO_MANY_REQUESTS"


# -- the console's live tail ----------------------------------------------------------


async def open_tail(address: str, cookie: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /tail/events?after=0 HTTP/1.1\r\nHost: {address}\r\nCookie: {cookie}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return reader, writer


async def sse_until(reader: asyncio.StreamReader, wanted: Callable[[str], bool]) -> list[str]:
    """The tail's messages up to the first ``wanted`` one, or to the end of
    the stream."""
    seen: list[str] = []
    async with asyncio.timeout(20):
        while True:
            try:
                message = (await reader.readuntil(b"\n\n")).decode()
            except asyncio.IncompleteReadError:
                return seen
            seen.append(message)
            if wanted(message):
                return seen


async def test_the_console_tail_ends_with_its_session(tmp_path: Path) -> None:
    settings = replace(
        with_jwt_auth(tmp_path, JwtIssuer()),
        api_keys_file=api_key_file(tmp_path / "keys.toml", [(ROOT_KEY, "root", ["teller"])]),
        console_listen="127.0.0.1:0",
    )
    app = await start(settings, store=MemoryStore())
    try:
        assert app.console is not None
        address = app.console.address
        logged_in = await request(
            address,
            "POST",
            "/login",
            headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://{address}"},
            body=urlencode({"credential": ROOT_KEY}).encode(),
        )
        cookie = logged_in.all("set-cookie")[0].split(";")[0]
        page = await request(address, "GET", "/log", headers={"Cookie": cookie})
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf is not None
        reader, writer = await open_tail(address, cookie)
        try:
            async with connect(app.address, interceptors=bearer(ROOT_KEY)) as root:
                await root.submit(command("acc-1", bank.OpenAccount(owner="before"), user_id=""))
                before = await sse_until(reader, lambda message: "acc-1" in message)
                logged_out = await request(
                    address,
                    "POST",
                    "/logout",
                    headers={
                        "Content-Type": "application/x-www-form-urlencoded",
                        "Origin": f"http://{address}",
                        "Cookie": cookie,
                    },
                    body=urlencode({"csrf_token": csrf.group(1)}).encode(),
                )
                assert logged_out.status == 303
                await root.submit(command("acc-2", bank.OpenAccount(owner=SECRET_OWNER), user_id=""))
                after = await sse_until(reader, lambda message: "acc-2" in message or "refused" in message)
        finally:
            writer.close()
    finally:
        await app.stop(grace=0.5, drain=0)
    assert any("acc-1" in message and "before" in message for message in before)
    assert not any(SECRET_OWNER in message for message in after)
    assert after[-1].startswith("event: refused") and "SESSION_ENDED" in after[-1]


# -- lists show what the caller may read -----------------------------------------------

watching = Plugin("watching")
box_watch = watching.reaction("watching.boxes", aggregate_types=["Box"])


@box_watch.on(box_pb2.BoxCreated)
def _noticed(event: box_pb2.BoxCreated, envelope: ProjectedEvent, state: None) -> None:
    return None


async def test_reactions_are_listed_as_the_caller_may_read_them(tmp_path: Path) -> None:
    # ListReactions refused the whole list when one reaction read a type the
    # caller may not read; ListProjections lists those it may.
    issuer = JwtIssuer()
    async with running_server(
        MemoryStore(),
        registry=Registry([bank_account.plugin, box_plugin, watching]),
        settings=with_jwt_auth(tmp_path, issuer),
    ) as (app, _):
        listed = {}
        for who in ("alice", "bob", "root"):  # Account; Box; everything
            async with connect(app.address, interceptors=bearer(issuer.token(who))) as caller:
                response = await rx_grpc.ReactionServiceStub(caller.channel).ListReactions(rx.ListReactionsRequest())
                listed[who] = [reaction.name for reaction in response.reactions]
    # bank.transfers reads Transfer and Account: alice may read only Account.
    assert listed == {"alice": [], "bob": ["watching.boxes"], "root": ["bank.transfers", "watching.boxes"]}


# -- what a wait for a position tells -------------------------------------------------


async def test_a_caller_that_may_read_nothing_learns_nothing_from_min_position(served: Served) -> None:
    # Reads wait for min_position before the read is checked (read your
    # writes on a standby behind), and a position beyond the end was
    # refused POSITION_BEYOND_END naming the log's head: to a caller that
    # may read nothing, the size of the log it may not read.
    async with connect(served.app.address, interceptors=bearer(served.token("eve"))) as eve:
        for read in (
            eve.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acc-1", min_position=10**9)),
            eve.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acc-1", min_position=1)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await read
            details = details_of(refused.value)
            assert (details.code, details.reason) == (grpc.StatusCode.PERMISSION_DENIED, "READ_DENIED")
            assert "log_head" not in details.metadata
    # A caller that may read the aggregate still waits for its position.
    async with connect(served.app.address, interceptors=bearer(served.token("alice"))) as alice:
        state = await alice.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acc-1", min_position=1))
        assert state.version == 1
        with pytest.raises(grpc.aio.AioRpcError) as beyond:
            await alice.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acc-1", min_position=10**9))
        assert details_of(beyond.value).reason == "POSITION_BEYOND_END"


async def test_an_upload_through_the_bearer_helper_carries_its_token(served: Served) -> None:
    # ImportLog streams its requests and gets one answer: the test helper
    # sent no token on calls of that shape (UNAUTHENTICATED, not the policy's answer).
    async with connect(served.app.address, interceptors=bearer(served.token("eve"))) as eve:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asking_again_if_lost(lambda: eve.admin.ImportLog(iter([admin.ImportLogRequest()])))
    details = details_of(refused.value)
    assert (details.code, details.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ADMIN_DENIED")
