"""``chronicle.v1.AdminService``: the audit log, forgetting aggregates and
rewrapping keys. Every RPC needs the admin grant; with authentication off,
anonymous callers have it only on a server started with --anonymous-admin."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from chronicle.v1 import admin_service_pb2 as pb
from chronicle.v1 import admin_service_pb2_grpc as pb_grpc
from service.api.codec import check_id, micros_of, timestamp
from service.audit import AuditLog
from service.errors import ChronicleError, InvalidInput, NotEncrypted
from service.principal import current_principal
from service.security.policy import Authorizer
from service.store.base import AuditQuery
from service.store.encryption import Keyring
from service.store.records import ACCEPTED, REFUSED, AuditEntry

log = logging.getLogger(__name__)
SERVICE = "chronicle.v1.AdminService"
MAX_AUDIT_ENTRIES = 1000
_OUTCOMES = {pb.AUDIT_OUTCOME_ACCEPTED: ACCEPTED, pb.AUDIT_OUTCOME_REFUSED: REFUSED}
_OUTCOME_CODES = {name: code for code, name in _OUTCOMES.items()}


class AdminService(pb_grpc.AdminServiceServicer):
    def __init__(self, audit: AuditLog, authorizer: Authorizer, keyring: Keyring | None = None) -> None:
        self._audit = audit
        self._authorizer = authorizer
        self._keyring = keyring

    def _keys(self) -> Keyring:
        if self._keyring is None:
            raise NotEncrypted("encryption at rest is off (no master key is configured)", reason="ENCRYPTION_OFF")
        return self._keyring

    async def QueryAudit(
        self, request: pb.QueryAuditRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.QueryAuditResponse:
        async with self._audited("QueryAudit", record_success=False):
            self._authorizer.check_admin(current_principal.get(), "query the audit log")
        if request.limit > MAX_AUDIT_ENTRIES:
            raise InvalidInput.for_field("limit", f"must be at most {MAX_AUDIT_ENTRIES}", reason="LIMIT_TOO_LARGE")
        query = AuditQuery(
            aggregate_id=check_id("aggregate_id", request.aggregate_id, reason="INVALID_AGGREGATE_ID")
            if request.aggregate_id
            else None,
            principal=check_id("principal", request.principal, reason="INVALID_FILTER") if request.principal else None,
            command_id=check_id("command_id", request.command_id, reason="INVALID_FILTER")
            if request.command_id
            else None,
            outcome=_OUTCOMES.get(request.outcome),
            since_us=micros_of(request.since, "since") if request.HasField("since") else None,
            until_us=micros_of(request.until, "until") if request.HasField("until") else None,
            limit=request.limit or 100,
        )
        entries = await self._audit.query(query)
        return pb.QueryAuditResponse(entries=[_entry(e) for e in entries])

    async def ForgetAggregate(
        self, request: pb.ForgetAggregateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ForgetAggregateResponse:
        async with self._audited("ForgetAggregate", aggregate_id=request.aggregate_id[:200]):
            self._authorizer.check_admin(current_principal.get(), "forget aggregates")
            aggregate_id = check_id("aggregate_id", request.aggregate_id, reason="INVALID_AGGREGATE_ID")
            return await self._forget(aggregate_id)

    async def _forget(self, aggregate_id: str) -> pb.ForgetAggregateResponse:
        keys = self._keys()
        if await keys.forget(aggregate_id):
            log.warning("aggregate %s forgotten by %r", aggregate_id, current_principal.get().name)
            return pb.ForgetAggregateResponse(already_forgotten=False)
        if await keys.forgotten(aggregate_id):
            return pb.ForgetAggregateResponse(already_forgotten=True)
        raise NotEncrypted(
            f"aggregate {aggregate_id!r} has no encryption key: it does not exist, or its events were"
            " written in the clear before encryption was on",
            metadata={"aggregate_id": aggregate_id},
        )

    async def RewrapKeys(
        self, request: pb.RewrapKeysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RewrapKeysResponse:
        async with self._audited("RewrapKeys"):
            self._authorizer.check_admin(current_principal.get(), "rewrap keys")
            return pb.RewrapKeysResponse(rewrapped=await self._keys().rewrap())

    @contextlib.asynccontextmanager
    async def _audited(self, rpc: str, *, aggregate_id: str = "", record_success: bool = True) -> AsyncIterator[None]:
        """Audit the admin call: refused (any ChronicleError), or done."""
        action = f"{SERVICE}/{rpc}"
        principal = current_principal.get().name
        try:
            yield
        except ChronicleError as error:
            await self._audit.admin_action(action, principal=principal, aggregate_id=aggregate_id, error=error)
            raise
        if record_success:
            await self._audit.admin_action(action, principal=principal, aggregate_id=aggregate_id)


def _entry(entry: AuditEntry) -> pb.AuditEntry:
    return pb.AuditEntry(
        time=timestamp(entry.recorded_at_us),
        command_id=entry.command_id,
        command_type=entry.command_type,
        aggregate_id=entry.aggregate_id,
        principal=entry.principal,
        user_id=entry.user_id,
        origin=entry.origin,
        outcome=_OUTCOME_CODES.get(entry.outcome, pb.AUDIT_OUTCOME_UNSPECIFIED),
        reason=entry.reason,
        message=entry.message,
        dry_run=entry.dry_run,
        peer=entry.peer,
        occurrences=entry.occurrences,
        issued_at=timestamp(entry.issued_at_us) if entry.issued_at_us else None,
    )
