"""An in-process store: the reference implementation of the contract.

Used by plugin unit tests and ``memory://``. Everything lives in dicts and
vanishes with the process. Each method runs without awaiting, so on one event
loop every call is atomic.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Awaitable, Sequence
from dataclasses import replace
from typing import TypeVar

from service.errors import CommandAlreadyRecorded, ConcurrencyConflict, NotUnique, SubjectsForgotten
from service.store.base import (
    DEFAULT_KEEP_SNAPSHOTS,
    AggregateQuery,
    AuditQuery,
    SnapshotKind,
    check_keep_snapshots,
)
from service.store.claim_scope_names import TENANT_SCOPE_MARK, declared_scope, tenant_scopes_range
from service.store.encryption import erased_record
from service.store.importing import check_snapshots, claim_conflict, data_key_conflict, events_to_write
from service.store.leasing import Fencing
from service.store.memory_groups import MemoryGroups
from service.store.notifier import CommitNotifier
from service.store.records import (
    HIDDEN_CLAIM_MARK,
    MAX_OTHER_SUBJECTS,
    PARKED_COMMAND_TYPE,
    REFUSED,
    AggregateHead,
    AggregateLastEvent,
    AggregateSummary,
    AuditEntry,
    ClaimChange,
    CommandRecord,
    DataKey,
    DocumentRange,
    DocumentWrite,
    Forgetting,
    HeldClaim,
    LogFilter,
    LogPage,
    NewEvent,
    OtherSubjects,
    ParkedEvent,
    RecordedEvent,
    Snapshot,
    StoredDocument,
    is_tombstone,
)
from service.store.selection import select_events
from service.store.sole_owner import SoleOwnerLeases

_OfAggregate = TypeVar("_OfAggregate", Snapshot, HeldClaim)


class MemoryStore(SoleOwnerLeases, MemoryGroups):
    def __init__(self, *, keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS) -> None:
        MemoryGroups.__init__(self)
        self._keep_snapshots = check_keep_snapshots(keep_snapshots)
        self._streams: dict[str, list[RecordedEvent]] = {}
        # In position order; positions have gaps where events were removed.
        self._log: list[RecordedEvent] = []
        self._last_position = 0
        self._event_ids: set[str] = set()
        self._commands: dict[str, CommandRecord] = {}
        self._claims: dict[tuple[str, str], str] = {}
        # Per aggregate, in version order.
        self._snapshots: dict[str, list[Snapshot]] = {}
        self._refusals: list[AuditEntry] = []
        self._keys: dict[str, DataKey] = {}
        # When each forgotten aggregate's key was erased (its tombstone's time).
        self._forgotten_at_us: dict[str, int] = {}
        self._commits = CommitNotifier()
        self._projection_positions: dict[str, int] = {}
        # The declaration's version each checkpoint's documents were built by
        # (a checkpoint without one here is 1, as the SQL stores' default).
        self._projection_versions: dict[str, int] = {}
        self._documents: dict[tuple[str, str], StoredDocument] = {}
        # The due times of the documents written with one (a reaction's
        # deadlines); an entry whose document is gone (forgotten, reset) is
        # ignored, and goes with the next write of its key.
        self._due: dict[tuple[str, str], int] = {}
        self._subjects: dict[tuple[str, str], tuple[str, ...]] = {}
        self._parked: dict[tuple[str, int, str], ParkedEvent] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    def append(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        commands: Sequence[CommandRecord] = (),
        claims: Sequence[ClaimChange] = (),
    ) -> Awaitable[list[RecordedEvent]]:
        # Decided at once: a completed future, not a coroutine (which would
        # cost the caller a task).
        appended: asyncio.Future[list[RecordedEvent]] = asyncio.get_running_loop().create_future()
        try:
            appended.set_result(self._append(aggregate_id, events, expected_version, commands, claims))
        except Exception as error:
            appended.set_exception(error)
        return appended

    def _append(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        commands: Sequence[CommandRecord],
        claims: Sequence[ClaimChange],
    ) -> list[RecordedEvent]:
        for command in commands:
            if command.command_id in self._commands:
                raise CommandAlreadyRecorded(self._commands[command.command_id])
        current = self._version(aggregate_id)
        if current != expected_version:
            raise ConcurrencyConflict(aggregate_id, expected_version, current=current)
        if any(e.event_id in self._event_ids for e in events):
            raise ValueError("duplicate event id")
        claimed = self._claims_after(aggregate_id, claims)
        recorded = [
            RecordedEvent.committed(
                new,
                aggregate_id=aggregate_id,
                version=expected_version + offset,
                position=self._last_position + offset,
            )
            for offset, new in enumerate(events, start=1)
        ]
        self._add(recorded)
        for command in commands:
            self._commands[command.command_id] = command
        for key, owner in claimed.items():
            if owner is None:
                del self._claims[key]
            else:
                self._claims[key] = owner
        return recorded

    def _version(self, aggregate_id: str) -> int:
        stream = self._streams.get(aggregate_id)
        return stream[-1].version if stream else 0

    def _add(self, recorded: Sequence[RecordedEvent]) -> None:
        """Events as committed, at the end of the log."""
        if not recorded:
            return
        for event in recorded:
            self._streams.setdefault(event.aggregate_id, []).append(event)
        self._log.extend(recorded)
        self._event_ids.update(e.event_id for e in recorded)
        self._last_position = recorded[-1].position
        self._commits.notify(recorded[-1].position)

    def _claims_after(self, aggregate_id: str, claims: Sequence[ClaimChange]) -> dict[tuple[str, str], str | None]:
        """The holders ``claims`` would leave (None: released), checked
        before anything changes so that a refused append writes nothing."""
        changed: dict[tuple[str, str], str | None] = {}
        for claim in claims:
            key = (claim.scope, claim.value)
            holder = changed[key] if key in changed else self._claims.get(key)
            if claim.release:
                if holder == aggregate_id:
                    changed[key] = None
            elif holder is None or holder == aggregate_id:
                changed[key] = aggregate_id
            else:
                raise NotUnique(claim.scope, claim.value)
        return {key: owner for key, owner in changed.items() if owner is not None or key in self._claims}

    async def read_log(
        self, after_position: int, log_filter: LogFilter, limit: int, *, max_bytes: int | None = None
    ) -> LogPage:
        # Positions rise but have gaps where an aggregate was deleted.
        found: list[RecordedEvent] = []
        size = 0
        start = bisect.bisect_right(self._log, after_position, key=lambda e: e.position)
        for event in self._log[start:]:
            if log_filter.matches(event):
                found.append(event)
                if max_bytes is not None:
                    size += event.stored_size()
                if len(found) == limit or (max_bytes is not None and size >= max_bytes):
                    return self._page(found, event.position, after_position, more=True)
        return self._page(found, max(self._last_position, after_position), after_position)

    def _page(self, found: list[RecordedEvent], scanned_to: int, after_position: int, *, more: bool = False) -> LogPage:
        """A page with the log's end and the ids of the events at the end and
        at ``after_position`` (as the SQL stores read them: records.LogPage)."""
        end = self._last_position
        after = (after_position, self._id_at(after_position))
        return LogPage(tuple(found), scanned_to, more=more, head=end, head_id=self._id_at(end), after=after)

    def _id_at(self, position: int) -> str:
        at = bisect.bisect_left(self._log, position, key=lambda e: e.position)
        return self._log[at].event_id if at < len(self._log) and self._log[at].position == position else ""

    async def log_head(self) -> int:
        return self._last_position

    def _log_end(self) -> int:
        return self._last_position

    async def stored_event_kinds(self) -> list[tuple[str, str, int]]:
        return sorted({(e.aggregate_type, e.event_type, e.schema_version) for e in self._log})

    async def wait_for_commit(self, after_position: int, max_wait: float) -> None:
        await self._commits.wait_beyond(after_position, max_wait)

    async def projection_position(self, name: str) -> int:
        return self._projection_positions.get(name, 0)

    async def start_projection(self, name: str, position: int) -> int | None:
        had = self._projection_positions.get(name)
        if had is None:
            self._projection_positions[name] = position
        return had

    async def projection_version(self, name: str) -> int | None:
        if name not in self._projection_positions:
            return None
        return self._projection_versions.get(name, 1)

    async def start_projection_version(self, name: str, version: int) -> int:
        if name not in self._projection_positions:
            self._projection_positions[name] = 0
            self._projection_versions[name] = version
        return self._projection_versions.get(name, 1)

    async def load_document(self, projection: str, key: str) -> StoredDocument | None:
        return self._documents.get((projection, key))

    async def load_documents(self, projection: str, keys: Sequence[str]) -> list[StoredDocument]:
        found = (self._documents.get((projection, key)) for key in dict.fromkeys(keys))
        return [document for document in found if document is not None]

    async def commit_projection(
        self,
        name: str,
        *,
        expected_position: int,
        new_position: int,
        writes: Sequence[DocumentWrite],
        fencing: Fencing | None = None,
        parked: Sequence[ParkedEvent] = (),
    ) -> None:
        current = self._projection_positions.get(name, 0)
        if current != expected_position:
            raise ConcurrencyConflict(f"projection:{name}", expected_position, current=current)
        forgotten = {
            subject
            for write in writes
            if write.data is not None
            for subject in write.subjects
            if (key := self._keys.get(subject)) is not None and key.forgotten
        }
        if forgotten:
            raise SubjectsForgotten(forgotten)
        for write in writes:
            self._subjects.pop((name, write.key), None)
            if write.data is not None and write.due_us is not None:
                self._due[(name, write.key)] = write.due_us
            else:
                self._due.pop((name, write.key), None)
            if write.data is None:
                self._documents.pop((name, write.key), None)
            else:
                self._documents[(name, write.key)] = StoredDocument(write.key, write.type_name, write.data)
                if write.subjects:
                    self._subjects[(name, write.key)] = write.subjects
        for event in parked:
            self._parked[(name, event.position, event.event_id)] = event
        self._projection_positions[name] = new_position

    async def list_documents(self, projection: str, listing: DocumentRange) -> list[StoredDocument]:
        keys = sorted(
            (key for name, key in self._documents if name == projection and listing.matches(key)),
            reverse=listing.descending,
        )
        return [self._documents[(projection, key)] for key in keys[: listing.limit]]

    async def count_documents(self, projection: str, prefix: str, *, limit: int) -> int:
        listing = DocumentRange(prefix=prefix)
        return min(limit, sum(1 for name, key in self._documents if name == projection and listing.matches(key)))

    async def reset_projection(self, name: str, version: int | None = None) -> None:
        for key in [k for k in self._documents if k[0] == name]:
            del self._documents[key]
            self._subjects.pop(key, None)
        for parked in [k for k in self._parked if k[0] == name]:
            del self._parked[parked]
        if name in self._projection_positions:
            self._projection_positions[name] = 0
            if version is not None:
                self._projection_versions[name] = version

    async def stored_projections(self) -> list[tuple[str, int]]:
        names = {*self._projection_positions, *(name for name, _ in self._documents), *(k[0] for k in self._parked)}
        return [(name, self._projection_positions.get(name, 0)) for name in sorted(names)]

    async def delete_projection(self, name: str, *, limit: int) -> int:
        self._projection_positions.pop(name, None)
        self._projection_versions.pop(name, None)
        documents = [k for k in self._documents if k[0] == name][:limit]
        for key in documents:
            del self._documents[key]
            self._subjects.pop(key, None)
        parked = [k for k in self._parked if k[0] == name][:limit]
        for event in parked:
            del self._parked[event]
        return len(documents) + len(parked)

    async def parked_events(
        self, projection: str, *, after: tuple[int, str] | None = None, limit: int = 100
    ) -> list[ParkedEvent]:
        found = sorted(
            (position, event_id)
            for name, position, event_id in self._parked
            if name == projection and (after is None or (position, event_id) > after)
        )
        return [self._parked[(projection, *key)] for key in found[:limit]]

    async def count_parked_events(self, projection: str) -> int:
        return sum(1 for key in self._parked if key[0] == projection)

    async def count_parked_commands(self, reaction: str) -> int:
        return sum(
            1
            for (projection, _), document in self._documents.items()
            if projection == reaction and document.type_name == PARKED_COMMAND_TYPE
        )

    async def due_documents(self, projection: str, *, until_us: int, limit: int) -> list[StoredDocument]:
        due = sorted(
            (due_us, key)
            for (name, key), due_us in self._due.items()
            if name == projection and due_us <= until_us and (name, key) in self._documents
        )
        return [self._documents[(projection, key)] for _, key in due[:limit]]

    async def due_summary(self, projection: str) -> tuple[int, int | None]:
        due = [
            due_us for (name, key), due_us in self._due.items() if name == projection and (name, key) in self._documents
        ]
        return len(due), min(due, default=None)

    async def find_command(self, command_id: str) -> CommandRecord | None:
        return self._commands.get(command_id)

    async def head(self, aggregate_id: str) -> AggregateHead | None:
        stream = self._streams.get(aggregate_id)
        if not stream:
            return None
        return AggregateHead(stream[-1].aggregate_type, stream[-1].version, is_tombstone(stream[-1]))

    async def read_aggregate(self, aggregate_id: str, query: AggregateQuery = AggregateQuery()) -> list[RecordedEvent]:
        return select_events(self._streams.get(aggregate_id, []), query)

    async def list_aggregates(
        self, prefix: str, *, after: str = "", limit: int, aggregate_type: str | None = None
    ) -> list[AggregateSummary]:
        ids = sorted(
            i
            for i, stream in self._streams.items()
            if stream
            and i.startswith(prefix)
            and i > after
            and (aggregate_type is None or stream[-1].aggregate_type == aggregate_type)
        )
        return [self._summary(i) for i in ids[:limit]]

    def _summary(self, aggregate_id: str) -> AggregateSummary:
        last = self._streams[aggregate_id][-1]
        key = self._keys.get(aggregate_id)
        return AggregateSummary(
            aggregate_id,
            last.aggregate_type,
            last.version,
            deleted=is_tombstone(last),
            keyed=key is not None,
            forgotten=key is not None and key.forgotten,
        )

    async def version_at(self, aggregate_id: str, timestamp_us: int) -> int:
        version = 0
        for event in self._streams.get(aggregate_id, []):
            if event.timestamp_us > timestamp_us:
                break
            version = event.version
        return version

    async def claim_owner(self, scope: str, value: str) -> str | None:
        return self._claims.get((scope, value))

    async def claims_in_clear(self, limit: int) -> list[HeldClaim]:
        clear = (
            HeldClaim(scope, value, owner)
            for (scope, value), owner in self._claims.items()
            if not value.startswith(HIDDEN_CLAIM_MARK)
        )
        return [claim for _, claim in zip(range(limit), clear, strict=False)]

    async def hide_claim(self, claim: HeldClaim, hidden_value: str) -> bool:
        if self._claims.get((claim.scope, claim.value)) != claim.aggregate_id:
            return False
        del self._claims[(claim.scope, claim.value)]
        holder = self._claims.setdefault((claim.scope, hidden_value), claim.aggregate_id)
        return holder == claim.aggregate_id

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        stream = self._streams.get(snapshot.aggregate_id)
        if stream and is_tombstone(stream[-1]):
            return  # saved in the background after a deletion: the state is gone
        if snapshot.through_event_id is not None and not any(
            e.version == snapshot.version and e.event_id == snapshot.through_event_id for e in reversed(stream or ())
        ):
            return  # built through an event that is no longer there (an import replaced the history)
        snapshot = replace(snapshot, through_event_id=None)  # what it was built through is not kept
        kept = self._snapshots.setdefault(snapshot.aggregate_id, [])
        versions = [s.version for s in kept]
        at = bisect.bisect_left(versions, snapshot.version)
        if at < len(kept) and kept[at].version == snapshot.version:
            kept[at] = snapshot
        else:
            kept.insert(at, snapshot)
        del kept[: -self._keep_snapshots]

    async def load_snapshot(
        self, aggregate_id: str, *, at_most: int | None = None, kind: SnapshotKind | None = None
    ) -> Snapshot | None:
        kept = self._snapshots.get(aggregate_id, [])
        usable = [s for s in kept if (at_most is None or s.version <= at_most) and (kind is None or kind.usable(s))]
        return usable[-1] if usable else None

    async def record_audit_entry(self, entry: AuditEntry) -> None:
        self._refusals.append(entry)

    async def read_audit(self, query: AuditQuery) -> list[AuditEntry]:
        entries = [c.audit_entry() for c in self._commands.values()] + self._refusals
        chosen = [e for e in entries if query.matches(e)]
        chosen.sort(key=lambda e: e.recorded_at_us, reverse=True)
        return chosen[: query.limit]

    async def create_data_key(self, key: DataKey) -> DataKey:
        return self._keys.setdefault(key.aggregate_id, key)

    async def load_data_key(self, aggregate_id: str) -> DataKey | None:
        return self._keys.get(aggregate_id)

    async def forget_data_key(self, aggregate_id: str) -> bool:
        return (await self.forget_aggregate_data(aggregate_id)).erased

    async def forget_aggregate_data(self, aggregate_id: str) -> Forgetting:
        return self._forget_now(aggregate_id)

    def _forget_now(self, aggregate_id: str) -> Forgetting:
        current = self._keys.get(aggregate_id)
        if current is None:
            return Forgetting(False)
        deleted: dict[tuple[str, str], int] = {}
        named = self._other_subjects_of(aggregate_id)
        self._keys[aggregate_id] = DataKey(aggregate_id, None, None)
        self._forgotten_at_us.setdefault(aggregate_id, time.time_ns() // 1000)  # the first forget's
        self._snapshots.pop(aggregate_id, None)
        self._claims = {key: owner for key, owner in self._claims.items() if owner != aggregate_id}
        for document in [d for d, subjects in self._subjects.items() if aggregate_id in subjects]:
            del self._subjects[document]
            gone = self._documents.pop(document, None)
            if gone is not None:
                counted = (document[0], gone.type_name)
                deleted[counted] = deleted.get(counted, 0) + 1
        for parked in [key for key, event in self._parked.items() if event.aggregate_id == aggregate_id]:
            del self._parked[parked]
        self._unpark_aggregate(aggregate_id)  # a group's parked event keeps its nack's reason
        for command_id, record in self._commands.items():
            if record.aggregate_id == aggregate_id:
                self._commands[command_id] = erased_record(record)
        self._refusals = [
            replace(e, message="") if e.aggregate_id == aggregate_id and e.message else e for e in self._refusals
        ]
        return Forgetting(not current.forgotten, deleted, named, self._forgotten_at_us[aggregate_id])

    async def forget_aggregates_data(
        self, aggregate_ids: Sequence[str], *, audit: AuditEntry | None = None
    ) -> list[Forgetting]:
        # No await between them: one transaction, as far as anyone can see.
        forgettings = [self._forget_now(aggregate_id) for aggregate_id in aggregate_ids]
        if audit is not None and any(forgetting.erased for forgetting in forgettings):
            self._refusals.append(audit)
        return forgettings

    async def live_keys(self, prefix: str, *, after: str = "", limit: int) -> list[str]:
        return sorted(i for i, key in self._keys.items() if not key.forgotten and i.startswith(prefix) and i > after)[
            :limit
        ]

    async def count_live_keys(self, prefix: str) -> int:
        return sum(1 for i, key in self._keys.items() if not key.forgotten and i.startswith(prefix))

    def _other_subjects_of(self, aggregate_id: str) -> dict[str, OtherSubjects]:
        """By projection or reaction, the aggregates other than
        ``aggregate_id`` that its documents naming ``aggregate_id`` name, parked
        commands left out (as the SQL stores' OTHER_SUBJECTS_OF_FORGOTTEN)."""
        named: dict[str, set[str]] = {}
        for document, subjects in self._subjects.items():
            stored = self._documents.get(document)
            if aggregate_id in subjects and stored is not None and stored.type_name != PARKED_COMMAND_TYPE:
                named.setdefault(document[0], set()).update(set(subjects) - {aggregate_id})
        return {
            name: OtherSubjects(tuple(sorted(others)[:MAX_OTHER_SUBJECTS]), len(others))
            for name, others in sorted(named.items())
            if others
        }

    async def data_keys_to_rewrap(self, active_master_key_id: str, limit: int, *, after: str = "") -> list[DataKey]:
        stale = (
            self._keys[i]
            for i in sorted(i for i in self._keys if i > after)
            if not self._keys[i].forgotten and self._keys[i].master_key_id != active_master_key_id
        )
        return [k for _, k in zip(range(limit), stale, strict=False)]

    async def rewrap_data_keys(self, rewraps: Sequence[tuple[DataKey, DataKey]]) -> int:
        unchanged = [(old, new) for old, new in rewraps if self._keys.get(old.aggregate_id) == old]
        for old, new in unchanged:
            self._keys[old.aggregate_id] = new
        return len(unchanged)

    # -- Transfer ------------------------------------------------------------

    async def data_keys_page(self, after: str, limit: int) -> list[DataKey]:
        return [self._keys[k] for k in sorted(k for k in self._keys if k > after)[:limit]]

    async def snapshots_page(
        self, after: tuple[str, int], limit: int, *, aggregate_id: str | None = None
    ) -> list[Snapshot]:
        chosen = sorted(
            (s for kept in self._snapshots.values() for s in kept if aggregate_id in (None, s.aggregate_id)),
            key=lambda s: (s.aggregate_id, s.version),
        )
        return [s for s in chosen if (s.aggregate_id, s.version) > after][:limit]

    async def claims_page(
        self, after: tuple[str, str], limit: int, *, aggregate_id: str | None = None
    ) -> list[HeldClaim]:
        chosen = sorted(key for key, owner in self._claims.items() if key > after and aggregate_id in (None, owner))
        return [HeldClaim(scope, value, self._claims[(scope, value)]) for scope, value in chosen[:limit]]

    async def holds_tenant_claims(self, scope: str) -> bool:
        """``base.TenantClaimsProbe``."""
        low, high = tenant_scopes_range(scope)
        return any(low <= stored < high for stored, _ in self._claims)

    async def tenant_claim_scopes(self) -> list[str]:
        """``base.TenantClaimsProbe``."""
        return sorted({declared_scope(stored) for stored, _ in self._claims if TENANT_SCOPE_MARK in stored})

    async def commands_page(self, after: str, limit: int) -> list[CommandRecord]:
        return [self._commands[c] for c in sorted(c for c in self._commands if c > after)[:limit]]

    async def import_events(self, events: Sequence[RecordedEvent], *, replacing: Sequence[str] = ()) -> int:
        gone = set(replacing)

        def place(event_id: str) -> tuple[str, int] | None:
            found = self._place(event_id)
            return None if found is None or found[0] in gone else found

        def head(aggregate_id: str) -> tuple[int, str] | None:
            return None if aggregate_id in gone else self._head(aggregate_id)

        # Checked as if the aggregates of ``replacing`` were removed, before any is: a refusal removes nothing.
        fresh = events_to_write(events, stored_at=place, head=head)
        for aggregate_id in replacing:
            await self.remove_aggregate(aggregate_id)
        self._add([replace(e, position=self._last_position + offset) for offset, e in enumerate(fresh, start=1)])
        return len(fresh)

    def _place(self, event_id: str) -> tuple[str, int] | None:
        if event_id not in self._event_ids:
            return None
        return next((e.aggregate_id, e.version) for e in self._log if e.event_id == event_id)

    def _head(self, aggregate_id: str) -> tuple[int, str] | None:
        stream = self._streams.get(aggregate_id)
        return (stream[-1].version, stream[-1].aggregate_type) if stream else None

    async def forgotten_aggregates(self, aggregate_ids: Sequence[str]) -> set[str]:
        return {a for a in aggregate_ids if (key := self._keys.get(a)) is not None and key.forgotten}

    def _of_live(self, records: Sequence[_OfAggregate]) -> list[_OfAggregate]:
        """``records`` but those of forgotten aggregates."""
        forgotten = {a for a, key in self._keys.items() if key.forgotten}
        return [r for r in records if r.aggregate_id not in forgotten]

    async def import_snapshots(self, snapshots: Sequence[Snapshot]) -> int:
        snapshots = self._of_live(snapshots)
        check_snapshots(snapshots, head=self._head)  # all of them before writing any
        written = 0
        for snapshot in snapshots:
            kept = self._snapshots.setdefault(snapshot.aggregate_id, [])
            if all(s.version != snapshot.version for s in kept):
                bisect.insort(kept, snapshot, key=lambda s: s.version)
                written += 1
        return written

    async def import_claims(self, claims: Sequence[HeldClaim], *, released: Sequence[HeldClaim] = ()) -> int:
        claims = self._of_live(claims)
        # Released first, as the other stores do: a value one aggregate gives
        # up may be taken by another in the same call.
        gone = {(c.scope, c.value) for c in released if self._claims.get((c.scope, c.value)) == c.aggregate_id}
        for claim in claims:
            holder = None if (claim.scope, claim.value) in gone else self._claims.get((claim.scope, claim.value))
            if holder is not None and holder != claim.aggregate_id:
                raise claim_conflict(claim.scope, claim.aggregate_id, holder)
        for key in gone:
            del self._claims[key]
        taken = [c for c in claims if (c.scope, c.value) not in self._claims]
        for claim in taken:
            self._claims[(claim.scope, claim.value)] = claim.aggregate_id
        return len(taken)

    async def import_commands(self, commands: Sequence[CommandRecord]) -> int:
        fresh = {c.command_id: c for c in commands if c.command_id not in self._commands}
        self._commands.update(fresh)
        return len(fresh)

    async def import_data_keys(self, keys: Sequence[DataKey]) -> int:
        for key in keys:
            held = self._keys.get(key.aggregate_id)
            if held is not None and not held.forgotten and not key.forgotten and held != key:
                raise data_key_conflict(key.aggregate_id)
        written = 0
        for key in keys:
            held = self._keys.get(key.aggregate_id)
            if held is None:
                self._keys[key.aggregate_id] = key
                if key.forgotten:
                    self._forgotten_at_us[key.aggregate_id] = time.time_ns() // 1000
                written += 1
            elif key.forgotten and not held.forgotten:
                await self.forget_data_key(key.aggregate_id)
                written += 1
        return written

    async def remove_aggregate(self, aggregate_id: str) -> int:
        removed = self._streams.pop(aggregate_id, [])
        gone = {e.event_id for e in removed}
        self._log = [e for e in self._log if e.event_id not in gone]
        self._event_ids -= gone
        self._snapshots.pop(aggregate_id, None)
        self._claims = {key: owner for key, owner in self._claims.items() if owner != aggregate_id}
        # What projections and groups parked of its events, which are gone.
        for parked in [key for key, event in self._parked.items() if event.aggregate_id == aggregate_id]:
            del self._parked[parked]
        self._unpark_aggregate(aggregate_id)
        return len(removed)

    async def delete_aggregate(
        self, aggregate_id: str, tombstone: NewEvent, *, expected_version: int | None = None
    ) -> RecordedEvent | None:
        stream = self._streams.get(aggregate_id)
        if not stream:
            return None
        last = stream[-1]
        if is_tombstone(last):
            return last
        if expected_version is not None and last.version != expected_version:
            raise ConcurrencyConflict(aggregate_id, expected_version, current=last.version)
        await self.remove_aggregate(aggregate_id)
        recorded = RecordedEvent.committed(
            replace(tombstone, aggregate_type=last.aggregate_type),
            aggregate_id=aggregate_id,
            version=last.version + 1,
            position=self._last_position + 1,
        )
        self._add([recorded])
        return recorded

    async def aggregates_page(self, after: str, limit: int) -> list[AggregateLastEvent]:
        chosen = sorted(a for a, stream in self._streams.items() if a > after and stream)[:limit]
        return [_summary(self._streams[a][-1]) for a in chosen]

    # -- Retention -------------------------------------------------------------

    async def prune_commands(self, recorded_before_us: int, limit: int) -> int:
        old = sorted(
            (c for c in self._commands.values() if c.recorded_at_us < recorded_before_us),
            key=lambda c: c.recorded_at_us,
        )[:limit]
        for command in old:
            del self._commands[command.command_id]
        return len(old)

    async def prune_refusals(self, recorded_before_us: int, limit: int) -> int:
        old = sorted(
            (
                i
                for i, e in enumerate(self._refusals)
                if (e.outcome == REFUSED or e.dry_run) and e.recorded_at_us < recorded_before_us
            ),
            key=lambda i: self._refusals[i].recorded_at_us,
        )[:limit]
        gone = set(old)
        self._refusals = [e for i, e in enumerate(self._refusals) if i not in gone]
        return len(gone)


def _summary(last: RecordedEvent) -> AggregateLastEvent:
    return AggregateLastEvent(last.aggregate_id, last.aggregate_type, last.version, last.event_type, last.timestamp_us)
