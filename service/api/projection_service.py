"""``chronicle.v1.ProjectionService``: reading plugins' read models (one
document, pages of them by key prefix, optionally once the projection has
reached a position), their progress and parked events, and rebuilding one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeGuard

import grpc
from google.protobuf import any_pb2

from chronicle.v1 import projection_service_pb2 as pb
from chronicle.v1 import projection_service_pb2_grpc as pb_grpc
from service.api.codec import MAX_VERSION, TYPE_URL_PREFIX, check_id, check_version, duration, timestamp
from service.api.page_tokens import (
    checked_key_prefix,
    checked_page_size,
    fingerprint,
    make_token,
    read_token,
)
from service.api.stored_projections import delete_stored, orphaned, refuse_reaction, refuse_undeclared
from service.audit import AuditLog
from service.errors import (
    ChronicleError,
    FieldViolation,
    InvalidInput,
    NotAvailableHere,
    PermissionDenied,
    ResourceNotFound,
)
from service.plugins.projections import MAX_DOCUMENT_BYTES, Projection, document_key_problem
from service.plugins.registry import Registry
from service.principal import current_principal
from service.processing.freshness import wait_for_projection
from service.processing.projection_failures import clear_failure, stored_failure
from service.processing.projections import ProjectionRunner, Projections, RunsElsewhere, withdraw_if_forgotten
from service.security.policy import Authorizer
from service.store.base import KeyStore, LogReader, ProjectionStore
from service.store.records import DocumentRange, ParkedEvent, StoredDocument
from service.values import MAX_ID_LENGTH

SERVICE = "chronicle.v1.ProjectionService"
# An answer sent before the call's deadline runs out says why (PROJECTION_BEHIND)
# where the deadline itself would not. It leaves this much of the deadline (at
# most a fifth of it) for the answer to be made and to travel: 50 ms was not
# always enough on a loaded machine, and the client then saw DEADLINE_EXCEEDED.
_DEADLINE_MARGIN = 0.25
# GetDocuments' keys per call: one statement of the store, an answer that
# fits a message for documents of a few KiB each.
MAX_KEYS_PER_READ = 100
# CountDocuments reads an index entry per document counted, up to its limit:
# its cost is bounded by the limit, never a scan of a table of any size.
DEFAULT_COUNT_LIMIT = 10_000
MAX_COUNT_LIMIT = 1_000_000


@dataclass(slots=True)
class _Outcome:
    """What came of an administrator's action, for its audit entry."""

    message: str = ""


