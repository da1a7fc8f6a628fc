"""The gRPC ceiling: CommandService.Submit in the same process model as
Chronicle (one grpc.aio server process), answering at once with an empty
response. What any Python gRPC service on this machine can do at best.

    python -m bench.noop_server 127.0.0.1:50100
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

from chronicle.v1 import command_service_pb2 as pb
from chronicle.v1 import command_service_pb2_grpc as pb_grpc
from service.api.server import MethodTable


class NoopCommands(pb_grpc.CommandServiceServicer):
    async def Submit(self, request: pb.SubmitRequest, context: Any) -> pb.SubmitResponse:
        return pb.SubmitResponse()

    async def SubmitStream(
        self, requests: AsyncIterator[pb.SubmitRequest], context: Any
    ) -> AsyncIterator[pb.SubmitStreamResponse]:
        async for request in requests:
            yield pb.SubmitStreamResponse(command_id=request.command.command_id, ok=pb.SubmitResponse())

    async def SubmitStreamPages(
        self, pages: AsyncIterator[pb.SubmitPage], context: Any
    ) -> AsyncIterator[pb.SubmitResultPage]:
        async for page in pages:
            if page.requests:
                yield pb.SubmitResultPage(
                    results=[
                        pb.SubmitStreamResponse(command_id=request.command.command_id, ok=pb.SubmitResponse())
                        for request in page.requests
                    ]
                )


async def serve(address: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    # Served through one generic handler, as Chronicle's server is
    # (service.api.server.MethodTable): grpc.aio keeps a pending request per
    # method registered by name and waits on all of them at every call, a
    # cost Chronicle does not pay and the floor must not either.
    methods = MethodTable()
    pb_grpc.add_CommandServiceServicer_to_server(NoopCommands(), methods.open)
    server.add_generic_rpc_handlers((methods,))
    server.add_insecure_port(address)
    await server.start()
    print(f"no-op gRPC server on {address}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
