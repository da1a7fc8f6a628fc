"""Building the gRPC server: Chronicle's services, the standard health
service and server reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from chronicle.v1 import command_service_pb2, command_service_pb2_grpc, event_service_pb2, event_service_pb2_grpc
from service.api.command_service import CommandService
from service.api.event_service import EventService

SERVICE_NAMES = (
    command_service_pb2.DESCRIPTOR.services_by_name["CommandService"].full_name,
    event_service_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
)


class Health:
    """The health service and the one switch for every name it reports."""

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()

    async def set(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await self.servicer.set(name, status)


def build_server(
    *,
    commands: CommandService,
    events: EventService,
    health: Health,
    max_message_bytes: int,
) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    command_service_pb2_grpc.add_CommandServiceServicer_to_server(commands, server)
    event_service_pb2_grpc.add_EventServiceServicer_to_server(events, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    return server
