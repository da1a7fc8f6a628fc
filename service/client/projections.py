"""Read models from the client's side (``ChronicleClient.projections``): a
projection's documents, one by key or page after page by key prefix, where
the projection stands, the events it parked, and a rebuild::

    async with ChronicleClient.connect(address) as client:
        deposited = await client.submit("acc-1", bank.Deposit(amount=5))
        # Read your own write: wait until the projection has applied it.
        balance = await client.projections.document(
            "bank.balances_by_owner", "owner:ann", min_position=deposited.position
        )
        print(balance.document.balance)  # a bank.OwnerBalance, its _pb2 module being imported
        async for found in client.projections.documents("bank.balances_by_owner", key_prefix="owner:"):
            print(found.key, found.document)

Every call is a unary call retried as one is (``retry.call_with_retries``),
each page of a listing on its own; refusals are
:class:`~service.client.errors.RemoteError` subclasses with the server's
reason. A read with ``min_position`` that the projection has not reached
within the server's wait is ``Unavailable`` PROJECTION_BEHIND with a
``RetryInfo``, so it is retried (for ``retry_for``); a projection stopped by
a handler's failure at or before that position is ``FailedPrecondition``
PROJECTION_FAILED, which is not: it lasts until the plugin is fixed.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from google.protobuf import any_pb2
from google.protobuf.message import Message

from chronicle.v1 import projection_service_pb2 as pb
from chronicle.v1 import projection_service_pb2_grpc as pb_grpc
from service.client.results import M, unpack, unpack_as
from service.client.unary import UnaryCalls

ProjectionStatus = pb.GetProjectionResponse
DocumentCount = pb.CountDocumentsResponse
ParkedEvent = pb.ParkedEvent


@dataclass(frozen=True, slots=True)
class Document:
    """One document of a projection: its ``key``, the document decoded when
    its type is known in this process (its ``_pb2`` module imported; else
    the packed ``Any``), and ``position``, the projection's checkpoint when
    it was read (it reflects every event up to there)."""

    key: str
    packed: any_pb2.Any
    position: int

    @property
    def document(self) -> Message:
        return unpack(self.packed)

    @property
    def type_name(self) -> str:
        """The document's message type, e.g. ``bank.v1.OwnerBalance``."""
        return str(self.packed.TypeName())

    def document_as(self, message_type: type[M]) -> M:
        """The document as ``message_type``; TypeError if it is another type."""
        return unpack_as(self.packed, message_type)


@dataclass(frozen=True, slots=True)
class FoundDocuments:
    """What ``documents_by_keys`` read: ``documents`` by key, in the order
    asked; ``missing``, the keys that hold none (yet), in the order asked;
    ``position``, the projection's checkpoint at the (first) read: every
    document and every missing key reflects the log at least up to there."""

    documents: dict[str, Document]
    missing: builtins.list[str]
    position: int


