"""Promises docs/clients.md makes about the Python client (``service.client``)
that no other test held it to, each checked over a real socket: against a
real server where what the command did matters (run once, replayed), and
against stand-in servers where the client's own choices are the point
(which commands it takes, what it sends again, when it gives up).

Covered here: the retry policy's documented defaults; every code the doc
says is retried with the same command id (ABORTED, DEADLINE_EXCEEDED, a
CANCELLED the client did not ask for, RESOURCE_EXHAUSTED with a RetryInfo),
and gRPC's own RESOURCE_EXHAUSTED (a message too large) not retried;
``attempt_timeout`` bounding each attempt; a batch whose answer was lost
coming back whole and replayed; a stale credential from a token function
retried on a unary call with the next token; mutual TLS through
``connect``, routing included; a routing client's batches going to the
owner and its reads to the address given; a command stream that takes no
command beyond its window (256), pages of at most 64 KiB, a single command
refused with a retryable code not sent again; a stream's attempts counted
afresh with every message, and with ``renew_after``; a subscription of a
server from before pages; a group consumer opened again without a bound
after what a subscription is reopened after (UNAVAILABLE, CANCELLED,
ABORTED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED with a RetryInfo: a server
at its --max-subscriptions), not after gRPC's own RESOURCE_EXHAUSTED, and
after a stale token only ``max_attempts`` times.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from chronicle.v1 import (
    cluster_service_pb2,
    cluster_service_pb2_grpc,
    command_service_pb2,
    command_service_pb2_grpc,
    event_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    subscription_group_service_pb2,
    subscription_group_service_pb2_grpc,
)
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import (
    Aborted,
    ChronicleClient,
    Command,
    ResourceExhausted,
    RetryPolicy,
    StreamResult,
    Unauthenticated,
    Unavailable,
    client,
    streaming,
)
from service.client.routing import partition_of
from service.store.memory import MemoryStore
from tests.support.broken_calls import LoseFirstAnswers
from tests.support.grpc_client import TEST_SETTINGS, running_server, with_jwt_auth
from tests.support.jwks import KeyRing
from tests.support.security import POLICY, Authority, JwtIssuer, api_key_file, write
from tests.support.waiting import eventually

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
DETAILS_TRAILER = "grpc-status-details-bin"
ALICE_KEY = "chr_alice-claims-test-key-0123456789abcdef0123456789"


# -- building statuses and stand-in servers ---------------------------------------


def rich(code: grpc.StatusCode, message: str, *details: Message) -> grpc.Status:
    """A status as a server sends it: the code, the message and a
    ``google.rpc.Status`` with ``details`` in its trailers."""
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return rpc_status.to_status(status)


def reason(name: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=name, domain="chronicle")


def retry_after(seconds: float) -> error_details_pb2.RetryInfo:
    return error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=int(seconds * 1e9)))


async def end_with(context: Any, status: grpc.Status) -> None:
    await context.abort(status.code, status.details, status.trailing_metadata)


_ADD_SERVICER: list[tuple[type, Callable[[Any, grpc.aio.Server], None]]] = [
    (command_service_pb2_grpc.CommandServiceServicer, command_service_pb2_grpc.add_CommandServiceServicer_to_server),
    (event_service_pb2_grpc.EventServiceServicer, event_service_pb2_grpc.add_EventServiceServicer_to_server),
    (cluster_service_pb2_grpc.ClusterServiceServicer, cluster_service_pb2_grpc.add_ClusterServiceServicer_to_server),
    (
        subscription_group_service_pb2_grpc.SubscriptionGroupServiceServicer,
        subscription_group_service_pb2_grpc.add_SubscriptionGroupServiceServicer_to_server,
    ),
]


@asynccontextmanager
async def serving(*servicers: Any) -> AsyncIterator[str]:
    """A stand-in server on a real socket offering ``servicers`` (subclasses
    of the generated servicers: a method not overridden answers
    UNIMPLEMENTED); its address."""
    server = grpc.aio.server()
    for servicer in servicers:
        for base, add in _ADD_SERVICER:
            if isinstance(servicer, base):
                add(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def accepted(request: command_service_pb2.SubmitRequest) -> command_service_pb2.SubmitStreamResponse:
    return command_service_pb2.SubmitStreamResponse(
        command_id=request.command.command_id, ok=command_service_pb2.SubmitResponse(version=1)
    )


# What a stand-in command stream does with the ``index``-th command of its
# call number ``call``: an answer, or a status that ends the call.
Respond = Callable[
    [int, int, command_service_pb2.SubmitRequest], "command_service_pb2.SubmitStreamResponse | grpc.Status"
]


class CommandStreams(command_service_pb2_grpc.CommandServiceServicer):
    """SubmitStreamPages that records every page and answers each command as
    ``respond`` says, one result page per command, in order, but no more
    commands in all than ``allowed`` (None: no bound; ``allow`` raises it)."""

    def __init__(self, respond: Respond = lambda _call, _index, request: accepted(request)) -> None:
        self.respond = respond
        self.allowed: int | None = None
        self.pages: list[list[command_service_pb2.SubmitRequest]] = []
        self.calls = 0
        self._answers = 0
        self._changed = asyncio.Event()

    @property
    def received(self) -> list[command_service_pb2.SubmitRequest]:
        return [request for page in self.pages for request in page]

    def allow(self, more: int) -> None:
        self.allowed = (self.allowed or 0) + more
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def SubmitStreamPages(self, requests: AsyncIterator[Any], context: Any) -> None:
        self.calls += 1
        call, received, answered = self.calls, list[command_service_pb2.SubmitRequest](), 0

        async def read() -> None:
            async for page in requests:
                self.pages.append(list(page.requests))
                received.extend(page.requests)
                self._wake()

        reader = asyncio.create_task(read())
        reader.add_done_callback(lambda _: self._wake())
        try:
            while True:
                changed = self._changed
                if answered < len(received) and (self.allowed is None or self._answers < self.allowed):
                    outcome = self.respond(call, answered, received[answered])
                    if isinstance(outcome, grpc.Status):
                        await end_with(context, outcome)
                    self._answers += 1
                    answered += 1
                    await context.write(command_service_pb2.SubmitResultPage(results=[outcome]))
                elif reader.done() and answered == len(received):
                    return
                else:
                    await changed.wait()
        finally:
            reader.cancel()


class OneMember(cluster_service_pb2_grpc.ClusterServiceServicer):
    """ClusterService of a server that is the whole cluster."""

    def __init__(self) -> None:
        self.address = ""

    def _topology(self) -> cluster_service_pb2.Topology:
        return cluster_service_pb2.Topology(
            epoch=1,
            partition_count=1,
            hash=cluster_service_pb2.PARTITION_HASH_CRC32,
            members=[cluster_service_pb2.Member(member_id="only", address=self.address)],
            partition_owners=["only"],
        )

    async def GetTopology(self, request: Any, context: Any) -> cluster_service_pb2.GetTopologyResponse:
        return cluster_service_pb2.GetTopologyResponse(topology=self._topology())

    async def WatchTopology(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield cluster_service_pb2.WatchTopologyResponse(topology=self._topology())
        await asyncio.Event().wait()  # it never changes


class CommandStreamsOfOne(CommandStreams, OneMember):
    def __init__(self) -> None:
        CommandStreams.__init__(self)
        OneMember.__init__(self)


async def collect(results: AsyncIterator[StreamResult]) -> list[StreamResult]:
    async with asyncio.timeout(30):  # a broken build fails instead of hanging
        return [result async for result in results]


def opening(aggregate_id: str, owner: str = "ann") -> Command:
    return Command(aggregate_id, bank.OpenAccount(owner=owner))


# -- retries -------------------------------------------------------------------


def test_the_retry_policy_and_attempt_timeout_default_as_documented() -> None:
    assert RetryPolicy() == RetryPolicy(
        max_attempts=None,
        retry_for=30.0,
        initial_backoff=0.05,
        max_backoff=2.0,
        multiplier=2.0,
        jitter=0.2,
        renew_after=10.0,
    )
    assert client.DEFAULT_ATTEMPT_TIMEOUT == 10.0


class AnswerFirstWith(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Lets every call reach the server and run there, then replaces the
    first answer with ``status``: a server that ran the command and whose
    answer was lost, or that refused it for now. Records every request."""

    def __init__(self, status: grpc.Status) -> None:
        self.status = status
        self.requests: list[Any] = []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.requests.append(request)
        call = await continuation(details, request)
        if len(self.requests) > 1:
            return call
        await call  # the server ran it
        trailers = grpc.aio.Metadata(*self.status.trailing_metadata)
        raise grpc.aio.AioRpcError(self.status.code, grpc.aio.Metadata(), trailers, self.status.details)


