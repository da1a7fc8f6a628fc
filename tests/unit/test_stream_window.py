"""How much of a command stream the server holds at once, over a real
socket, with a stand-in pipeline whose commands stay undecided until the
test decides them: a stream stops reading while its started, unanswered
commands carry the window's bytes (however few they are), a command larger
than the whole budget still goes (alone), and each answer lets the next
command in. The count bound (256) is the same window's; what the commands
do is tested on every store in tests/integration/test_submit_stream.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any, cast

import grpc
import pytest

from chronicle.v1 import command_service_pb2 as pb
from chronicle.v1 import command_service_pb2_grpc as pb_grpc
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.api.command_service import STREAM_IN_FLIGHT, STREAM_IN_FLIGHT_BYTES, CommandService
from service.api.disclosure import Disclosure
from service.app import MAX_PAGE_BYTES
from service.plugins.registry import Registry
from service.processing.commands import BatchResult, CommandRequest, CommandResult
from service.processing.middleware import Pipeline
from tests.support.grpc_client import command
from tests.support.waiting import eventually

BUDGET = 10_000
# Each command carries about 3 KB (its metadata), so the budget holds the
# fourth one, which crosses it.
NOTE = "x" * 3_000
HELD_AT_ONCE = 4


class HeldPipeline:
    """Every command stays undecided until the test decides it."""

    def __init__(self) -> None:
        self.started: list[asyncio.Future[BatchResult]] = []

    def start(self, request: CommandRequest, principal: object) -> asyncio.Future[BatchResult]:
        decided: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self.started.append(decided)
        return decided

    def decide(self, index: int) -> None:
        self.started[index].set_result(BatchResult((CommandResult((), 1),), 1))


class Undisclosing:
    def refusal(self, error: Exception, principal: object, command_type: str) -> Exception:
        return error


@pytest.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[pb_grpc.CommandServiceStub, HeldPipeline]]:
    pipeline = HeldPipeline()
    service = CommandService(
        Registry([bank_account.plugin]),
        cast(Pipeline, pipeline),
        cast(Any, None),  # no refusal to audit, no dry run in these tests
        cast(Disclosure, Undisclosing()),
        cast(Any, None),
        page_bytes=MAX_PAGE_BYTES,
        stream_bytes=getattr(request, "param", BUDGET),
    )
    server = grpc.aio.server()
    pb_grpc.add_CommandServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.CommandServiceStub(channel), pipeline
    finally:
        await server.stop(grace=None)


def requests(count: int, note: str = NOTE) -> list[pb.SubmitRequest]:
    return [
        pb.SubmitRequest(command=command(f"acc-{i}", bank.Deposit(amount=1), metadata={"note": note}))
        for i in range(count)
    ]


class Sent:
    """The messages of one call, sent as fast as gRPC takes them, the
    stream kept open until ``close``."""

    def __init__(self, messages: Iterable[Any]) -> None:
        self._messages = list(messages)
        self._closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[Any]:
        for message in self._messages:
            yield message
        await self._closed.wait()

    def close(self) -> None:
        self._closed.set()


def open_call(stub: pb_grpc.CommandServiceStub, method: str, sent: list[pb.SubmitRequest]) -> tuple[Any, Sent]:
    if method == "SubmitStream":
        messages = Sent(sent)
        return stub.SubmitStream(messages.__aiter__()), messages
    pages = Sent(pb.SubmitPage(requests=sent[i : i + 5]) for i in range(0, len(sent), 5))
    return stub.SubmitStreamPages(pages.__aiter__()), pages


async def answered_ids(call: Any, count: int) -> list[str]:
    ids: list[str] = []
    while len(ids) < count:
        message = await call.read()
        if isinstance(message, pb.SubmitResultPage):
            ids.extend(result.command_id for result in message.results)
        else:
            ids.append(message.command_id)
    return ids


async def started(pipeline: HeldPipeline, index: int) -> None:
    await eventually(lambda: len(pipeline.started) > index, what=f"command {index} started")


async def settled(pipeline: HeldPipeline, expected: int) -> None:
    """The pipeline has started ``expected`` commands and, given time to
    start more, has not."""
    await eventually(lambda: len(pipeline.started) >= expected, what=f"{expected} commands started")
    await asyncio.sleep(0.3)  # what a stream without the bound would start meanwhile: all of them
    assert len(pipeline.started) == expected


@pytest.mark.parametrize("method", ["SubmitStream", "SubmitStreamPages"])
async def test_a_stream_stops_reading_at_its_bytes_and_each_answer_lets_one_more_in(
    served: tuple[pb_grpc.CommandServiceStub, HeldPipeline], method: str
) -> None:
    stub, pipeline = served
    sent = requests(20)
    assert sent[0].ByteSize() * (HELD_AT_ONCE - 1) < BUDGET <= sent[0].ByteSize() * HELD_AT_ONCE
    call, messages = open_call(stub, method, sent)
    await settled(pipeline, HELD_AT_ONCE)
    pipeline.decide(0)
    assert await answered_ids(call, 1) == [sent[0].command.command_id]
    await settled(pipeline, HELD_AT_ONCE + 1)
    for index in range(1, 20):
        await started(pipeline, index)
        pipeline.decide(index)
    assert await answered_ids(call, 19) == [r.command.command_id for r in sent[1:]]
    messages.close()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


@pytest.mark.parametrize("method", ["SubmitStream", "SubmitStreamPages"])
async def test_a_command_larger_than_the_budget_goes_alone(
    served: tuple[pb_grpc.CommandServiceStub, HeldPipeline], method: str
) -> None:
    stub, pipeline = served
    large = [
        pb.SubmitRequest(
            command=command(f"acc-{i}", bank.Deposit(amount=1), metadata={f"note-{n}": NOTE for n in range(4)})
        )
        for i in range(3)
    ]
    assert large[0].ByteSize() > BUDGET
    call, messages = open_call(stub, method, large)
    for index in range(3):
        await settled(pipeline, index + 1)
        pipeline.decide(index)
        assert await answered_ids(call, 1) == [large[index].command.command_id]
    messages.close()
    assert await call.code() == grpc.StatusCode.OK


@pytest.mark.parametrize("served", [STREAM_IN_FLIGHT_BYTES], indirect=True)
async def test_small_commands_are_bounded_by_count(served: tuple[pb_grpc.CommandServiceStub, HeldPipeline]) -> None:
    stub, pipeline = served
    sent = requests(300, note="")
    assert sent[0].ByteSize() * STREAM_IN_FLIGHT < STREAM_IN_FLIGHT_BYTES
    call, messages = open_call(stub, "SubmitStream", sent)
    await settled(pipeline, STREAM_IN_FLIGHT)
    pipeline.decide(0)
    await settled(pipeline, STREAM_IN_FLIGHT + 1)
    messages.close()
    call.cancel()