class Projections(UnaryCalls[pb_grpc.ProjectionServiceStub]):
    """``ProjectionService`` (``ChronicleClient.projections``)."""

    async def document(
        self,
        projection: str,
        key: str,
        *,
        min_position: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> Document:
        """The document ``key`` of ``projection``. ``min_position`` (a
        submit's ``position``): read your own writes, the read waits until
        the projection has applied the log that far. ``NotFound``
        PROJECTION_NOT_FOUND or DOCUMENT_NOT_FOUND; ``InvalidArgument``
        INVALID_KEY (empty, too long, control characters), INVALID_PROJECTION,
        POSITION_BEYOND_END; ``FailedPrecondition`` DOCUMENT_FORGOTTEN for a
        key of a tenant whose master key was destroyed, of a ``tenant_keyed``
        projection under encryption at rest (its ``tenant`` in the
        metadata), DOCUMENT_IN_TWO_FORMS for one of them an older server
        wrote beside this version's copy (a rollback: rebuild it).
        ``timeout``: seconds for the whole call, the
        waits for a projection behind included (then ``DeadlineExceeded``)."""
        request = pb.GetDocumentRequest(projection=projection, key=key, min_position=min_position)
        response: pb.GetDocumentResponse = await self._call(
            f"get document {key!r} of {projection!r}", self._stub.GetDocument, request, timeout
        )
        return Document(key=key, packed=response.document, position=response.position)

    async def documents_by_keys(
        self,
        projection: str,
        keys: Iterable[str],
        *,
        min_position: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> FoundDocuments:
        """The documents of ``projection`` under ``keys`` (at most 100: more
        is ``InvalidArgument`` TOO_MANY_KEYS), read in one call and one store
        read; a key that holds nothing is in ``missing``, not an error.
        Refusals and ``min_position`` as for ``document`` (a tenant-scoped
        reader naming another tenant's key is refused the whole call,
        ``PermissionDenied`` READ_DENIED). When the documents are too large
        for one answer the server leaves some out (``unread_keys``) and they
        are read by another call."""
        wanted = builtins.list(dict.fromkeys(keys))
        documents: dict[str, Document] = {}
        missing: set[str] = set()
        first_position: int | None = None
        asked = wanted
        while asked:
            request = pb.GetDocumentsRequest(projection=projection, keys=asked, min_position=min_position)
            response: pb.GetDocumentsResponse = await self._call(
                f"get {len(asked)} documents of {projection!r}", self._stub.GetDocuments, request, timeout
            )
            if first_position is None:
                first_position = response.position
            for found in response.documents:
                documents[found.key] = Document(key=found.key, packed=found.document, position=response.position)
            missing.update(response.missing_keys)
            if len(response.unread_keys) >= len(asked):
                raise RuntimeError(f"the server read none of {len(asked)} documents of {projection!r}")
            asked = builtins.list(response.unread_keys)
        return FoundDocuments(
            documents={key: documents[key] for key in wanted if key in documents},
            missing=[key for key in wanted if key in missing],
            position=first_position or 0,
        )

    async def documents(
        self,
        projection: str,
        *,
        key_prefix: str = "",
        page_size: int = 0,
        descending: bool = False,
        min_position: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> AsyncIterator[Document]:
        """The documents of ``projection`` whose keys start with
        ``key_prefix``, in key order (Unicode code points; ``descending``
        the other way), following the pages to the last. ``page_size`` (0:
        the server's, 100) bounds a page; more than 1,000 is
        ``InvalidArgument`` PAGE_SIZE_TOO_LARGE. Pages are read one at a
        time: each document carries its page's checkpoint, and a document
        written meanwhile shows if its key comes after the pages read.
        ``min_position`` as for ``document``. On a server with encryption at
        rest, ``FailedPrecondition`` DOCUMENT_KEYS_HIDDEN. ``timeout``: seconds
        for the whole listing, its pages and their retries included (then
        ``DeadlineExceeded``)."""
        order = pb.DOCUMENT_ORDER_KEY_DESCENDING if descending else pb.DOCUMENT_ORDER_KEY_ASCENDING
        pages = self._pages(
            f"list the documents of {projection!r}",
            self._stub.ListDocuments,
            lambda token: pb.ListDocumentsRequest(
                projection=projection,
                key_prefix=key_prefix,
                page_size=page_size,
                page_token=token,
                order=order,
                min_position=min_position,
            ),
            timeout,
        )
        async for page in pages:
            for found in page.documents:
                yield Document(key=found.key, packed=found.document, position=page.position)

    async def count(
        self,
        projection: str,
        *,
        key_prefix: str = "",
        limit: int = 0,
        min_position: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> DocumentCount:
        """How many documents of ``projection`` have keys starting with
        ``key_prefix`` (``CountDocuments``): ``count``, up to ``limit`` (0:
        the server's 10,000; at most 1,000,000, else ``InvalidArgument``
        COUNT_LIMIT_TOO_LARGE), ``more`` when there are more than that, and
        ``position``, the checkpoint counted at. The server reads an index
        entry per document counted, no document. ``min_position`` as for
        ``document``; with encryption at rest a prefix is
        ``FailedPrecondition`` DOCUMENT_KEYS_HIDDEN."""
        request = pb.CountDocumentsRequest(
            projection=projection, key_prefix=key_prefix, limit=limit, min_position=min_position
        )
        counted: DocumentCount = await self._call(
            f"count the documents of {projection!r}", self._stub.CountDocuments, request, timeout
        )
        return counted

    async def get(
        self,
        name: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> ProjectionStatus:
        """Where projection ``name`` stands (``position`` against
        ``log_head``, ``running``, ``error``, ``parked_events``, …).
        ``NotFound`` PROJECTION_NOT_FOUND for one no loaded plugin declares,
        or (to an administrator) PROJECTION_NOT_LOADED if the store holds
        it all the same (renamed away, or not deployed on this server yet)."""
        status: ProjectionStatus = await self._call(
            f"get projection {name!r}", self._stub.GetProjection, pb.GetProjectionRequest(name=name), timeout
        )
        return status

    async def list(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> builtins.list[ProjectionStatus]:
        """Every loaded projection the caller may read, by name."""
        response: pb.ListProjectionsResponse = await self._call(
            "list projections", self._stub.ListProjections, pb.ListProjectionsRequest(), timeout
        )
        return builtins.list(response.projections)

    async def orphaned(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> builtins.list[pb.OrphanedProjection]:
        """The projections the store holds that no loaded plugin of the
        server declares (renamed away or removed: ``name``, ``position``),
        by name. Takes the admin grant."""
        request = pb.ListProjectionsRequest(include_orphaned=True)
        response: pb.ListProjectionsResponse = await self._call(
            "list orphaned projections", self._stub.ListProjections, request, timeout
        )
        return builtins.list(response.orphaned)

    async def delete(
        self,
        name: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> int:
        """Delete the stored documents, parked events and checkpoint of
        projection ``name``, which no loaded plugin declares; how many
        documents and parked events went (0: nothing was left, so a retry
        is harmless). Takes the admin grant; ``FailedPrecondition``
        PROJECTION_LOADED while a loaded plugin declares it."""
        response: pb.DeleteProjectionResponse = await self._call(
            f"delete projection {name!r}", self._stub.DeleteProjection, pb.DeleteProjectionRequest(name=name), timeout
        )
        return response.deleted

    async def parked(
        self,
        projection: str,
        *,
        page_size: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> AsyncIterator[ParkedEvent]:
        """The events ``projection`` parked (its handler kept failing on
        them), in log order, following the pages to the last. ``page_size``
        and ``timeout`` as for ``documents``."""
        pages = self._pages(
            f"list the parked events of {projection!r}",
            self._stub.ListParkedEvents,
            lambda token: pb.ListParkedEventsRequest(projection=projection, page_size=page_size, page_token=token),
            timeout,
        )
        async for page in pages:
            for parked in page.events:
                yield parked

    async def skip(
        self,
        projection: str,
        position: int,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> ParkedEvent:
        """Park the event at ``position``, where ``projection`` is stopped (a
        handler keeps failing on it), and let the projection go on; the
        event as parked. A rebuild applies it again once the plugin is fixed.
        Takes the admin grant; ask the server that runs the projection
        (``get(projection).runner``): another is ``FailedPrecondition``
        PROJECTION_RUNS_ELSEWHERE (``metadata["runner"]``), a position the
        projection is not stopped at NOT_STOPPED_AT (``stopped_at``: where
        it is, "0" at no event). A retry after an answer lost once the server
        acted is NOT_STOPPED_AT: ``parked(projection)`` lists the event."""
        response: pb.SkipEventResponse = await self._call(
            f"skip the event at position {position} of {projection!r}",
            self._stub.SkipEvent,
            pb.SkipEventRequest(projection=projection, position=position),
            timeout,
        )
        return response.parked

    async def rebuild(
        self,
        name: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> int:
        """Clear projection ``name`` (documents, parked events, checkpoint)
        so that it applies the log again from the start; the log's head then,
        which ``get(name).position`` reaches when the rebuild is done. Takes
        the admin grant: ``PermissionDenied`` ADMIN_DENIED, or
        ANONYMOUS_ADMIN_DENIED for an anonymous caller of a server without
        ``--anonymous-admin``. A retry after an answer lost once the server
        acted starts the rebuild again."""
        response: pb.RebuildProjectionResponse = await self._call(
            f"rebuild projection {name!r}",
            self._stub.RebuildProjection,
            pb.RebuildProjectionRequest(name=name),
            timeout,
        )
        return response.log_head


__all__ = ["Document", "DocumentCount", "FoundDocuments", "ParkedEvent", "ProjectionStatus", "Projections"]