@pytest.mark.parametrize(
    "status",
    [
        rich(grpc.StatusCode.ABORTED, "conflict (simulated)", reason("CONCURRENCY_CONFLICT"), retry_after(0.01)),
        rich(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
        rich(grpc.StatusCode.CANCELLED, "Cancelling all calls"),  # a stopping server's, not the client's
        rich(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full (simulated)", reason("OVERLOADED"), retry_after(0.01)),
    ],
    ids=["ABORTED", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED-with-RetryInfo"],
)
async def test_each_code_worth_retrying_is_retried_with_the_same_command_id(status: grpc.Status) -> None:
    answering = AnswerFirstWith(status)
    async with running_server(MemoryStore()) as (app, _):
        channel = grpc.aio.insecure_channel(app.address, interceptors=[answering])
        async with ChronicleClient(channel, retry=FAST, owns_channel=True) as retrying:
            opened = await retrying.submit("acc-1", bank.OpenAccount(owner="ann"))
            history = await retrying.read_all("acc-1")
    first, second = answering.requests
    assert first.command.command_id == second.command.command_id == opened.command_id
    assert opened.replayed  # the first attempt had run: its result, not a second run
    assert [e.envelope.command_id for e in history] == [opened.command_id]


async def test_grpcs_own_resource_exhausted_is_not_retried() -> None:
    """A message over gRPC's size limit (here the client's receive limit)
    will not shrink: RESOURCE_EXHAUSTED without a RetryInfo is final."""
    counting = LoseFirstAnswers(count=0)
    async with running_server(MemoryStore()) as (app, _):
        channel = grpc.aio.insecure_channel(
            app.address, options=[("grpc.max_receive_message_length", 16)], interceptors=[counting]
        )
        async with ChronicleClient(channel, retry=FAST, owns_channel=True) as small:
            with pytest.raises(ResourceExhausted) as refused:
                await small.submit("acc-1", bank.OpenAccount(owner="ann"))
    assert refused.value.retry_delay is None
    assert len(counting.requests) == 1


class Submits(command_service_pb2_grpc.CommandServiceServicer):
    """Submit: the first call is never answered; the others are accepted."""

    def __init__(self) -> None:
        self.command_ids: list[str] = []

    async def Submit(self, request: Any, context: Any) -> command_service_pb2.SubmitResponse:
        self.command_ids.append(request.command.command_id)
        if len(self.command_ids) == 1:
            await asyncio.Event().wait()  # until the client gives up on this attempt
        return command_service_pb2.SubmitResponse(version=1)


async def test_attempt_timeout_bounds_each_attempt_and_the_next_has_the_same_command_id() -> None:
    submits = Submits()
    async with serving(submits) as address, ChronicleClient.connect(address, retry=FAST, attempt_timeout=0.2) as timed:
        async with asyncio.timeout(30):
            done = await timed.submit("acc-1", bank.OpenAccount(owner="ann"))
    assert done.version == 1
    assert submits.command_ids == [done.command_id, done.command_id]  # DEADLINE_EXCEEDED, then again


async def test_a_batch_whose_answer_was_lost_comes_back_whole_and_replayed() -> None:
    losing = LoseFirstAnswers(count=1)
    batch = [opening("acc-1"), Command("acc-1", bank.Deposit(amount=5)), Command("acc-1", bank.Deposit(amount=7))]
    async with running_server(MemoryStore()) as (app, _):
        channel = grpc.aio.insecure_channel(app.address, interceptors=[losing])
        async with ChronicleClient(channel, retry=FAST, owns_channel=True) as retrying:
            done = await retrying.submit_batch(batch)
            history = await retrying.read_all("acc-1")
    first, second = losing.requests
    assert [c.command_id for c in first.commands] == [c.command_id for c in second.commands]
    assert [c.command_id for c in second.commands] == [c.command_id for c in batch]
    assert (done.version, done.replayed) == (3, True)
    assert [(r.command_id, r.version) for r in done.results] == [(c.command_id, n) for n, c in enumerate(batch, 1)]
    assert [e.envelope.command_id for e in history] == [c.command_id for c in batch]  # each appended once


# -- credentials ---------------------------------------------------------------------


class Tokens:
    """A token function handing out ``tokens`` in turn, the last for ever."""

    def __init__(self, *tokens: str) -> None:
        self._tokens = tokens
        self.asked = 0

    def __call__(self) -> str:
        self.asked += 1
        return self._tokens[min(self.asked, len(self._tokens)) - 1]


@pytest.mark.parametrize("stale_reason", ["UNKNOWN_API_KEY", "INVALID_TOKEN", "UNKNOWN_SIGNING_KEY"])
async def test_a_call_a_stale_token_failed_is_retried_with_the_token_functions_next(
    stale_reason: str, tmp_path: Path
) -> None:
    issuer, rotated_out = JwtIssuer(), JwtIssuer()
    settings = replace(
        with_jwt_auth(tmp_path, issuer),
        api_keys_file=api_key_file(tmp_path / "keys.toml", [(ALICE_KEY, "alice", [])]),
    )
    # A key set (its "current" key) in place of the one key: a token whose
    # kid it no longer holds is UNKNOWN_SIGNING_KEY, not INVALID_TOKEN.
    ring = KeyRing(issuer.issuer)
    ring.add("current")
    ring.add("withdrawn")
    if stale_reason == "UNKNOWN_SIGNING_KEY":
        settings = replace(
            settings, jwt_key_file=write(tmp_path / "jwks.json", json.dumps({"keys": [ring.jwk("current")]}))
        )
    stale, fresh = {
        # A revoked key, then the current one; a JWT signed with a key the
        # server rotated out, then one it verifies; the same with a key set.
        "UNKNOWN_API_KEY": ("chr_revoked-claims-test-key-0123456789abcdef012345", ALICE_KEY),
        "INVALID_TOKEN": (rotated_out.token("alice"), issuer.token("alice")),
        "UNKNOWN_SIGNING_KEY": (ring.token("alice", kid="withdrawn"), ring.token("alice", kid="current")),
    }[stale_reason]
    tokens = Tokens(stale, fresh)
    async with running_server(MemoryStore(), settings=settings) as (app, _):
        async with ChronicleClient.connect(app.address, token=tokens, retry=FAST) as renewing:
            opened = await renewing.submit("acc-1", bank.OpenAccount(owner="ann"))
        async with ChronicleClient.connect(app.address, token=stale, retry=FAST) as fixed:
            with pytest.raises(Unauthenticated) as refused:
                await fixed.get_aggregate("acc-1", bank.Account)
    assert (opened.version, opened.events[0].envelope.user_id) == (1, "alice")
    assert tokens.asked == 2  # the stale one, then the next, for the same command
    assert refused.value.reason == stale_reason  # a string stays stale: an error like any other


async def test_mutual_tls_through_connect_names_the_certificate_subject_routing_included(tmp_path: Path) -> None:
    ca = Authority()
    server = ca.issue("localhost", server=True)
    batch = ca.issue("batch")
    settings = replace(
        TEST_SETTINGS,
        listen="localhost:0",
        auth=True,
        policy_file=write(tmp_path / "policy.toml", POLICY),
        tls_cert_file=write(tmp_path / "server.pem", server.certificate),
        tls_key_file=write(tmp_path / "server.key", server.key),
        tls_client_ca_file=write(tmp_path / "clients-ca.pem", ca.certificate),
    )
    mutual = grpc.ssl_channel_credentials(
        root_certificates=ca.certificate, private_key=batch.key, certificate_chain=batch.certificate
    )
    async with running_server(MemoryStore(), settings=settings) as (app, _):
        async with ChronicleClient.connect(app.address, credentials=mutual, retry=FAST) as plain:
            opened = await plain.submit("acc-1", bank.OpenAccount(owner="ann"))
        async with ChronicleClient.connect(app.address, credentials=mutual, retry=FAST, routing=True) as routed:
            assert routed.routes is not None and routed.routes.owner_of("acc-1") is not None
            deposited = await routed.submit("acc-1", bank.Deposit(amount=5))
            failovers = routed.routes.failovers
    assert [e.envelope.user_id for e in (*opened.events, *deposited.events)] == ["CN=batch,O=Chronicle Tests"] * 2
    assert failovers == 0  # the member's own channel spoke TLS with the certificate too


# -- routing -------------------------------------------------------------------------


class Member(
    command_service_pb2_grpc.CommandServiceServicer,
    event_service_pb2_grpc.EventServiceServicer,
    cluster_service_pb2_grpc.ClusterServiceServicer,
):
    """A stand-in replica of a two-member cluster: it records the methods
    called on it and accepts every command; reads find one Account."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.address = ""
        self.topology = cluster_service_pb2.Topology()
        self.calls: list[str] = []

    async def Submit(self, request: Any, context: Any) -> command_service_pb2.SubmitResponse:
        self.calls.append("Submit")
        return command_service_pb2.SubmitResponse(version=1)

    async def SubmitBatch(self, request: Any, context: Any) -> command_service_pb2.SubmitBatchResponse:
        self.calls.append("SubmitBatch")
        results = [command_service_pb2.SubmitResponse(version=n) for n in range(1, len(request.commands) + 1)]
        return command_service_pb2.SubmitBatchResponse(version=len(results), results=results)

    async def ReadAggregatePages(self, request: Any, context: Any) -> AsyncIterator[event_pb2.EventPage]:
        self.calls.append("ReadAggregatePages")
        yield event_pb2.EventPage(events=[event(request.aggregate_id, 1)])

    async def GetAggregate(self, request: Any, context: Any) -> event_service_pb2.GetAggregateResponse:
        self.calls.append("GetAggregate")
        state = any_pb2.Any()
        state.Pack(bank.Account(owner="ann"))
        return event_service_pb2.GetAggregateResponse(
            aggregate_id=request.aggregate_id, aggregate_type="Account", version=1, state=state
        )

    async def GetTopology(self, request: Any, context: Any) -> cluster_service_pb2.GetTopologyResponse:
        return cluster_service_pb2.GetTopologyResponse(topology=self.topology)

    async def WatchTopology(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield cluster_service_pb2.WatchTopologyResponse(topology=self.topology)
        await asyncio.Event().wait()


def event(aggregate_id: str, position: int) -> event_pb2.Event:
    payload = any_pb2.Any()
    payload.Pack(bank.AccountOpened(owner="ann"))
    return event_pb2.Event(
        event_id=str(uuid.uuid4()),
        aggregate_id=aggregate_id,
        aggregate_type="Account",
        version=position,
        position=position,
        event_type="bank.v1.AccountOpened",
        payload=payload,
    )


async def test_a_routing_client_sends_batches_to_the_owner_and_reads_to_the_address_given() -> None:
    seed, owner = Member("a"), Member("b")
    async with serving(seed) as seed.address, serving(owner) as owner.address:
        topology = cluster_service_pb2.Topology(
            epoch=1,
            partition_count=2,
            hash=cluster_service_pb2.PARTITION_HASH_CRC32,
            members=[cluster_service_pb2.Member(member_id=m.name, address=m.address) for m in (seed, owner)],
            partition_owners=["a", "b"],
        )
        seed.topology = owner.topology = topology
        aggregate_id = next(f"acc-{n}" for n in itertools.count() if partition_of(f"acc-{n}", 2) == 1)
        async with ChronicleClient.connect(seed.address, routing=True, retry=FAST) as routed:
            assert routed.routes is not None and routed.routes.owner_of(aggregate_id) == owner.address
            batch = await routed.submit_batch([opening(aggregate_id), Command(aggregate_id, bank.Deposit(amount=1))])
            events = await routed.read_all(aggregate_id)
            account = await routed.get_aggregate(aggregate_id, bank.Account)
    assert (batch.version, [e.version for e in events], account.state.owner) == (2, [1], "ann")
    assert owner.calls == ["SubmitBatch"]
    assert seed.calls == ["ReadAggregatePages", "GetAggregate"]


# -- command streams -------------------------------------------------------------------


@pytest.mark.parametrize("routing", [False, True], ids=["one-server", "routed"])
async def test_a_command_stream_takes_no_command_beyond_its_window(routing: bool) -> None:
    """At most 256 unanswered: the 257th command is not even taken from
    the caller's generator until a result frees a place."""
    server = CommandStreamsOfOne()
    server.allow(0)  # nothing answered until the test says so
    taken = 0

    async def endless() -> AsyncIterator[Command]:
        nonlocal taken
        for n in range(1_000):
            taken += 1
            yield opening(f"acc-{n}")

    async with (
        serving(server) as server.address,
        ChronicleClient.connect(server.address, retry=FAST, routing=routing) as streaming_client,
    ):
        results = streaming_client.submit_stream(endless())
        first = asyncio.ensure_future(anext(results))
        try:
            await eventually(lambda: len(server.received) == streaming.DEFAULT_WINDOW, what="a window sent")
            assert taken == streaming.DEFAULT_WINDOW == 256
            server.allow(1)
            async with asyncio.timeout(30):
                answered = await first
            await eventually(lambda: len(server.received) == 257, what="one more sent")
            assert taken == 257
        finally:
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first
            await results.aclose()
    assert answered.command_id == server.received[0].command.command_id


async def test_a_page_of_commands_holds_at_most_64_kib_and_a_larger_command_goes_alone() -> None:
    server = CommandStreams()
    sizes = [30_000, 30_000, 100_000, 10, 10]
    async with serving(server) as address, ChronicleClient.connect(address, retry=FAST) as streaming_client:
        results = await collect(streaming_client.submit_stream([opening(f"acc-{n}", "x" * n) for n in sizes]))
    assert [r.error for r in results] == [None] * 5
    assert [
        [len(bank.OpenAccount.FromString(r.command.payload.value).owner) for r in page] for page in server.pages
    ] == [
        [30_000, 30_000],
        [100_000],
        [10, 10],
    ]


async def test_a_single_command_refused_with_a_retryable_code_is_not_sent_again() -> None:
    def respond(call: int, index: int, request: Any) -> Any:
        if index == 0:
            refused = command_service_pb2.CommandError(
                code=grpc.StatusCode.ABORTED.value[0],
                message="conflict (simulated)",
                reason="CONCURRENCY_CONFLICT",
                retry_after=duration_pb2.Duration(nanos=50_000_000),
            )
            return command_service_pb2.SubmitStreamResponse(command_id=request.command.command_id, error=refused)
        return accepted(request)

    server = CommandStreams(respond)
    commands = [opening(f"acc-{n}") for n in range(3)]
    async with serving(server) as address, ChronicleClient.connect(address, retry=FAST) as streaming_client:
        first, *others = await collect(streaming_client.submit_stream(commands))
    assert isinstance(first.error, Aborted)
    assert (first.error.reason, first.error.retry_delay) == ("CONCURRENCY_CONFLICT", 0.05)
    assert [r.result().version for r in others] == [1, 1]
    assert server.calls == 1
    assert [r.command.command_id for r in server.received] == [c.command_id for c in commands]  # each once


async def test_a_command_stream_that_answers_between_breaks_is_reopened_more_often_than_its_attempts() -> None:
    """Each call answers one command, then breaks: four breaks in all, two
    attempts allowed; every result renews them."""

    def respond(call: int, index: int, request: Any) -> Any:
        return accepted(request) if index == 0 else rich(grpc.StatusCode.UNAVAILABLE, "dropped (simulated)")

    server = CommandStreams(respond)
    commands = [opening(f"acc-{n}") for n in range(5)]
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01)
    async with serving(server) as address, ChronicleClient.connect(address, retry=policy) as streaming_client:
        results = await collect(streaming_client.submit_stream(commands))
    assert [r.command_id for r in results] == [c.command_id for c in commands]
    assert server.calls >= 5
    answered = [r.command.command_id for r in server.received]
    assert sorted(set(answered)) == sorted(c.command_id for c in commands)


# -- subscriptions -----------------------------------------------------------------------


class Subscriptions(event_service_pb2_grpc.EventServiceServicer):
    """Subscribe: call ``n`` sends the events ``script(n)`` gives, then ends
    with its status (None: stays open). Records each request."""

    def __init__(self, script: Callable[[int], tuple[list[event_pb2.Event], grpc.Status | None]]) -> None:
        self.script = script
        self.requests: list[event_service_pb2.SubscribeRequest] = []

    async def Subscribe(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.requests.append(request)
        events, status = self.script(len(self.requests))
        if events:
            # As a current server says: the page's last event ends its
            # position (an upcaster's split event has several at one).
            page = event_pb2.EventPage(events=events)
            yield event_service_pb2.SubscribeResponse(page=page, completes_position=True)
        if status is not None:
            await end_with(context, status)
        await asyncio.Event().wait()


DROPPED = rich(grpc.StatusCode.UNAVAILABLE, "dropped (simulated)")


async def first_of(subscription: Any, count: int) -> list[Any]:
    """The first ``count`` events of ``subscription`` (bounded in time, so a
    broken build fails), then its loop left, as a subscriber stopping does."""
    events = aiter(subscription)
    try:
        async with asyncio.timeout(30):
            return [await anext(events) for _ in range(count)]
    finally:
        await events.aclose()


async def test_a_subscription_that_receives_between_breaks_is_reopened_more_often_than_its_attempts() -> None:
    # Call n sends the event at position n, then breaks; from the sixth, it stays open.
    server = Subscriptions(lambda n: ([event("acc-1", n)], DROPPED if n < 6 else None))
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01)
    async with serving(server) as address, ChronicleClient.connect(address, retry=policy) as subscriber:
        subscription = subscriber.subscribe()
        received = await first_of(subscription, 6)
    assert [e.position for e in received] == [1, 2, 3, 4, 5, 6]
    assert [r.after_position for r in server.requests] == [0, 1, 2, 3, 4, 5]  # after the last processed
    assert subscription.position == 5  # the sixth was being processed when the loop stopped


async def test_an_idle_subscription_is_reopened_every_time_when_it_lived_renew_after_and_else_gives_up() -> None:
    # The first five calls end at once, with nothing sent; the sixth sends an event.
    def script(n: int) -> tuple[list[event_pb2.Event], grpc.Status | None]:
        return ([], DROPPED) if n <= 5 else ([event("acc-1", 1)], None)

    renewing, lasting = Subscriptions(script), Subscriptions(script)
    lived = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01, renew_after=0.0)
    short = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01)  # renew_after: 10 s
    async with serving(renewing) as address, ChronicleClient.connect(address, retry=lived) as subscriber:
        events = aiter(subscriber.subscribe())
        try:
            async with asyncio.timeout(30):
                (received,) = [await anext(events)]
        finally:
            await events.aclose()
    async with serving(lasting) as address, ChronicleClient.connect(address, retry=short) as subscriber:
        events = aiter(subscriber.subscribe())
        try:
            with pytest.raises(Unavailable):
                async with asyncio.timeout(30):
                    await anext(events)
        finally:
            await events.aclose()
    assert (received.position, len(renewing.requests)) == (1, 6)
    assert len(lasting.requests) == 2  # broken as soon as opened: max_attempts, then the error


