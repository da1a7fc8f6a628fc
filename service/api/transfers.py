"""The store's contents over gRPC: ``AdminService.ExportLog`` streams an
export, ``AdminService.ImportLog`` writes one (service/transfer/), on the
store below encryption at rest. ``AdminService`` checks the grant and
audits; this module turns requests into exports and imports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from chronicle.v1 import admin_service_pb2 as pb
from chronicle.v1 import export_pb2
from service.api.codec import check_id, check_names, micros_of
from service.errors import EventTooLargeToSend, InvalidInput, quoted
from service.plugins.registry import Registry
from service.store.base import Store
from service.store.encryption import Keyring
from service.store.records import DEFAULT_MAX_EVENT_BYTES, LogFilter
from service.transfer.checked_first import CheckedFirst
from service.transfer.claims import LoadState
from service.transfer.deleting import Deletion, delete_aggregate
from service.transfer.exporter import ArchiveRule, Exporter, ExportSelection
from service.transfer.importer import Importer, ImportOptions, ImportSummary
from service.transfer.read_models import DEFAULT_READ_MODELS_WAIT, MAX_READ_MODELS_WAIT
from service.transfer.sealing import ImportSealing, WithoutKeys

MAX_EXPORTED_AGGREGATES = 1000


@dataclass(frozen=True, slots=True)
class Transfers:
    """``store``: the adapter's own roles (what is stored, not what the
    encrypting wrapper shows); ``kind``: the store's kind for export
    headers; ``evict``: forget this server's cached state of an aggregate
    an import replaced; ``registry``: the loaded plugins, whose state types
    an imported snapshot must parse as; ``sealing``: a new ``ImportSealing``
    for each import (the server's encryption at rest)."""

    store: Store
    kind: str
    evict: Callable[[str], None] = lambda aggregate_id: None
    registry: Registry | None = None
    # How each import treats the server's encryption at rest (transfer/sealing.py).
    sealing: Callable[[], ImportSealing] = WithoutKeys
    # The server's data keys (encryption at rest), which seal a deletion's tombstone.
    keyring: Keyring | None = None
    # How an import loads an aggregate's state, to derive the claims of one that came without any.
    load_state: LoadState | None = None
    # The server's --max-event-bytes: no imported event may be larger than a command's.
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    # The server's --max-message-bytes: an export record larger is refused by name, not sent.
    max_message_bytes: int = 4 * 1024 * 1024

    async def selection(self, request: pb.ExportLogRequest) -> ExportSelection:
        if len(request.aggregate_ids) > MAX_EXPORTED_AGGREGATES:
            raise InvalidInput.for_field(
                "aggregate_ids", f"at most {MAX_EXPORTED_AGGREGATES} aggregates", reason="TOO_MANY_AGGREGATES"
            )
        chosen = check_names("aggregate_ids", request.aggregate_ids, reason="INVALID_AGGREGATE_ID")
        rule = _rule(request.rule) if request.HasField("rule") else None
        if rule is not None and not await self._known_type(rule.aggregate_type):
            # A typo would otherwise archive nothing and say nothing wrong.
            raise InvalidInput.for_field(
                "rule.aggregate_type",
                f"no loaded plugin declares aggregate type {quoted(rule.aggregate_type)}, and the store holds none",
                reason="UNKNOWN_AGGREGATE_TYPE",
            )
        if (chosen or rule) and request.include_commands:
            raise InvalidInput.for_field(
                "include_commands", "command records are exported for a whole store only", reason="INVALID_SELECTION"
            )
        return ExportSelection(
            snapshots=request.include_snapshots,
            commands=request.include_commands,
            aggregate_ids=tuple(dict.fromkeys(chosen)),
            rule=rule,
        )

    async def _known_type(self, aggregate_type: str) -> bool:
        """Whether a loaded plugin declares ``aggregate_type`` or the store
        holds an event of it: a retired type, whose plugin is gone, is
        what archiving is for. One row of the type's index at most."""
        if self.registry is None or self.registry.aggregate(aggregate_type) is not None:
            return True
        page = await self.store.log.read_log(0, LogFilter(aggregate_types=frozenset({aggregate_type})), 1)
        return bool(page.events)

    async def delete(
        self, aggregate_id: str, *, expected_version: int | None, principal: str, reason: str, archive: str
    ) -> Deletion:
        deletion = await delete_aggregate(
            self.store,
            aggregate_id,
            expected_version=expected_version,
            principal=principal,
            reason=reason,
            archive=archive,
            keyring=self.keyring,
        )
        self.evict(aggregate_id)  # its worker's state is of events that are gone
        return deletion

    async def export(self, selection: ExportSelection) -> AsyncIterator[export_pb2.ExportRecord]:
        async for record in Exporter(self.store, source=self.kind).records(selection):
            if record.HasField("event") and record.ByteSize() > self.max_message_bytes - _MESSAGE_SLACK:
                raise _too_large_to_export(record)
            yield record

    async def import_(self, requests: AsyncIterator[pb.ImportLogRequest]) -> tuple[pb.ImportLogResponse, ImportSummary]:
        importer: Importer | CheckedFirst | None = None
        try:
            async for request in requests:
                if importer is None:
                    importer = self._importer(request.options)
                if request.HasField("record"):
                    await importer.add(request.record)
            if importer is None:
                raise InvalidInput("the stream is empty: an export begins with its header", reason="NOT_AN_EXPORT")
            await importer.finish()
        finally:
            if isinstance(importer, CheckedFirst):
                importer.close()  # the stream it kept, if the caller went away before its end
        return response(importer.summary), importer.summary

    def _importer(self, requested: pb.ImportOptions) -> Importer | CheckedFirst:
        options = ImportOptions(
            overwrite=requested.overwrite,
            restore_deleted=requested.restore_deleted,
            even_if_read_models_behind=requested.even_if_read_models_behind,
            read_models_wait=_read_models_wait(requested.read_models_wait_ms),
            derive_per_tenant_claims=requested.derive_per_tenant_claims,
        )

        def make(checking_only: bool) -> Importer:
            return Importer(
                self.store,
                options=options,
                on_replaced=self.evict,
                registry=self.registry,
                sealing=self.sealing(),
                load_state=self.load_state,
                checking_only=checking_only,
                max_event_bytes=self.max_event_bytes,
            )

        # Replacing aggregates: nothing is written before the whole stream is read and checked.
        return CheckedFirst(make) if options.overwrite else make(False)


def _read_models_wait(ms: int) -> float:
    """ImportOptions.read_models_wait_ms in seconds (0: the default)."""
    if not ms:
        return DEFAULT_READ_MODELS_WAIT
    if ms > MAX_READ_MODELS_WAIT * 1000:
        raise InvalidInput.for_field(
            "options.read_models_wait_ms", f"must be at most {MAX_READ_MODELS_WAIT * 1000:g}", reason="WAIT_TOO_LONG"
        )
    return ms / 1000


# What gRPC's framing of a message may add to the record it carries.
_MESSAGE_SLACK = 1024


def _too_large_to_export(record: export_pb2.ExportRecord) -> EventTooLargeToSend:
    """An event stored under a larger limit (or imported before imports
    held events to --max-event-bytes) whose record no message of this
    server can carry: said by name rather than gRPC's "Sent message larger
    than max" (processing/sendable.py)."""
    event = record.event.event
    return EventTooLargeToSend(
        f"event {event.event_id} (aggregate {event.aggregate_id!r}, version {event.version}, position"
        f" {event.position}) is an export record of {record.ByteSize()} bytes, more than this server sends in a"
        " message (--max-message-bytes): export the store with `chronicle export --database-url`, which reads it"
        " directly, or through a server with a larger --max-message-bytes",
        metadata={
            "event_id": event.event_id,
            "aggregate_id": event.aggregate_id,
            "position": str(event.position),
            "size": str(record.ByteSize()),
        },
    )


def _rule(rule: pb.ArchiveRule) -> ArchiveRule:
    if rule.limit > MAX_EXPORTED_AGGREGATES:
        raise InvalidInput.for_field(
            "rule.limit", f"must be at most {MAX_EXPORTED_AGGREGATES}", reason="LIMIT_TOO_LARGE"
        )
    return ArchiveRule(
        aggregate_type=check_id("rule.aggregate_type", rule.aggregate_type, reason="INVALID_RULE"),
        last_event_types=frozenset(check_names("rule.last_event_types", rule.last_event_types, reason="INVALID_RULE")),
        untouched_since_us=micros_of(rule.untouched_since, "rule.untouched_since")
        if rule.HasField("untouched_since")
        else None,
        limit=rule.limit or 100,
    )


def response(summary: ImportSummary) -> pb.ImportLogResponse:
    return pb.ImportLogResponse(
        records=summary.records,
        events_written=summary.written["event"],
        events_skipped=summary.events_skipped,
        snapshots_written=summary.written["snapshot"],
        claims_written=summary.written["claim"],
        commands_written=summary.written["command"],
        data_keys_written=summary.written["data_key"],
        aggregates_replaced=summary.aggregates_replaced,
        forgotten_skipped=summary.forgotten_skipped,
        claims_derived=summary.claims_derived,
        aggregates_without_claims=summary.aggregates_without_claims,
        claims_released=summary.claims_released,
        projections_to_rebuild=sorted(summary.projections_to_rebuild),
        read_model_keys_skipped=summary.read_model_keys_skipped,
        global_claims_left_out=summary.global_claims_left_out,
        commands_past_events_left_out=summary.commands_past_events_left_out,
    )


def described(summary: ImportSummary) -> str:
    """An import's outcome in a line, for the audit log."""
    written = ", ".join(f"{n} {kind}" for kind, n in sorted(summary.written.items()) if n) or "nothing"
    return (
        f"{summary.records} records read; written: {written}; {summary.events_skipped} events already there;"
        f" {summary.aggregates_replaced} aggregates replaced"
        + (
            f"; {summary.forgotten_skipped} records of forgotten aggregates left out"
            if summary.forgotten_skipped
            else ""
        )
        + (
            f"; {summary.read_model_keys_skipped} read models' data keys passed over"
            if summary.read_model_keys_skipped
            else ""
        )
        + (
            f"; {summary.global_claims_left_out} global claims of per-tenant scopes left out"
            if summary.global_claims_left_out
            else ""
        )
        + (
            f"; {summary.commands_past_events_left_out} command records past their aggregates' events left out"
            if summary.commands_past_events_left_out
            else ""
        )
        + (f"; {summary.claims_derived} claims derived" if summary.claims_derived else "")
        + (f"; {summary.claims_released} claims released" if summary.claims_released else "")
        + (
            f"; {summary.aggregates_without_claims} aggregates of claiming types left without claims"
            if summary.aggregates_without_claims
            else ""
        )
        + (
            "; projections to rebuild (they applied events this import replaced, or were behind a tombstone it"
            " replaced): "
            + ", ".join(f"{name} (at {position})" for name, position in sorted(summary.projections_to_rebuild.items()))
            if summary.projections_to_rebuild
            else ""
        )
    )
