"""Building the gRPC server: Chronicle's services, the standard health
service and server reflection, behind the given interceptors."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from chronicle.v1 import (
    admin_service_pb2_grpc,
    command_service_pb2_grpc,
    event_service_pb2_grpc,
    projection_service_pb2_grpc,
)
from service.api.admin_service import AdminService
from service.api.command_service import CommandService
from service.api.event_service import EventService
from service.api.health import SERVICE_NAMES, Health
from service.api.projection_service import ProjectionService


def build_server(
    *,
    commands: CommandService,
    events: EventService,
    admin: AdminService,
    projections: ProjectionService,
    health: Health,
    max_message_bytes: int,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    reuse_port: bool = False,
) -> grpc.aio.Server:
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Off unless asked: two servers must not share a port by mistake.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )
    command_service_pb2_grpc.add_CommandServiceServicer_to_server(commands, server)
    event_service_pb2_grpc.add_EventServiceServicer_to_server(events, server)
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
    projection_service_pb2_grpc.add_ProjectionServiceServicer_to_server(projections, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    return server
