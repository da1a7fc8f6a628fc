"""``chronicle.v1.ReactionService``: where plugins' reactions stand, and
the commands they parked."""

from __future__ import annotations

from typing import Any

import grpc

from chronicle.v1 import reaction_service_pb2 as pb
from chronicle.v1 import reaction_service_pb2_grpc as pb_grpc
from service.api.codec import check_id
from service.errors import ResourceNotFound
from service.plugins.reactions import Reaction
from service.plugins.registry import Registry
from service.principal import current_principal
from service.processing.reactions import PARKED_KEY, Reactions
from service.security.policy import Authorizer
from service.store.base import LogReader, ProjectionStore


class ReactionService(pb_grpc.ReactionServiceServicer):
    def __init__(
        self,
        *,
        documents: ProjectionStore,
        log: LogReader,
        registry: Registry,
        reactions: Reactions,
        authorizer: Authorizer,
    ) -> None:
        self._documents = documents
        self._log = log
        self._registry = registry
        self._reactions = reactions
        self._authorizer = authorizer

    def _check(self, reaction: Reaction[Any]) -> None:
        # Parked commands hold payloads of the aggregates the reaction reads
        # (and writes): readable by those who may read those; a reaction of
        # every type takes an administrator, like such a projection.
        principal = current_principal.get()
        if not reaction.aggregate_types:
            self._authorizer.check_admin(principal, f"read reaction {reaction.name}")
        for aggregate_type in sorted(reaction.aggregate_types):
            self._authorizer.check_read(principal, aggregate_type)

    def _reaction(self, field: str, name: str) -> Reaction[Any]:
        check_id(field, name, reason="INVALID_REACTION")
        reaction = self._registry.reaction(name)
        if reaction is None:
            raise ResourceNotFound(f"no loaded plugin declares reaction {name!r}", reason="REACTION_NOT_FOUND")
        self._check(reaction)
        return reaction

    async def _parked(self, reaction: Reaction[Any]) -> pb.ParkedCommands:
        parked = pb.ParkedCommands()
        stored = await self._documents.load_document(reaction.name, PARKED_KEY)
        if stored is not None:
            parked.ParseFromString(stored.data)
        return parked

    async def _status(self, reaction: Reaction[Any], log_head: int) -> pb.ReactionStatus:
        runner = self._reactions.runners.get(reaction.name)
        status = runner.status if runner is not None else None
        return pb.ReactionStatus(
            name=reaction.name,
            position=await self._documents.projection_position(reaction.name),
            log_head=log_head,
            running=bool(runner and runner.status.running and runner.holds_lease),
            error=status.error if status else "",
            aggregate_types=sorted(reaction.aggregate_types),
            event_types=sorted(reaction.event_types),
            parked=len((await self._parked(reaction)).commands),
            handled=status.handled if status else 0,
            accepted=status.accepted if status else 0,
            refused=status.refused if status else 0,
            replayed=status.replayed if status else 0,
        )

    async def ListReactions(
        self, request: pb.ListReactionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListReactionsResponse:
        reactions = sorted(self._registry.reactions, key=lambda r: r.name)
        for reaction in reactions:
            self._check(reaction)
        log_head = await self._log.log_head()
        return pb.ListReactionsResponse(reactions=[await self._status(r, log_head) for r in reactions])

    async def GetReaction(
        self, request: pb.GetReactionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReactionStatus:
        reaction = self._reaction("name", request.name)
        return await self._status(reaction, await self._log.log_head())

    async def ListParkedCommands(
        self, request: pb.ListParkedCommandsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListParkedCommandsResponse:
        reaction = self._reaction("reaction", request.reaction)
        return pb.ListParkedCommandsResponse(commands=(await self._parked(reaction)).commands)