class ProjectionService(pb_grpc.ProjectionServiceServicer):
    def __init__(
        self,
        *,
        documents: ProjectionStore,
        log: LogReader,
        registry: Registry,
        projections: Projections,
        authorizer: Authorizer,
        audit: AuditLog | None = None,
        read_wait: float = 5.0,
        page_bytes: int = 1024 * 1024,
        keys: KeyStore | None = None,
        max_document_bytes: int = MAX_DOCUMENT_BYTES,
    ) -> None:
        # The largest document an answer carries (runners refuse to put a
        # larger one; an older server may have written one).
        self._max_document_bytes = max_document_bytes
        # Tells whether the aggregate a runner's last error came from was forgotten.
        self._keys = keys
        self._documents = documents
        self._log = log
        self._registry = registry
        self._projections = projections
        self._authorizer = authorizer
        self._audit = audit
        self._read_wait = read_wait
        self._page_bytes = page_bytes

    async def _projection(self, field: str, name: str) -> Projection:
        check_id(field, name, reason="INVALID_PROJECTION")
        projection = self._registry.projection(name)
        if projection is None:
            # Not served from the store: a read grant comes from the aggregate
            # types a declaration names, and none is loaded here. Said apart
            # from a name nothing holds to an administrator, so an operator
            # in a rolling deployment knows the documents are there.
            admin = self._authorizer.grant(current_principal.get()).admin
            if self._may_read_reaction(name, admin=admin):
                raise refuse_reaction(name)
            raise await refuse_undeclared(self._documents, name, admin=admin)
        self._check_read(projection)
        return projection

    def _may_read_reaction(self, name: str, *, admin: bool) -> bool:
        """Whether ``name`` is a loaded reaction the caller may read (as
        ReactionService would let it): then it is told so, not sent round
        between "not loaded" and "loaded"."""
        reaction = self._registry.reaction(name)
        if reaction is None:
            return False
        if admin:
            return True
        if not reaction.aggregate_types:
            return False  # one of every type: administrators only
        principal = current_principal.get()
        try:
            for aggregate_type in sorted(reaction.aggregate_types):
                self._authorizer.check_read(principal, aggregate_type)
        except PermissionDenied:
            return False
        return True

    async def _document_reader(self, field: str, name: str) -> tuple[Projection, str]:
        """The projection whose documents are read, and the key prefix the
        caller is held to ("" none): a caller without an unscoped read of
        its types may read a tenant-keyed projection's documents of its own
        tenant (its tenant-scoped read grant covering them all), no other."""
        try:
            return await self._projection(field, name), ""
        except PermissionDenied as refused:
            projection = self._registry.projection(name)
            if projection is None or not projection.tenant_keyed:
                raise
            prefix = self._authorizer.tenant_reading(current_principal.get(), projection.aggregate_types)
            if prefix is None:
                raise refused from None
            return projection, prefix

    def _check_read(self, projection: Projection) -> None:
        # A read model is as secret as the aggregates it is made of; one that
        # names none may hold anything, so it takes an administrator (with
        # authentication off too: anonymous callers are never one).
        principal = current_principal.get()
        if not projection.aggregate_types:
            self._authorizer.check_admin(principal, f"read projection {projection.name}")
        for aggregate_type in sorted(projection.aggregate_types):
            self._authorizer.check_read(principal, aggregate_type)

    async def _reached(
        self,
        projection: Projection,
        min_position: int,
        context: grpc.aio.ServicerContext[Any, Any],
        *,
        tenant: str,
    ) -> int:
        """The projection's checkpoint, once at or past ``min_position``. A
        caller held to a ``tenant``'s documents is not told a failure's text
        (GetProjection refuses it the status too): a handler's error may
        quote any event's payload, another tenant's included."""
        check_version("min_position", min_position, reason="POSITION_BEYOND_END")
        runner = self._projections.runners.get(projection.name)
        max_wait = self._read_wait
        remaining = context.time_remaining()
        if remaining is not None:
            max_wait = min(max_wait, max(0.0, remaining - min(_DEADLINE_MARGIN, remaining / 5)))
        return await wait_for_projection(
            self._documents,
            projection.name,
            min_position,
            log=self._log,
            progress=runner.progress if runner is not None else None,
            max_wait=max_wait,
            stopped=partial(self._stopped, projection),
            disclose_error=not tenant,
        )

    async def _stopped(self, projection: Projection, checkpoint: int) -> tuple[int, str]:
        """Where the projection stands still at a handler's failure, and the
        error: as its runner here knows it, or, where another replica runs
        it, as that one stored it (``projection_failures``); (0, "") while
        it goes."""
        runner = self._projections.runners.get(projection.name)
        if _runs_here(runner):
            return runner.stopped()
        failure = await stored_failure(self._documents, projection.name, checkpoint)
        return (failure.failed_at, failure.error) if failure is not None else (0, "")

    async def GetDocument(
        self, request: pb.GetDocumentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetDocumentResponse:
        projection, tenant = await self._document_reader("projection", request.projection)
        if problem := document_key_problem(request.key):
            raise InvalidInput.for_field("key", problem, reason="INVALID_KEY")
        key = request.key
        if not key.startswith(tenant):
            raise _not_of_tenant(projection, key)
        # The checkpoint first: the document read next is at least that new.
        position = await self._reached(projection, request.min_position, context, tenant=tenant)
        document = await self._documents.load_document(projection.name, key)
        if document is None:
            # With the checkpoint it was looked for at, as a document found
            # comes with it: "none yet" is told from "none as of position P".
            raise ResourceNotFound(
                f"projection {projection.name} has no document {key!r} (as of log position {position})",
                reason="DOCUMENT_NOT_FOUND",
                metadata={"projection": projection.name, "key": key, "position": str(position)},
            )
        self._check_sendable(projection, document)
        return pb.GetDocumentResponse(document=_packed(document), position=position)

    async def GetDocuments(
        self, request: pb.GetDocumentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetDocumentsResponse:
        projection, tenant = await self._document_reader("projection", request.projection)
        if len(request.keys) > MAX_KEYS_PER_READ:
            raise InvalidInput.for_field(
                "keys",
                f"names {len(request.keys)} keys, at most {MAX_KEYS_PER_READ} are read in one call",
                reason="TOO_MANY_KEYS",
            )
        keys = list(dict.fromkeys(request.keys))  # each once, in the order first asked
        for index, key in enumerate(keys):
            check_id(f"keys[{index}]", key, reason="INVALID_KEY")
        for key in keys:
            # All refused for one: the caller learns nothing of another
            # tenant's keys from which of them came back.
            if not key.startswith(tenant):
                raise _not_of_tenant(projection, key)
        # The checkpoint first, as GetDocument: the documents read next are at least that new.
        position = await self._reached(projection, request.min_position, context, tenant=tenant)
        found = {d.key: d for d in await self._documents.load_documents(projection.name, keys)}
        answer = pb.GetDocumentsResponse(position=position)
        room = self._page_bytes
        for key in keys:
            document = found.get(key)
            if document is None:
                answer.missing_keys.append(key)
                continue
            # One stored before handlers were refused such documents: refused
            # as GetDocument refuses it, not sent to fail in gRPC.
            self._check_sendable(projection, document)
            size = _size(document)
            if answer.documents and size > room:
                answer.unread_keys.append(key)  # one always goes, as a page's first document
                continue
            room -= size
            answer.documents.append(pb.Document(key=key, document=_packed(document)))
        return answer

    async def ListDocuments(
        self, request: pb.ListDocumentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListDocumentsResponse:
        projection, tenant = await self._document_reader("projection", request.projection)
        prefix = _prefix_for(projection, tenant, request.key_prefix)
        page_size = checked_page_size(request.page_size)
        if request.order not in pb.DocumentOrder.values():
            raise InvalidInput.for_field("order", f"unknown order {request.order}", reason="INVALID_ORDER")
        descending = request.order == pb.DOCUMENT_ORDER_KEY_DESCENDING
        listing = fingerprint("documents", projection.name, prefix, "desc" if descending else "asc")
        after = None
        read_at = 0
        if request.page_token:
            token = read_token(request.page_token, listing, bound_to="the projection, key prefix and order")
            after, read_at = token.get("k"), token.get("p", 0)
            if not isinstance(after, str) or not after.startswith(prefix):
                raise InvalidInput.for_field("page_token", "is damaged", reason="INVALID_PAGE_TOKEN")
            if type(read_at) is not int or not 0 <= read_at <= MAX_VERSION:
                raise InvalidInput.for_field("page_token", "is damaged", reason="INVALID_PAGE_TOKEN")
        position = await self._reached(projection, request.min_position, context, tenant=tenant)
        if position < read_at:
            # The checkpoint only moves back in a rebuild (or a deletion):
            # the documents after the token's key are not all there again
            # yet, and going on would end the listing early without a word.
            stale = (
                f"was made when projection {projection.name} had applied the log up to position {read_at}; it"
                f" has been rebuilt since and stands at {position}: list again from the first page"
            )
            raise InvalidInput(
                f"page_token: {stale}",
                reason="PAGE_TOKEN_STALE",
                violations=(FieldViolation("page_token", stale),),
                metadata={"projection": projection.name, "position": str(position), "token_position": str(read_at)},
            )
        found = await self._documents.list_documents(
            projection.name, DocumentRange(prefix=prefix, after=after, descending=descending, limit=page_size + 1)
        )
        page = _within(found[:page_size], self._page_bytes)
        if page and len(page[-1].data) > self._max_document_bytes:
            # Too large to send at all (written before runners refused such
            # documents): the page ends before it, and a page that starts
            # with it is refused, saying so, not left to gRPC's
            # RESOURCE_EXHAUSTED.
            if len(page) == 1:
                # With the token that goes on after it: a listing can pass it.
                self._check_sendable(
                    projection, page[0], next_page_token=make_token(listing, k=page[0].key, p=position)
                )
            page = page[:-1]
        more = len(page) < len(found)
        return pb.ListDocumentsResponse(
            documents=[pb.Document(key=d.key, document=_packed(d)) for d in page],
            next_page_token=make_token(listing, k=page[-1].key, p=position) if more and page else "",
            position=position,
        )

    async def CountDocuments(
        self, request: pb.CountDocumentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CountDocumentsResponse:
        projection, tenant = await self._document_reader("projection", request.projection)
        prefix = _prefix_for(projection, tenant, request.key_prefix)
        if request.limit > MAX_COUNT_LIMIT:
            raise InvalidInput.for_field(
                "limit", f"must be at most {MAX_COUNT_LIMIT:,}", reason="COUNT_LIMIT_TOO_LARGE"
            )
        limit = request.limit or DEFAULT_COUNT_LIMIT
        position = await self._reached(projection, request.min_position, context, tenant=tenant)
        # One more than the limit: whether there are more, for one entry's work.
        count = await self._documents.count_documents(projection.name, prefix, limit=limit + 1)
        return pb.CountDocumentsResponse(count=min(count, limit), more=count > limit, position=position)

    def _check_sendable(self, projection: Projection, document: StoredDocument, **also: str) -> None:
        if len(document.data) > self._max_document_bytes:
            raise NotAvailableHere(
                f"document {document.key!r} of projection {projection.name} is {len(document.data)} bytes, more"
                f" than the {self._max_document_bytes} an answer of this server carries (half of"
                " --max-message-bytes): written before handlers were refused such documents; a rebuild with a"
                " plugin that splits it, or a larger --max-message-bytes, makes it readable",
                reason="DOCUMENT_TOO_LARGE",
                metadata={
                    "projection": projection.name,
                    "key": document.key,
                    "size": str(len(document.data)),
                    "max_document_bytes": str(self._max_document_bytes),
                    **also,
                },
            )

    async def GetProjection(
        self, request: pb.GetProjectionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetProjectionResponse:
        return await self._status(await self._projection("name", request.name))

    async def ListProjections(
        self, request: pb.ListProjectionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListProjectionsResponse:
        readable = []
        for projection in sorted(self._registry.projections, key=lambda p: p.name):
            try:
                self._check_read(projection)
            except PermissionDenied:
                continue
            readable.append(await self._status(projection))
        listed = pb.ListProjectionsResponse(projections=readable)
        if request.include_orphaned:
            # Undeclared: nothing says what they are made of, so only an
            # administrator may learn of them (the rule of a projection that
            # names no aggregate type).
            self._authorizer.check_admin(current_principal.get(), "list orphaned projections")
            for name, position in await orphaned(self._registry, self._documents):
                listed.orphaned.append(pb.OrphanedProjection(name=name, position=position))
        return listed

    async def _status(self, projection: Projection) -> pb.GetProjectionResponse:
        runner = self._projections.runners.get(projection.name)
        status = pb.GetProjectionResponse(
            name=projection.name,
            # The checkpoint as stored: the same on every replica, whichever runs it.
            position=await self._documents.projection_position(projection.name),
            log_head=await self._log.log_head(),
            running=bool(runner and runner.status.running and runner.holds_lease),
            # What holds it here now; what it met here before is last_error.
            error=runner.error_now if runner else "",
            aggregate_types=sorted(projection.aggregate_types),
            event_types=sorted(projection.event_types),
            parked_events=await self._documents.count_parked_events(projection.name),
            on_failure=projection.on_failure,
            max_attempts=projection.max_attempts if projection.on_failure == "park" else 0,
            retry_interval=duration(projection.retry_seconds),
            runner=runner.runs_on if runner else "",
            version=projection.version,
            # 0: no checkpoint yet (its first run records the declared one).
            stored_version=await self._documents.projection_version(projection.name) or 0,
        )
        if runner is not None and self._keys is not None:
            await withdraw_if_forgotten(runner.status, self._keys)
            status.error = runner.error_now
        if not _runs_here(runner):
            # Stopped at an event where another replica runs it: as it stored it.
            failure = await stored_failure(self._documents, projection.name, status.position)
            if failure is not None:
                status.error = failure.error
        if runner is not None and runner.status.last_error:
            status.last_error = runner.status.last_error
            status.last_error_time.CopyFrom(timestamp(round(runner.status.last_error_at * 1_000_000)))
        return status

    async def ListParkedEvents(
        self, request: pb.ListParkedEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListParkedEventsResponse:
        projection = await self._projection("projection", request.projection)
        page_size = checked_page_size(request.page_size)
        listing = fingerprint("parked", projection.name)
        after = None
        if request.page_token:
            token = read_token(request.page_token, listing, bound_to="the projection")
            position, event_id = token.get("p"), token.get("e")
            # A tampered token is input like any other: its position goes to
            # the store as a signed 64-bit integer (JSON's true is no int here).
            if type(position) is not int or not 0 <= position <= MAX_VERSION or not isinstance(event_id, str):
                raise InvalidInput.for_field("page_token", "is damaged", reason="INVALID_PAGE_TOKEN")
            after = (position, event_id)
        found = await self._documents.parked_events(projection.name, after=after, limit=page_size + 1)
        page = found[:page_size]
        more = len(found) > page_size
        return pb.ListParkedEventsResponse(
            events=[_parked(e) for e in page],
            next_page_token=make_token(listing, p=page[-1].position, e=page[-1].event_id) if more else "",
        )

    @asynccontextmanager
    async def _audited(self, rpc: str, name: str) -> AsyncIterator[_Outcome]:
        """An administrator's action on a projection, audited under its name
        ("projection:NAME", where QueryAudit's aggregate_id filter finds it):
        refused (any ChronicleError, with its reason and message), or done,
        with what came of it in the outcome's message. As ReactionService's
        ``_audited`` does for reactions."""
        action = f"{SERVICE}/{rpc}"
        principal = current_principal.get().name
        target = f"projection:{name[:MAX_ID_LENGTH]}"
        outcome = _Outcome()
        try:
            yield outcome
        except ChronicleError as error:
            if self._audit is not None:
                await self._audit.admin_action(action, principal=principal, aggregate_id=target, error=error)
            raise
        if self._audit is not None:
            await self._audit.admin_action(action, principal=principal, aggregate_id=target, message=outcome.message)

    async def RebuildProjection(
        self, request: pb.RebuildProjectionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RebuildProjectionResponse:
        async with self._audited("RebuildProjection", request.name):
            self._authorizer.check_admin(current_principal.get(), "rebuild projections")
            projection = await self._projection("name", request.name)
            head = await self._log.log_head()
            # The documents built from now on are of this replica's
            # declaration: its version goes with the reset.
            await self._documents.reset_projection(projection.name, version=projection.version)
            # A failure it stood still at, stored for every replica, is not
            # one of the rebuild's (a fixed plugin may pass it): met again, stored again.
            await clear_failure(self._documents, projection.name, None)
        runner = self._projections.runners.get(projection.name)
        if runner is not None:
            runner.rebuilt()  # here: at once; on another replica, at its next look
        return pb.RebuildProjectionResponse(log_head=head)

    async def SkipEvent(
        self, request: pb.SkipEventRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SkipEventResponse:
        async with self._audited("SkipEvent", request.projection) as outcome:
            self._authorizer.check_admin(current_principal.get(), "skip a projection's event")
            projection = await self._projection("projection", request.projection)
            position = check_version("position", request.position, reason="INVALID_POSITION")
            if position == 0:
                raise InvalidInput.for_field("position", "must name the event to skip", reason="INVALID_POSITION")
            runner = self._projections.runners.get(projection.name)
            if runner is None:  # this server runs no projections
                raise RunsElsewhere(
                    f"projection {projection.name} does not run on this server: ask the one that runs it",
                    metadata={"projection": projection.name, "runner": ""},
                )
            parked = await runner.skip(position)
            # Not the error: its text may quote the event, which a forget erases from the store, not from here.
            outcome.message = f"parked {parked.event_type} {parked.event_id} at position {parked.position}"
        return pb.SkipEventResponse(parked=_parked(parked))

    async def DeleteProjection(
        self, request: pb.DeleteProjectionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteProjectionResponse:
        async with self._audited("DeleteProjection", request.name) as outcome:
            self._authorizer.check_admin(current_principal.get(), "delete projections")
            name = check_id("name", request.name, reason="INVALID_PROJECTION")
            deleted = await delete_stored(self._registry, self._documents, name)
            outcome.message = f"{deleted} documents and parked events deleted"
        return pb.DeleteProjectionResponse(deleted=deleted)


def _runs_here(runner: ProjectionRunner | None) -> TypeGuard[ProjectionRunner]:
    """Whether this replica runs the projection now: its runner knows best
    whether it stands still, without a read of what it stored."""
    return runner is not None and runner.status.running and runner.holds_lease


def _prefix_for(projection: Projection, tenant: str, asked: str) -> str:
    """The key prefix a listing or count of ``asked`` reads, for a caller
    held to ``tenant``'s documents ("": every document): "" or a part of the
    tenant's prefix reads the tenant's documents alone; a prefix outside
    them is refused as another tenant's."""
    prefix = checked_key_prefix(asked)
    if tenant.startswith(prefix):
        return tenant
    if not prefix.startswith(tenant):
        raise _not_of_tenant(projection, prefix)
    return prefix


def _not_of_tenant(projection: Projection, key: str) -> PermissionDenied:
    """A tenant-scoped reader's refusal of a key (or prefix) outside its
    tenant's: alike whether such documents exist or not."""
    principal = current_principal.get()
    return PermissionDenied(
        f"{principal.name} may read only its own tenant's documents of projection {projection.name}",
        reason="READ_DENIED",
        metadata={"principal": principal.name, "projection": projection.name, "key": key},
    )


def _packed(document: StoredDocument) -> any_pb2.Any:
    return any_pb2.Any(type_url=TYPE_URL_PREFIX + document.type_name, value=document.data)


def _within(documents: list[StoredDocument], max_bytes: int) -> list[StoredDocument]:
    """The documents up to the one that brings their size to ``max_bytes``
    (at least one), so that a page always fits in a message."""
    total = 0
    for count, document in enumerate(documents, start=1):
        total += _size(document)
        if total >= max_bytes:
            return documents[:count]
    return documents


def _size(document: StoredDocument) -> int:
    """About what ``document`` takes in an answer."""
    return len(document.data) + len(document.key) + len(document.type_name) + 32


def _parked(event: ParkedEvent) -> pb.ParkedEvent:
    return pb.ParkedEvent(
        position=event.position,
        event_id=event.event_id,
        event_type=event.event_type,
        aggregate_id=event.aggregate_id,
        error=event.error,
        attempts=event.attempts,
        parked_at=timestamp(event.parked_at_us),
    )
