"""CommandService.SubmitStream and SubmitStreamPages over a real socket, on
every store. The behaviour tests run through both: SubmitStreamPages with
the requests cut into pages of uneven sizes and the answers' pages
unpacked, which must change nothing of what comes back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import grpc
import pytest
from google.protobuf import any_pb2

from chronicle.v1 import command_pb2
from chronicle.v1 import command_service_pb2 as pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.base import StoreAdapter
from tests.support.grpc_client import Client, command, details_of, running_server


@pytest.fixture
async def client(store: StoreAdapter) -> AsyncIterator[Client]:
    async with running_server(store) as (_, connected):
        yield connected


# Pages of these sizes in turn (an empty one among them): a page boundary
# falls in every position of the behaviour tests' streams.
PAGE_SIZES = (1, 3, 0, 7, 2, 64)


def pages_of(requests: list[pb.SubmitRequest]) -> list[pb.SubmitPage]:
    pages, taken, turn = [], 0, 0
    while taken < len(requests):
        size = PAGE_SIZES[turn % len(PAGE_SIZES)]
        pages.append(pb.SubmitPage(requests=requests[taken : taken + size]))
        taken, turn = taken + size, turn + 1
    return pages


async def paged(client: Client, requests: Iterable[pb.SubmitRequest]) -> list[pb.SubmitStreamResponse]:
    answers = client.commands.SubmitStreamPages(iter(pages_of(list(requests))))
    return [answer async for page in answers for answer in page.results]


async def unpaged(client: Client, requests: Iterable[pb.SubmitRequest]) -> list[pb.SubmitStreamResponse]:
    return [response async for response in client.commands.SubmitStream(iter(list(requests)))]


Stream = Callable[[Client, Iterable[pb.SubmitRequest]], Awaitable[list[pb.SubmitStreamResponse]]]


@pytest.fixture(params=["SubmitStream", "SubmitStreamPages"])
def stream(request: pytest.FixtureRequest) -> Stream:
    return unpaged if request.param == "SubmitStream" else paged


def submit(aggregate_id: str, message: object, **options: object) -> pb.SubmitRequest:
    return pb.SubmitRequest(command=command(aggregate_id, message, **options))  # type: ignore[arg-type]


async def test_results_come_back_in_order_with_their_command_ids(client: Client, stream: Stream) -> None:
    requests = [submit(f"acc-{i}", bank.OpenAccount(owner="ann")) for i in range(20)]
    requests += [submit(f"acc-{i % 20}", bank.Deposit(amount=i + 1)) for i in range(200)]
    responses = await stream(client, requests)
    assert [r.command_id for r in responses] == [r.command.command_id for r in requests]
    assert all(r.HasField("ok") for r in responses)
    # commands for one aggregate ran in the order sent
    for i in range(20):
        versions = [
            r.ok.version for r, q in zip(responses, requests, strict=True) if q.command.aggregate_id == f"acc-{i}"
        ]
        assert versions == list(range(1, len(versions) + 1))


async def test_a_stream_of_more_commands_for_one_aggregate_than_its_queue_holds_runs_them_all_in_order(
    client: Client, stream: Stream
) -> None:
    """A stream reads up to 256 commands ahead; an aggregate's queue holds 64
    (--queue-depth). The stream waits for room: before, commands 65 to 255
    were refused AGGREGATE_QUEUE_FULL while later ones ran, so the withdrawal
    at the end was refused for a balance that in order would have covered it,
    and that refusal stays recorded against its command id."""
    requests = [submit("acc-1", bank.OpenAccount(owner="ann"))]
    requests += [submit("acc-1", bank.Deposit(amount=1)) for _ in range(299)]
    requests.append(submit("acc-1", bank.Withdraw(amount=250)))
    responses = await stream(client, requests)
    refused = [(i, r.error.reason) for i, r in enumerate(responses) if r.HasField("error")]
    assert refused == []
    assert [r.ok.version for r in responses] == list(range(1, 302))


async def test_a_refused_command_is_an_answer_not_the_end_of_the_stream(client: Client, stream: Stream) -> None:
    requests = [
        submit("acc-1", bank.OpenAccount(owner="ann")),
        submit("acc-1", bank.Withdraw(amount=5)),
        submit("acc-1", bank.Deposit(amount=7)),
    ]
    opened, refused, deposited = await stream(client, requests)
    assert opened.HasField("ok")
    assert refused.HasField("error")
    assert (refused.error.code, refused.error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION.value[0],
        "INSUFFICIENT_FUNDS",
    )
    assert refused.error.metadata["balance"] == "0"
    assert not refused.error.HasField("retry_after")
    assert deposited.ok.version == 2


async def test_malformed_commands_in_a_stream_are_answered_with_invalid_argument(
    client: Client, stream: Stream
) -> None:
    unknown = command_pb2.Command(
        command_id=str(uuid.uuid4()),
        aggregate_id="acc-1",
        payload=any_pb2.Any(type_url="type.googleapis.com/nope.v1.Nope"),
    )
    requests = [
        pb.SubmitRequest(),
        pb.SubmitRequest(command=unknown),
        submit("", bank.OpenAccount(owner="ann")),
        submit("acc-1", bank.OpenAccount(owner="ann")),
    ]
    missing, unknown_type, no_aggregate, fine = await stream(client, requests)
    assert (missing.error.reason, [v.field for v in missing.error.field_violations]) == ("MISSING_COMMAND", ["command"])
    assert unknown_type.error.reason == "UNKNOWN_COMMAND_TYPE"
    assert no_aggregate.error.reason == "INVALID_AGGREGATE_ID"
    assert {r.error.code for r in (missing, unknown_type, no_aggregate)} == {grpc.StatusCode.INVALID_ARGUMENT.value[0]}
    assert fine.ok.version == 1


async def test_a_message_that_does_not_parse_ends_the_stream_after_the_answers_before_it(client: Client) -> None:
    # Raw bytes: the second message is no SubmitRequest (a truncated field),
    # so gRPC's parse of it fails where the server reads it.
    call = client.channel.stream_stream(
        "/chronicle.v1.CommandService/SubmitStream", request_serializer=None, response_deserializer=None
    )
    opened = submit("acc-1", bank.OpenAccount(owner="ann"))
    never = submit("acc-1", bank.Deposit(amount=3))
    answers = call(iter([opened.SerializeToString(), b"\x0a\x05ab", never.SerializeToString()]))
    received: list[pb.SubmitStreamResponse] = []

    async def read_all() -> None:
        async for raw in answers:
            received.append(pb.SubmitStreamResponse.FromString(raw))

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await read_all()
    assert [(r.command_id, r.ok.version) for r in received] == [(opened.command.command_id, 1)]
    details = details_of(refused.value)
    assert (refused.value.code(), details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
    assert details.metadata["message_type"] == "chronicle.v1.SubmitRequest"
    # nothing after the broken message ran
    head = await client.submit(command("acc-1", bank.Deposit(amount=1)))
    assert head.version == 2


async def test_a_page_that_does_not_parse_ends_the_stream_after_the_answers_before_it(client: Client) -> None:
    call = client.channel.stream_stream(
        "/chronicle.v1.CommandService/SubmitStreamPages", request_serializer=None, response_deserializer=None
    )
    opened = pb.SubmitPage(requests=[submit("acc-1", bank.OpenAccount(owner="ann"))])
    never = pb.SubmitPage(requests=[submit("acc-1", bank.Deposit(amount=3))])
    answers = call(iter([opened.SerializeToString(), b"\x0a\x05ab", never.SerializeToString()]))
    received: list[pb.SubmitStreamResponse] = []

    async def read_all() -> None:
        async for raw in answers:
            received.extend(pb.SubmitResultPage.FromString(raw).results)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await read_all()
    assert [(r.command_id, r.ok.version) for r in received] == [(opened.requests[0].command.command_id, 1)]
    details = details_of(refused.value)
    assert (refused.value.code(), details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
    assert details.metadata["message_type"] == "chronicle.v1.SubmitPage"
    head = await client.submit(command("acc-1", bank.Deposit(amount=1)))
    assert head.version == 2


async def test_a_stream_sent_again_is_replayed_not_repeated(client: Client, stream: Stream) -> None:
    requests = [submit("acc-1", bank.OpenAccount(owner="ann")), submit("acc-1", bank.Deposit(amount=3))]
    first = await stream(client, requests)
    again = await stream(client, requests)
    assert [r.ok.replayed for r in first] == [False, False]
    assert [r.ok.replayed for r in again] == [True, True]
    assert [e.event_id for r in again for e in r.ok.events] == [e.event_id for r in first for e in r.ok.events]


async def test_an_empty_stream_ends_cleanly(client: Client, stream: Stream) -> None:
    assert await stream(client, []) == []


@pytest.mark.parametrize("method", ["SubmitStream", "SubmitStreamPages"])
async def test_a_stream_is_accepted_before_its_first_command(client: Client, method: str) -> None:
    # The initial metadata comes before the client has written anything: a
    # client may wait for it before writing (service/client/streaming.py).
    call = getattr(client.commands, method)()
    try:
        async with asyncio.timeout(10):
            await call.initial_metadata()
        assert not call.done()
        await call.done_writing()
        assert [message async for message in call] == []
        assert await call.code() == grpc.StatusCode.OK
    finally:
        call.cancel()
