"""The Python client's routed command streams (``submit_stream`` with
``routing=True``) against stand-in members over real sockets: which of a
lane's reopenings mark its member down and move the lane to another member
(the call broke with UNAVAILABLE or a CANCELLED the client did not ask for,
without a reason, or with SHUTTING_DOWN), and which reopen on the same
member (SubmitStream after a SubmitStreamPages answered UNIMPLEMENTED, a
retried error such as a full queue, an UNAVAILABLE a live member sends:
CREDENTIALS_CHANGED, gRPC's "max connection age"); and the same rule for
routed unary Submits. Each stand-in answers every command itself and
records it, so a test sees which member answered which command. What the
commands do on a real cluster is tested in test_routing_client.py."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2
from grpc_status import rpc_status

from chronicle.v1 import cluster_service_pb2, cluster_service_pb2_grpc
from chronicle.v1 import command_service_pb2 as pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service import errors
from service.api.status import rich_status
from service.client import ChronicleClient, Command, RetryPolicy
from service.client.routing import partition_of
from tests.support.routes import record_marks

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_attempts=10)
PARTITIONS = 4


class Member:
    """A stand-in replica: ClusterService (the topology it is given), and
    CommandService's SubmitStream and, when ``paged``, SubmitStreamPages (a
    server without it answers UNIMPLEMENTED, as one from before it would).
    Its SubmitStreamPages calls end with the statuses in ``breaks``, one a
    call (taken when the call starts), after the call's first page and
    before answering any of it; then they answer. Members may share one
    ``breaks``. Its unary Submits end with the statuses in ``unary_breaks``,
    one a call, then answer."""

    def __init__(
        self,
        name: str,
        *,
        paged: bool = True,
        breaks: deque[grpc.Status] | None = None,
        unary_breaks: deque[grpc.Status] | None = None,
    ) -> None:
        self.name = name
        self.paged = paged
        self.breaks: deque[grpc.Status] = deque() if breaks is None else breaks
        self.unary_breaks: deque[grpc.Status] = deque() if unary_breaks is None else unary_breaks
        self.topology = cluster_service_pb2.Topology()
        self.address = ""
        self.answered: dict[str, str] = {}  # command id → aggregate id, of the commands it answered
        self.calls: list[str] = []  # the CommandService methods called, in order

    async def start(self, stack: AsyncExitStack) -> None:
        server = grpc.aio.server()
        methods = {
            "/chronicle.v1.CommandService/Submit": grpc.unary_unary_rpc_method_handler(
                self._submit,
                request_deserializer=pb.SubmitRequest.FromString,
                response_serializer=pb.SubmitResponse.SerializeToString,
            ),
            "/chronicle.v1.CommandService/SubmitStream": grpc.stream_stream_rpc_method_handler(
                self._submit_stream,
                request_deserializer=pb.SubmitRequest.FromString,
                response_serializer=pb.SubmitStreamResponse.SerializeToString,
            ),
        }
        if self.paged:
            methods["/chronicle.v1.CommandService/SubmitStreamPages"] = grpc.stream_stream_rpc_method_handler(
                self._submit_stream_pages,
                request_deserializer=pb.SubmitPage.FromString,
                response_serializer=pb.SubmitResultPage.SerializeToString,
            )
        server.add_generic_rpc_handlers((_Recorded(self.calls, methods),))
        cluster_service_pb2_grpc.add_ClusterServiceServicer_to_server(_Topology(self), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stack.push_async_callback(server.stop, None)
        self.address = f"127.0.0.1:{port}"

    def _answer(self, request: pb.SubmitRequest) -> pb.SubmitStreamResponse:
        command = request.command
        self.answered[command.command_id] = command.aggregate_id
        return pb.SubmitStreamResponse(command_id=command.command_id, ok=pb.SubmitResponse(version=1))

    async def _submit(self, request: pb.SubmitRequest, context: Any) -> pb.SubmitResponse:
        self.calls.append("Submit")
        if self.unary_breaks:
            breaking = self.unary_breaks.popleft()
            await context.abort(breaking.code, breaking.details, breaking.trailing_metadata)
        return self._answer(request).ok

    async def _submit_stream(self, requests: AsyncIterator[pb.SubmitRequest], context: Any) -> AsyncIterator[Any]:
        self.calls.append("SubmitStream")
        async for request in requests:
            yield self._answer(request)

    async def _submit_stream_pages(self, pages: AsyncIterator[pb.SubmitPage], context: Any) -> AsyncIterator[Any]:
        self.calls.append("SubmitStreamPages")
        breaking = self.breaks.popleft() if self.breaks else None
        async for page in pages:
            if breaking is not None:
                await context.abort(breaking.code, breaking.details, breaking.trailing_metadata)
            yield pb.SubmitResultPage(results=[self._answer(request) for request in page.requests])


class _Recorded(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The CommandService methods in ``methods`` (by full name); records
    the name of a method called that is not among them (gRPC answers it
    UNIMPLEMENTED). Those offered record their calls themselves (gRPC may
    look a method up more than once a call)."""

    def __init__(self, calls: list[str], methods: dict[str, grpc.RpcMethodHandler]) -> None:
        self._calls = calls
        self._methods = methods

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        service, _, name = details.method.rpartition("/")
        handler = self._methods.get(details.method)
        if handler is None and service == "/chronicle.v1.CommandService":
            self._calls.append(name)
        return handler


