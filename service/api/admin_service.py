"""``chronicle.v1.AdminService``: the audit log, forgetting aggregates,
rewrapping keys, exporting and importing the store. Every RPC needs the
admin grant; with authentication off, anonymous callers have it only on a
server started with --anonymous-admin. Every call is audited, refused or
done (reading the audit log only when refused).

A tenant's administrator (a ``scope = "tenant"`` role granting
``tenant_admin``) may make four of them on its own tenant's aggregates
only: ``ListAggregates`` (the prefix its tenant's, ``acme:`` when none is
given), ``ForgetAggregate``, ``ForgetAggregates`` and ``QueryAudit`` (the
entries filed under its aggregates' ids). A prefix outside the tenant is
refused on its letters alone (``ADMIN_DENIED``); another tenant's id is
answered as an id that does not exist, so nothing tells whether it does.
The rest stays every tenant's administration: keys, exports and imports
carry every tenant's data, and ``DeleteAggregate`` removes events for good
and writes an archive where the server's operator says (docs/security.md,
"Tenant administration")."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc

from chronicle.v1 import admin_service_pb2 as pb
from chronicle.v1 import admin_service_pb2_grpc as pb_grpc
from chronicle.v1 import export_pb2
from service.api import aggregate_listing, bulk_forget, forgotten
from service.api.codec import (
    canonical_command_id,
    check_id,
    check_stored_id,
    check_version,
    encode_event,
    micros_of,
    timestamp,
)
from service.api.transfers import Transfers, described
from service.audit import AuditLog, admin_entry
from service.errors import (
    ChronicleError,
    ConfigurationError,
    InvalidInput,
    NotEncrypted,
    PermissionDenied,
    StoreUnavailable,
    quoted,
)
from service.principal import Principal, current_principal, in_tenant, tenant_prefix
from service.security.policy import Authorizer
from service.store.base import AuditQuery, Store
from service.store.encrypted import forget_aggregate
from service.store.encryption import Keyring
from service.store.key_names import humanized
from service.store.records import ACCEPTED, REFUSED, AuditEntry, Forgetting

log = logging.getLogger(__name__)
SERVICE = "chronicle.v1.AdminService"
MAX_AUDIT_ENTRIES = 1000
MAX_TEXT = 1000
_OUTCOMES = {pb.AUDIT_OUTCOME_ACCEPTED: ACCEPTED, pb.AUDIT_OUTCOME_REFUSED: REFUSED}
_OUTCOME_CODES = {name: code for code, name in _OUTCOMES.items()}


class AdminService(pb_grpc.AdminServiceServicer):
    def __init__(
        self,
        audit: AuditLog,
        authorizer: Authorizer,
        keyring: Keyring | None = None,
        *,
        transfers: Transfers | None = None,
        stored: Store | None = None,
    ) -> None:
        """``stored``: the store adapter's own roles (below encryption), in
        which a forget looks for payloads in the clear."""
        self._audit = audit
        self._authorizer = authorizer
        self._keyring = keyring
        self._transfers = transfers
        self._stored = stored

    def _transfer(self) -> Transfers:
        if self._transfers is None:
            raise StoreUnavailable("this server cannot export or import its store", reason="TRANSFER_UNAVAILABLE")
        return self._transfers

    def _keys(self) -> Keyring:
        if self._keyring is None:
            raise NotEncrypted("encryption at rest is off (no master key is configured)", reason="ENCRYPTION_OFF")
        return self._keyring

    async def QueryAudit(
        self, request: pb.QueryAuditRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.QueryAuditResponse:
        async with self._audited("QueryAudit", record_success=False):
            tenant = self._authorizer.administered_tenant(current_principal.get(), "query the audit log")
        if request.limit > MAX_AUDIT_ENTRIES:
            raise InvalidInput.for_field("limit", f"must be at most {MAX_AUDIT_ENTRIES}", reason="LIMIT_TOO_LARGE")
        query = AuditQuery(
            aggregate_id=check_stored_id("aggregate_id", request.aggregate_id, reason="INVALID_AGGREGATE_ID")
            if request.aggregate_id
            else None,
            principal=check_id("principal", request.principal, reason="INVALID_FILTER") if request.principal else None,
            command_id=canonical_command_id(check_id("command_id", request.command_id, reason="INVALID_FILTER"))
            if request.command_id
            else None,
            command_type=check_id("command_type", request.command_type, reason="INVALID_FILTER")
            if request.command_type
            else None,
            outcome=_outcome(request.outcome),
            since_us=micros_of(request.since, "since") if request.HasField("since") else None,
            until_us=micros_of(request.until, "until") if request.HasField("until") else None,
            limit=request.limit or 100,
            # A tenant's administrator: the entries of its aggregates alone
            # (another tenant's id asked for then matches none, as an id
            # never audited would); never those of no tenant (reaction:…).
            aggregate_id_prefix=tenant_prefix(tenant) if tenant is not None else None,
        )
        entries = await self._audit.query(query)
        return pb.QueryAuditResponse(entries=[_entry(e) for e in entries])

    async def ForgetAggregate(
        self, request: pb.ForgetAggregateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ForgetAggregateResponse:
        outcome = _Outcome()
        async with self._audited("ForgetAggregate", aggregate_id=request.aggregate_id[:200], outcome=outcome):
            tenant = self._authorizer.administered_tenant(current_principal.get(), "forget aggregates")
            aggregate_id = check_stored_id("aggregate_id", request.aggregate_id, reason="INVALID_AGGREGATE_ID")
            response = await self._forget(aggregate_id, tenant, outcome)
        # The entry above is the forgotten aggregate's, whose texts forgetting
        # erases: what went of each reaction is filed under the reaction.
        await self._audit_reactions(
            "ForgetAggregate", f"forgetting aggregate {aggregate_id}", response.deleted_documents
        )
        return response

    async def _audit_reactions(self, method: str, forgetting: str, deleted: Iterable[pb.ForgottenDocuments]) -> None:
        """File what a forget took of each reaction (process states, parked
        commands) under the reaction, in the clear, as its process states'
        reads and drops are: ``forgetting`` says which forget."""
        for entry in deleted:
            if entry.process_states or entry.parked_commands:
                await self._audit.admin_action(
                    f"{SERVICE}/{method}",
                    principal=current_principal.get().name,
                    aggregate_id=f"reaction:{entry.name}",
                    message=f"{forgetting} {forgotten.summary([entry])}",
                    tenant=self._tenant_acting(),
                )

    async def _forget(self, aggregate_id: str, tenant: str | None, outcome: _Outcome) -> pb.ForgetAggregateResponse:
        keys = self._keys()
        if self._stored is None:
            raise StoreUnavailable("this server cannot look at its store below encryption", reason="FORGET_UNAVAILABLE")
        if tenant is not None and not in_tenant(tenant, aggregate_id):
            # Another tenant's id, to a tenant's administrator: answered as
            # an id with no key (one that does not exist), whether it exists.
            raise _no_key(aggregate_id)
        # The call's entry, written in the forget's transaction when it erases
        # the key (as each batch's of ForgetAggregates): a crash after the
        # commit leaves no forgotten aggregate unaudited. Made before it.
        entry = admin_entry(
            f"{SERVICE}/ForgetAggregate",
            principal=current_principal.get().name,
            aggregate_id=aggregate_id,
            tenant=self._tenant_acting(),
        )
        forgetting = await forget_aggregate(self._stored, keys, aggregate_id, audit=entry)
        outcome.recorded = forgetting.erased
        deleted = forgotten.deleted_documents(forgetting)
        if deleted:
            # Loud: a reaction's process deleted is a saga stopped in flight.
            log.warning(
                "forgetting aggregate %s %s",
                aggregate_id,
                forgotten.summary(deleted),
                extra={"aggregate_id": aggregate_id, "processes_deleted": forgotten.in_flight(deleted)},
            )
        # The log (the operator's) names every other aggregate; a tenant's
        # administrator is told of another tenant's only how many.
        shown = deleted if tenant is None else forgotten.deleted_documents(forgetting, tenant=tenant)
        answer = pb.ForgetAggregateResponse(already_forgotten=not forgetting.erased, deleted_documents=shown)
        if forgetting.forgotten_at_us is not None:
            answer.forgotten_time.CopyFrom(timestamp(forgetting.forgotten_at_us))
        if forgetting.erased:
            if self._transfers is not None:
                # Its state, cached by its worker, is what was just shredded:
                # out of this server's memory too. Other replicas keep theirs
                # until their workers go, and refuse commands and dry runs
                # on it once their key cache expires (30 s).
                self._transfers.evict(aggregate_id)
            log.warning("aggregate %s forgotten by %r", aggregate_id, current_principal.get().name)
            return answer
        if forgetting.forgotten_at_us is not None or await keys.forgotten(aggregate_id):
            return answer
        raise _no_key(aggregate_id)

    async def RewrapKeys(
        self, request: pb.RewrapKeysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RewrapKeysResponse:
        async with self._audited("RewrapKeys"):
            self._authorizer.check_admin(current_principal.get(), "rewrap keys")
            try:
                rewrapped = await self._keys().rewrap()
            except ConfigurationError as error:
                raise _said_for_people(error) from None
            return pb.RewrapKeysResponse(rewrapped=rewrapped)

    async def ExportLog(
        self, request: pb.ExportLogRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[export_pb2.ExportRecord]:
        outcome = _Outcome()
        async with self._audited("ExportLog", outcome=outcome):
            self._authorizer.check_admin(current_principal.get(), "export the store")
            transfers = self._transfer()
            selection = await transfers.selection(request)
            exported = 0
            async for record in transfers.export(selection):
                exported += 1
                yield record
            outcome.message = f"{exported} records exported" + (
                f" of {len(selection.aggregate_ids)} aggregates" if selection.aggregate_ids else ""
            )

    async def ImportLog(
        self, request_iterator: AsyncIterator[pb.ImportLogRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ImportLogResponse:
        outcome = _Outcome()
        async with self._audited("ImportLog", outcome=outcome):
            # The first message is read before the grant is checked, as a
            # unary request is decoded first: a malformed one is that.
            requests = aiter(request_iterator)
            first = await anext(requests, None)
            self._authorizer.check_admin(current_principal.get(), "import into the store")
            transfers = self._transfer()
            response, summary = await transfers.import_(_chained(first, requests))
            outcome.message = described(summary)
            log.warning("import by %r: %s", current_principal.get().name, outcome.message)
            return response

    async def DeleteAggregate(
        self, request: pb.DeleteAggregateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteAggregateResponse:
        outcome = _Outcome()
        async with self._audited("DeleteAggregate", aggregate_id=request.aggregate_id[:200], outcome=outcome):
            principal = current_principal.get()
            self._authorizer.check_admin(principal, "delete aggregates")
            aggregate_id = check_stored_id("aggregate_id", request.aggregate_id, reason="INVALID_AGGREGATE_ID")
            for name in ("reason", "archive"):
                if len(getattr(request, name)) > MAX_TEXT:
                    raise InvalidInput.for_field(name, f"at most {MAX_TEXT} characters", reason="TEXT_TOO_LONG")
            deletion = await self._transfer().delete(
                aggregate_id,
                expected_version=check_version("expected_version", request.expected_version)
                if request.HasField("expected_version")
                else None,
                principal=principal.name,
                reason=request.reason,
                archive=request.archive,
            )
            if deletion.already_deleted:
                outcome.message = "already deleted"
            else:
                outcome.message = f"{deletion.events_deleted} events deleted" + (
                    f": {request.reason}" if request.reason else ""
                )
                log.warning("aggregate %s deleted by %r (%s)", aggregate_id, principal.name, outcome.message)
            return pb.DeleteAggregateResponse(
                tombstone=encode_event(deletion.tombstone),
                already_deleted=deletion.already_deleted,
                events_deleted=deletion.events_deleted,
            )

    async def ListAggregates(
        self, request: pb.ListAggregatesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListAggregatesResponse:
        async with self._audited("ListAggregates", record_success=False):
            principal = current_principal.get()
            tenant = self._authorizer.administered_tenant(principal, "list aggregates")
            if tenant is not None:
                narrowed = pb.ListAggregatesRequest()
                narrowed.CopyFrom(request)
                narrowed.prefix = _prefix_within(principal, tenant, request.prefix or tenant_prefix(tenant))
                request = narrowed
            return await aggregate_listing.list_page(self._store_below().events, request)

    async def ForgetAggregates(
        self, request: pb.ForgetAggregatesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ForgetAggregatesResponse:
        outcome = _Outcome()
        async with self._audited("ForgetAggregates", aggregate_id=request.prefix[:200], outcome=outcome):
            principal = current_principal.get()
            tenant = self._authorizer.administered_tenant(principal, "forget aggregates")
            selection = bulk_forget.selection_of(request)
            if tenant is not None and selection.prefix:
                _prefix_within(principal, tenant, selection.prefix)
            batch_size = bulk_forget.batch_size_of(request)
            bulk = bulk_forget.BulkForget(
                self._store_below(),
                self._keys(),
                evict=self._evict,
                # Another tenant's ids, to a tenant's administrator: as ids
                # with no live key (matching none), whether they exist or not.
                owns=(lambda aggregate_id: in_tenant(tenant, aggregate_id)) if tenant is not None else None,
            )
            matching = await bulk.matching(selection)
            bulk.check_confirmed(request.confirm if request.HasField("confirm") else None, matching, selection)

            def batch_entry(ids: list[str]) -> AuditEntry:
                # Each batch's own entry, written in its transaction: a call
                # cut short leaves in the audit what it did, and nothing it
                # did goes unaudited. Made before the batch (the documents it
                # deletes are counted in the call's entry, at its end).
                return admin_entry(
                    f"{SERVICE}/ForgetAggregates",
                    principal=principal.name,
                    aggregate_id=request.prefix[:200],
                    message=f"batch: {bulk_forget.counted(len(ids))} forgotten ({selection.describe()}),"
                    f" {ids[0]} to {ids[-1]}",
                    tenant=tenant or "",
                )

            async def log_batch(ids: list[str], forgettings: list[Forgetting]) -> None:
                erased = [i for i, f in zip(ids, forgettings, strict=True) if f.erased]
                if not erased:
                    return
                deleted = forgotten.deleted_documents(bulk_forget.summed(forgettings))
                log.warning(
                    "%s forgotten by %r (%s)%s",
                    bulk_forget.counted(len(erased)),
                    principal.name,
                    selection.describe(),
                    f"; {forgotten.summary(deleted)}" if deleted else "",
                )

            done = await bulk.run(
                selection, limit=matching, batch_size=batch_size, entry_of=batch_entry, after_batch=log_batch
            )
            remaining = await bulk.matching(selection)
            without_key = await bulk.without_key(selection.prefix) if selection.prefix else 0
            response = bulk_forget.answer(done, remaining=remaining, without_key=without_key, tenant=tenant)
            outcome.message = (
                f"{bulk_forget.counted(done.forgotten)} forgotten ({selection.describe()}), {remaining} remaining"
                + (f", {len(done.not_encrypted)} not encrypted" if done.not_encrypted else "")
                + (f", {without_key} without a key" if without_key else "")
                # What the batches deleted beside the keys, summed (their own
                # entries are made before they run).
                + (f"; {forgotten.summary(list(response.deleted_documents))}" if response.deleted_documents else "")
            )
        await self._audit_reactions(
            "ForgetAggregates", f"forgetting aggregates ({selection.describe()})", response.deleted_documents
        )
        return response

    def _tenant_acting(self) -> str:
        """The tenant the caller administers as its tenant's administrator
        ("": every tenant's administrator, or none), for its audit entries."""
        return self._authorizer.tenant_administered(current_principal.get())

    def _store_below(self) -> Store:
        if self._stored is None:
            raise StoreUnavailable("this server cannot look at its store below encryption", reason="FORGET_UNAVAILABLE")
        return self._stored

    def _evict(self, aggregate_id: str) -> None:
        if self._transfers is not None:
            self._transfers.evict(aggregate_id)

    @contextlib.asynccontextmanager
    async def _audited(
        self, rpc: str, *, aggregate_id: str = "", record_success: bool = True, outcome: _Outcome | None = None
    ) -> AsyncIterator[None]:
        """Audit the admin call: refused (any ChronicleError), or done (with
        what ``outcome`` says came of it)."""
        action = f"{SERVICE}/{rpc}"
        principal = current_principal.get().name
        tenant = self._tenant_acting()
        try:
            yield
        except ChronicleError as error:
            await self._audit.admin_action(
                action, principal=principal, aggregate_id=aggregate_id, error=error, tenant=tenant
            )
            raise
        if record_success and not (outcome is not None and outcome.recorded):
            message = outcome.message if outcome is not None else ""
            await self._audit.admin_action(
                action, principal=principal, aggregate_id=aggregate_id, message=message, tenant=tenant
            )


def _no_key(aggregate_id: str) -> NotEncrypted:
    """A forget of an aggregate without a key: one that does not exist (or
    of another tenant, to a tenant's administrator), or written in the clear."""
    return NotEncrypted(
        f"aggregate {aggregate_id!r} has no encryption key: it does not exist, or its events were"
        " written in the clear before encryption was on",
        metadata={"aggregate_id": aggregate_id},
    )


def _prefix_within(principal: Principal, tenant: str, prefix: str) -> str:
    """``prefix`` if it lies within ``tenant``'s ids (begins ``acme:``);
    refused otherwise, on its letters alone (nothing is looked up)."""
    if prefix.startswith(tenant_prefix(tenant)):
        return prefix
    raise PermissionDenied(
        f"{principal.name} administers tenant {quoted(tenant)} only: prefix {quoted(prefix)} is outside its"
        f" aggregates (their ids begin {tenant_prefix(tenant)!r})",
        reason="ADMIN_DENIED",
        metadata={"principal": principal.name, "tenant": tenant, "prefix": prefix[:200]},
    )


def _said_for_people(error: ConfigurationError) -> ConfigurationError:
    """A key that could not be unwrapped, its owner named in words (a claims
    scope's or read model's key has an id no one should have to read), and
    what to do about it."""
    message = humanized(error.message)
    if error.reason == "MASTER_KEY_MISSING" and "tenants" in error.metadata:
        # The message already says the two ways out of a tenant's key
        # missing (put back, or marked destroyed): only the rewrap is added.
        message += (
            "; either edit is read by the servers within --auth-reload-seconds, and an old key of the tenant"
            " put back after its active one is removed again only once rewrap-keys answers 0"
        )
    elif error.reason == "MASTER_KEY_MISSING":
        message += (
            "; put that master key back in the master-key file (after the active one, which rewraps), wait for"
            " the servers to read it again, and run rewrap-keys until it answers 0 before removing it"
        )
    # Its own kind kept: MasterKeysUnfit is FAILED_PRECONDITION, as every
    # call that meets keys the server cannot open answers.
    return type(error)(message, reason=error.reason, metadata=error.metadata)


def _outcome(asked: pb.AuditOutcome) -> str | None:
    """The outcome to filter on; None for any. An unknown value (a newer
    client's, or garbage) is refused: read as "any", it would answer a
    filter with entries that do not match it."""
    if asked == pb.AUDIT_OUTCOME_UNSPECIFIED:
        return None
    outcome = _OUTCOMES.get(asked)
    if outcome is None:
        raise InvalidInput.for_field("outcome", f"unknown outcome {asked}", reason="INVALID_FILTER")
    return outcome


async def _chained(
    first: pb.ImportLogRequest | None, rest: AsyncIterator[pb.ImportLogRequest]
) -> AsyncIterator[pb.ImportLogRequest]:
    if first is None:
        return
    yield first
    async for request in rest:
        yield request


class _Outcome:
    """What an audited call reports when it is done; ``recorded``: its entry
    was written in the action's own transaction (not again after it)."""

    message = ""
    recorded = False


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
