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


class NoopCommands:
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


class _Methods(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The methods as one generic handler, as Chronicle's server serves its
    own (service/api/server.py, ``_Methods``): grpc.aio keeps a pending
    request per method registered by name and waits on all of them for
    every call, a cost per call that Chronicle does not pay and the floor
    must not either."""

    def __init__(self, servicer: NoopCommands) -> None:
        service = pb.DESCRIPTOR.services_by_name["CommandService"].full_name
        self._handlers = {
            f"/{service}/Submit": grpc.unary_unary_rpc_method_handler(
                servicer.Submit,
                request_deserializer=pb.SubmitRequest.FromString,
                response_serializer=pb.SubmitResponse.SerializeToString,
            ),
            f"/{service}/SubmitStream": grpc.stream_stream_rpc_method_handler(
                servicer.SubmitStream,
                request_deserializer=pb.SubmitRequest.FromString,
                response_serializer=pb.SubmitStreamResponse.SerializeToString,
            ),
            f"/{service}/SubmitStreamPages": grpc.stream_stream_rpc_method_handler(
                servicer.SubmitStreamPages,
                request_deserializer=pb.SubmitPage.FromString,
                response_serializer=pb.SubmitResultPage.SerializeToString,
            ),
        }

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)


async def serve(address: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((_Methods(NoopCommands()),))
    server.add_insecure_port(address)
    await server.start()
    print(f"no-op gRPC server on {address}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
