"""The floor `make bench` compares Chronicle with (bench/noop_server.py):
a process that answers each of the three command methods at once, over a
real socket, whatever the request."""

from __future__ import annotations

import grpc
import pytest

from bench import servers
from chronicle.v1 import command_pb2
from chronicle.v1 import command_service_pb2 as pb
from chronicle.v1 import command_service_pb2_grpc as pb_grpc


def _request(n: int) -> pb.SubmitRequest:
    return pb.SubmitRequest(command=command_pb2.Command(command_id=f"c-{n}", aggregate_id=f"a-{n}"))


async def test_the_no_op_server_answers_every_command_method() -> None:
    with servers.noop() as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.CommandServiceStub(channel)
            assert await stub.Submit(_request(0)) == pb.SubmitResponse()
            streamed = [answer.command_id async for answer in stub.SubmitStream(iter([_request(1), _request(2)]))]
            pages = [
                pb.SubmitPage(requests=[_request(3), _request(4)]),
                pb.SubmitPage(),
                pb.SubmitPage(requests=[_request(5)]),
            ]
            paged = [[r.command_id for r in page.results] async for page in stub.SubmitStreamPages(iter(pages))]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await channel.unary_unary("/chronicle.v1.CommandService/SubmitBatch")(b"")
    assert streamed == ["c-1", "c-2"]
    assert paged == [["c-3", "c-4"], ["c-5"]]  # an empty page is not answered
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED  # only what the bench loads
