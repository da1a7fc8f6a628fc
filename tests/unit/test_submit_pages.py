"""How SubmitStreamPages packs its answers, over a real socket, with a
stand-in pipeline whose results are known as each command starts (so which
answers are ready together does not depend on a store's timing): the
answers that are ready together leave as one page, and a page stops at the
bytes it may carry. What the commands do is tested on every store in
tests/integration/test_submit_stream.py."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest

from chronicle.v1 import command_service_pb2 as pb
from chronicle.v1 import command_service_pb2_grpc as pb_grpc
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.api.command_service import CommandService
from service.api.disclosure import Disclosure
from service.app import MAX_PAGE_BYTES
from service.errors import ChronicleError
from service.plugins.registry import Registry
from service.processing.commands import BatchResult, CommandRequest, CommandResult
from service.processing.middleware import Pipeline
from tests.support.grpc_client import command


class ReadyPipeline:
    """Every command's result is known when it starts: version 1, no events;
    a command for the aggregate "refused-N" is refused with a message of N
    characters (an answer of a size the test chooses)."""

    def start(self, request: CommandRequest, principal: object) -> asyncio.Future[BatchResult]:
        decided = asyncio.get_running_loop().create_future()
        if request.aggregate_id.startswith("refused-"):
            length = int(request.aggregate_id.removeprefix("refused-"))
            decided.set_exception(ChronicleError("x" * length, reason="REFUSED"))
        else:
            decided.set_result(BatchResult((CommandResult((), 1),), 1))
        return decided


class Undisclosing:
    def refusal(self, error: ChronicleError, principal: object, command_type: str) -> ChronicleError:
        return error


@pytest.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[pb_grpc.CommandServiceStub]:
    page_bytes = getattr(request, "param", MAX_PAGE_BYTES)
    service = CommandService(
        Registry([bank_account.plugin]),
        cast(Pipeline, ReadyPipeline()),
        cast(Any, None),  # no refusal to audit, no dry run in these tests
        cast(Disclosure, Undisclosing()),
        cast(Any, None),
        page_bytes=page_bytes,
    )
    server = grpc.aio.server()
    pb_grpc.add_CommandServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.CommandServiceStub(channel)
    finally:
        await server.stop(grace=None)


def deposits(count: int, refused_with: int = 0) -> list[pb.SubmitRequest]:
    """Deposits, accepted; or refused with a message of ``refused_with``
    characters."""
    return [
        pb.SubmitRequest(
            command=command(f"refused-{refused_with}" if refused_with else f"acc-{i}", bank.Deposit(amount=1))
        )
        for i in range(count)
    ]


async def result_pages(stub: pb_grpc.CommandServiceStub, pages: list[pb.SubmitPage]) -> list[pb.SubmitResultPage]:
    return [page async for page in stub.SubmitStreamPages(iter(pages))]


async def test_answers_ready_together_leave_as_one_page(served: pb_grpc.CommandServiceStub) -> None:
    requests = deposits(100)
    pages = await result_pages(served, [pb.SubmitPage(requests=requests)])
    assert len(pages) == 1
    assert [r.command_id for r in pages[0].results] == [r.command.command_id for r in requests]
    assert all(r.ok.version == 1 for r in pages[0].results)


async def test_pages_sent_one_by_one_are_answered_in_order(served: pb_grpc.CommandServiceStub) -> None:
    requests = deposits(30)
    sent = [pb.SubmitPage(requests=requests[i : i + 7]) for i in range(0, 30, 7)]
    answered = [r.command_id for page in await result_pages(served, sent) for r in page.results]
    assert answered == [r.command.command_id for r in requests]


PAGE_BYTES = 400


@pytest.mark.parametrize("served", [PAGE_BYTES], indirect=True)
async def test_a_page_stops_at_its_bytes(served: pb_grpc.CommandServiceStub) -> None:
    # Answers of about 60 to 350 bytes (their refusals' messages vary).
    requests = [r for length in (10, 100, 290, 30, 250, 15) for r in deposits(5, length)]
    pages = await result_pages(served, [pb.SubmitPage(requests=requests)])
    assert [r.command_id for page in pages for r in page.results] == [r.command.command_id for r in requests]
    assert len(pages) > 1
    for page in pages:
        if len(page.results) > 1:
            assert sum(r.ByteSize() for r in page.results) <= PAGE_BYTES
    # Each page went on while the next answer fitted: no two neighbours
    # would have made one page.
    for before, after in itertools.pairwise(pages):
        together = sum(r.ByteSize() for r in before.results) + after.results[0].ByteSize()
        assert together > PAGE_BYTES


@pytest.mark.parametrize("served", [PAGE_BYTES], indirect=True)
async def test_an_answer_larger_than_a_page_comes_alone(served: pb_grpc.CommandServiceStub) -> None:
    requests = deposits(2, 60) + deposits(1, 600) + deposits(2, 60)
    pages = await result_pages(served, [pb.SubmitPage(requests=requests)])
    assert all(r.error.reason == "REFUSED" for page in pages for r in page.results)
    sizes = [len(page.results) for page in pages]
    assert sizes == [2, 1, 2]
    assert pages[1].results[0].command_id == requests[2].command.command_id


async def test_empty_pages_do_nothing(served: pb_grpc.CommandServiceStub) -> None:
    requests = deposits(3)
    sent = [pb.SubmitPage(), pb.SubmitPage(requests=requests), pb.SubmitPage()]
    answered = [r.command_id for page in await result_pages(served, sent) for r in page.results]
    assert answered == [r.command.command_id for r in requests]
