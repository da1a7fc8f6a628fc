"""``chronicle.v1.ProjectionService``: reading plugins' read models."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2

from chronicle.v1 import projection_service_pb2 as pb
from chronicle.v1 import projection_service_pb2_grpc as pb_grpc
from service.api.codec import TYPE_URL_PREFIX, check_id
from service.errors import ResourceNotFound
from service.plugins.projections import Projection
from service.plugins.registry import Registry
from service.principal import current_principal
from service.processing.projections import Projections
from service.security.policy import Authorizer
from service.store.base import LogReader, ProjectionStore


class ProjectionService(pb_grpc.ProjectionServiceServicer):
    def __init__(
        self,
        *,
        documents: ProjectionStore,
        log: LogReader,
        registry: Registry,
        projections: Projections,
        authorizer: Authorizer,
    ) -> None:
        self._documents = documents
        self._log = log
        self._registry = registry
        self._projections = projections
        self._authorizer = authorizer

    def _projection(self, field: str, name: str) -> Projection:
        check_id(field, name, reason="INVALID_PROJECTION")
        projection = self._registry.projection(name)
        if projection is None:
            raise ResourceNotFound(f"no loaded plugin declares projection {name!r}", reason="PROJECTION_NOT_FOUND")
        # A read model is as secret as the aggregates it is made of; one that
        # names none may hold anything, so it takes an administrator (with
        # authentication off too: anonymous callers are never one).
        principal = current_principal.get()
        if not projection.aggregate_types:
            self._authorizer.check_admin(principal, f"read projection {name}")
        for aggregate_type in sorted(projection.aggregate_types):
            self._authorizer.check_read(principal, aggregate_type)
        return projection

    async def GetDocument(
        self, request: pb.GetDocumentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetDocumentResponse:
        projection = self._projection("projection", request.projection)
        key = check_id("key", request.key, reason="INVALID_KEY")
        # The checkpoint first: the document read next is at least that new.
        position = await self._documents.projection_position(projection.name)
        document = await self._documents.load_document(projection.name, key)
        if document is None:
            raise ResourceNotFound(
                f"projection {projection.name} has no document {key!r}",
                reason="DOCUMENT_NOT_FOUND",
                metadata={"projection": projection.name, "key": key},
            )
        return pb.GetDocumentResponse(
            document=any_pb2.Any(type_url=TYPE_URL_PREFIX + document.type_name, value=document.data),
            position=position,
        )

    async def GetProjection(
        self, request: pb.GetProjectionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetProjectionResponse:
        projection = self._projection("name", request.name)
        runner = self._projections.runners.get(projection.name)
        return pb.GetProjectionResponse(
            name=projection.name,
            position=await self._documents.projection_position(projection.name),
            log_head=await self._log.log_head(),
            running=bool(runner and runner.status.running and runner.holds_lease),
            error=runner.status.error if runner else "",
            aggregate_types=sorted(projection.aggregate_types),
            event_types=sorted(projection.event_types),
        )
