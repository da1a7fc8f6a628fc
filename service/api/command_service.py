"""``chronicle.v1.CommandService``: decode, route, encode. No business logic."""

from __future__ import annotations

from typing import Any

import grpc

from chronicle.v1 import command_service_pb2 as pb
from chronicle.v1 import command_service_pb2_grpc as pb_grpc
from service.api import guard
from service.api.codec import decode_command, encode_event
from service.errors import InvalidInput
from service.plugins.registry import Registry
from service.processing.router import Router


class CommandService(pb_grpc.CommandServiceServicer):
    def __init__(self, registry: Registry, router: Router) -> None:
        self._registry = registry
        self._router = router

    @guard.unary
    async def Submit(self, request: pb.SubmitRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.SubmitResponse:
        if not request.HasField("command"):
            raise InvalidInput.for_field("command", "is required", reason="MISSING_COMMAND")
        command = decode_command(request.command, self._registry)
        result = await self._router.submit(command)
        return pb.SubmitResponse(
            events=[encode_event(e) for e in result.events],
            version=result.version,
            replayed=result.replayed,
        )