def ending(code: grpc.StatusCode, message: str = "") -> grpc.Status:
    """A status with no details, that a call ends with."""
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message or f"{code.name} (simulated)"))


class _Topology(cluster_service_pb2_grpc.ClusterServiceServicer):
    def __init__(self, member: Member) -> None:
        self._member = member

    async def GetTopology(self, request: Any, context: Any) -> cluster_service_pb2.GetTopologyResponse:
        return cluster_service_pb2.GetTopologyResponse(topology=self._member.topology)

    async def WatchTopology(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield cluster_service_pb2.WatchTopologyResponse(topology=self._member.topology)
        await asyncio.Event().wait()  # it never changes; the call ends when the server stops


@asynccontextmanager
async def cluster(members: Sequence[Member]) -> AsyncIterator[ChronicleClient]:
    """``members`` serving one topology (partition ``p`` owned by
    ``members[p % len(members)]``), and a routing client that knows it (its
    seed: the first member)."""
    async with AsyncExitStack() as stack:
        for member in members:
            await member.start(stack)
        topology = cluster_service_pb2.Topology(
            epoch=1,
            partition_count=PARTITIONS,
            hash=cluster_service_pb2.PARTITION_HASH_CRC32,
            members=[cluster_service_pb2.Member(member_id=m.name, address=m.address) for m in members],
            partition_owners=[members[p % len(members)].name for p in range(PARTITIONS)],
        )
        for member in members:
            member.topology = topology
        client = await stack.enter_async_context(ChronicleClient.connect(members[0].address, routing=True, retry=FAST))
        assert client.routes is not None
        assert client.routes.topology == topology
        yield client


def owned_by(members: Sequence[Member], member: Member, count: int) -> list[str]:
    """``count`` aggregate ids whose partition ``member`` owns."""
    index = list(members).index(member)
    ids = (f"acc-{n}" for n in range(10_000))
    owned = (i for i in ids if partition_of(i, PARTITIONS) % len(members) == index)
    return [next(owned) for _ in range(count)]


def deposits(aggregate_ids: Sequence[str], rounds: int = 3) -> list[Command]:
    return [Command(a, bank.Deposit(amount=n + 1)) for n in range(rounds) for a in aggregate_ids]


async def submitted(client: ChronicleClient, commands: list[Command]) -> None:
    """Stream ``commands``; every one answered, in order, accepted."""
    results = [result async for result in client.submit_stream(commands)]
    assert [r.command.command_id for r in results] == [c.command_id for c in commands]
    assert all(r.error is None for r in results)


def answerers(members: Sequence[Member], commands: list[Command]) -> list[list[str]]:
    """The names of the members that answered each command."""
    return [[m.name for m in members if c.command_id in m.answered] for c in commands]


def owners(members: Sequence[Member], commands: list[Command]) -> list[list[str]]:
    return [[members[partition_of(c.aggregate_id, PARTITIONS) % len(members)].name] for c in commands]


async def test_a_member_without_paged_streams_gets_its_commands_over_submit_stream_and_stays_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    members = [Member("a", paged=False), Member("b", paged=False)]
    async with cluster(members) as client:
        marked = record_marks(client.routes, monkeypatch)
        commands = deposits(owned_by(members, members[0], 5) + owned_by(members, members[1], 5))
        await submitted(client, commands)
        assert client.routes is not None
        assert not any(client.routes.is_down(m.address) for m in members)
    assert marked == []
    # Each command was answered once, by its owner: each lane stayed on its
    # member, and went from SubmitStreamPages (UNIMPLEMENTED) to SubmitStream
    # there (unless the other lane's fallback came first).
    assert answerers(members, commands) == owners(members, commands)
    for member in members:
        assert member.calls in (["SubmitStreamPages", "SubmitStream"], ["SubmitStream"])
    assert "SubmitStreamPages" in members[0].calls + members[1].calls


@pytest.mark.parametrize(
    "status",
    [
        ending(grpc.StatusCode.UNAVAILABLE),
        ending(grpc.StatusCode.CANCELLED),
        # A member that says it is going (with a RetryInfo of a second).
        rich_status(errors.StoreUnavailable("the server is shutting down", reason="SHUTTING_DOWN")),
    ],
    ids=["UNAVAILABLE", "CANCELLED", "SHUTTING_DOWN"],
)
async def test_a_lane_whose_member_is_gone_marks_it_down_and_moves(
    status: grpc.Status, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = Member("a", breaks=deque([status]))
    members = [gone, Member("b")]
    async with cluster(members) as client:
        marked = record_marks(client.routes, monkeypatch)
        commands = deposits(owned_by(members, gone, 5))
        await submitted(client, commands)
    assert marked == [gone.address]
    assert gone.calls == ["SubmitStreamPages"]
    assert gone.answered == {}
    assert answerers(members, commands) == [["b"]] * len(commands)


@pytest.mark.parametrize(
    "refusal",
    [errors.Overloaded("the queue is full"), errors.ConcurrencyConflict("acc-0", 1)],
    ids=["RESOURCE_EXHAUSTED", "ABORTED"],
)
async def test_a_lane_broken_by_a_retried_refusal_reopens_on_its_member(
    refusal: errors.ChronicleError, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's own status: RESOURCE_EXHAUSTED with a RetryInfo (else not
    # retried), ABORTED.
    refusing = Member("a", breaks=deque([rich_status(refusal)]))
    members = [refusing, Member("b")]
    async with cluster(members) as client:
        marked = record_marks(client.routes, monkeypatch)
        commands = deposits(owned_by(members, refusing, 5) + owned_by(members, members[1], 5))
        await submitted(client, commands)
    assert marked == []
    assert refusing.calls == ["SubmitStreamPages", "SubmitStreamPages"]
    assert answerers(members, commands) == owners(members, commands)


@pytest.mark.parametrize(
    "status",
    [
        # The member read its policy again and the caller's grants changed:
        # the caller is to open the stream again there (after a second, as
        # its RetryInfo says).
        rich_status(errors.CredentialsChanged("the grants this stream was opened with changed; open it again")),
        # gRPC's own status for the calls of a connection past the server's
        # --max-connection-age-seconds and grace (test_routed_stream_reopen.py
        # has a real server send it).
        ending(grpc.StatusCode.UNAVAILABLE, "max connection age"),
    ],
    ids=["CREDENTIALS_CHANGED", "connection-age"],
)
async def test_a_lane_a_live_member_ended_reopens_on_it(status: grpc.Status, monkeypatch: pytest.MonkeyPatch) -> None:
    alive = Member("a", breaks=deque([status]))
    members = [alive, Member("b")]
    async with cluster(members) as client:
        marked = record_marks(client.routes, monkeypatch)
        commands = deposits(owned_by(members, alive, 5) + owned_by(members, members[1], 5))
        await submitted(client, commands)
        assert client.routes is not None
        assert client.routes.failovers == 0
    assert marked == []
    assert alive.calls == ["SubmitStreamPages", "SubmitStreamPages"]
    assert answerers(members, commands) == owners(members, commands)


async def test_a_moved_lane_whose_new_member_is_gone_marks_that_one_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """The member marked down is the one the broken call was on, not the
    lane's first: the lane moves on to the third."""
    unavailable = ending(grpc.StatusCode.UNAVAILABLE)
    elsewhere: deque[grpc.Status] = deque([unavailable])  # the first call on b or c breaks
    home = Member("a", breaks=deque([unavailable]))
    members = [home, Member("b", breaks=elsewhere), Member("c", breaks=elsewhere)]
    async with cluster(members) as client:
        marked = record_marks(client.routes, monkeypatch)
        commands = deposits(owned_by(members, home, 5))
        await submitted(client, commands)
    (refuge,) = [m for m in members[1:] if m.answered]
    (broken,) = [m for m in members[1:] if m is not refuge]
    assert marked == [home.address, broken.address]
    assert broken.calls == ["SubmitStreamPages"]
    assert answerers(members, commands) == [[refuge.name]] * len(commands)


@pytest.mark.parametrize(
    ("status", "gone"),
    [
        (ending(grpc.StatusCode.UNAVAILABLE), True),
        (ending(grpc.StatusCode.UNAVAILABLE, "max connection age"), False),
    ],
    ids=["no-reason", "connection-age"],
)
async def test_a_routed_submit_marks_its_member_down_only_when_it_is_gone(
    status: grpc.Status, gone: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A unary Submit that its owner ended with UNAVAILABLE is sent again
    with the same command id: to another member when the owner is gone
    (marked down), to the owner again when it only closed an old connection.
    (A SHUTTING_DOWN's RetryInfo holds the retry until the member is no
    longer marked down: the lanes' test above covers that reason.)"""
    home = Member("a", unary_breaks=deque([status]))
    members = [home, Member("b")]
    async with cluster(members) as client:
        marked = record_marks(client.routes, monkeypatch)
        (aggregate_id,) = owned_by(members, home, 1)
        command = Command(aggregate_id, bank.Deposit(amount=1))
        submitted = await client.submit(aggregate_id, command.message, command_id=command.command_id)
    assert submitted.version == 1
    assert marked == ([home.address] if gone else [])
    assert answerers(members, [command]) == ([["b"]] if gone else [["a"]])
    assert home.calls == (["Submit"] if gone else ["Submit", "Submit"])