class WithoutPages(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """A server from before pages: it does not know ``SubscribeRequest.pages``
    and sends one event per message (here the field is cleared on the way)."""

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        if isinstance(request, event_service_pb2.SubscribeRequest):
            older = event_service_pb2.SubscribeRequest()
            older.CopyFrom(request)
            older.pages = False
            request = older
        return await continuation(details, request)


class EventKinds(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Records the kind of every SubscribeResponse received."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(details, request)

        async def recorded() -> AsyncIterator[Any]:
            async for message in call:
                self.kinds.append(message.WhichOneof("kind"))
                yield message

        return recorded() if isinstance(request, event_service_pb2.SubscribeRequest) else call


async def test_a_subscription_of_a_server_from_before_pages_takes_events_one_per_message() -> None:
    kinds = EventKinds()
    async with running_server(MemoryStore()) as (app, _):
        async with ChronicleClient.connect(app.address, retry=FAST) as writer:
            await writer.submit_batch([opening("acc-1"), *(Command("acc-1", bank.Deposit(amount=1)) for _ in range(3))])
        channel = grpc.aio.insecure_channel(app.address, interceptors=[kinds, WithoutPages()])
        async with ChronicleClient(channel, retry=FAST, owns_channel=True) as subscriber:
            subscription = subscriber.subscribe(aggregate_id="acc-1")
            received = await first_of(subscription, 4)
    assert [e.version for e in received] == [1, 2, 3, 4]
    assert "page" not in kinds.kinds and kinds.kinds.count("event") == 4
    assert subscription.position == received[2].position  # the fourth is being processed


# -- group consumers -----------------------------------------------------------------------


class Consumers(subscription_group_service_pb2_grpc.SubscriptionGroupServiceServicer):
    """Consume: each of the first calls reads the start, then ends with the
    next of ``endings``; the call after them joins and delivers one event."""

    def __init__(self, *endings: grpc.Status) -> None:
        self.endings = deque(endings)
        self.calls = 0

    async def Consume(self, requests: Any, context: Any) -> None:
        self.calls += 1
        await context.read()  # the start: written before the status, so no write races it
        if self.endings:
            await end_with(context, self.endings.popleft())
        pb = subscription_group_service_pb2
        await context.write(pb.ConsumeResponse(joined=pb.Joined(consumer=f"worker#{self.calls}", segments=1)))
        delivery = pb.Delivery(event=event("acc-1", 1), attempt=1)
        await context.write(pb.ConsumeResponse(deliveries=pb.Deliveries(deliveries=[delivery])))
        while await context.read() is not grpc.aio.EOF:
            pass  # acks


async def consume_one(consumer_client: ChronicleClient) -> int:
    """The position of the first event delivered, acked."""
    async with asyncio.timeout(30), consumer_client.consume("ledger", consumer="worker", reconnect_delay=0) as worker:
        async for delivery in worker:
            await delivery.ack()
            return delivery.event.position
    raise AssertionError("the consumer's stream ended")


async def test_a_group_consumer_is_opened_again_after_unavailable_without_a_bound() -> None:
    server = Consumers(*[DROPPED] * 8)  # more than the two attempts allowed
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01)
    async with serving(server) as address, ChronicleClient.connect(address, retry=policy) as consumer_client:
        position = await consume_one(consumer_client)
    assert (position, server.calls) == (1, 9)


@pytest.mark.parametrize(
    "ending",
    [
        rich(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the server has 1 open subscriptions; retry later",
            reason("TOO_MANY_SUBSCRIPTIONS"),
            retry_after(0.01),
        ),
        rich(grpc.StatusCode.ABORTED, "contention (simulated)"),
        rich(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded (simulated)"),
    ],
    ids=["too-many-subscriptions", "aborted", "deadline-exceeded"],
)
async def test_a_group_consumer_is_opened_again_after_what_a_subscription_is_reopened_after(
    ending: grpc.Status,
) -> None:
    """Before, only UNAVAILABLE and CANCELLED: a consumer of a server at its
    --max-subscriptions raised TOO_MANY_SUBSCRIPTIONS at once, while a
    subscription to it waited for room."""
    server = Consumers(ending, ending)
    async with serving(server) as address, ChronicleClient.connect(address, retry=FAST) as consumer_client:
        position = await consume_one(consumer_client)
    assert (position, server.calls) == (1, 3)


async def test_a_group_consumer_gives_up_on_a_resource_exhausted_without_retry_info() -> None:
    """gRPC's own RESOURCE_EXHAUSTED (a message over the limit) will not get better."""
    server = Consumers(rich(grpc.StatusCode.RESOURCE_EXHAUSTED, "message larger than max (simulated)"))
    async with serving(server) as address, ChronicleClient.connect(address, retry=FAST) as consumer_client:
        with pytest.raises(ResourceExhausted):
            await consume_one(consumer_client)
    assert server.calls == 1


async def test_a_group_consumer_gives_up_after_max_attempts_stale_tokens_in_a_row() -> None:
    expired = rich(grpc.StatusCode.UNAUTHENTICATED, "the token expired (simulated)", reason("TOKEN_EXPIRED"))
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.01)
    outcomes = []
    for token in (lambda: "a-fresh-token", "a-fixed-token"):
        server = Consumers(*[expired] * 5)
        async with serving(server) as address, ChronicleClient.connect(address, token=token, retry=policy) as stale:
            with pytest.raises(Unauthenticated) as refused:
                await consume_one(stale)
        outcomes.append((refused.value.reason, server.calls))
    assert outcomes == [("TOKEN_EXPIRED", 3), ("TOKEN_EXPIRED", 1)]  # a function: 3 tries; a string: final
