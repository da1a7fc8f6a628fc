"""An in-process store: the reference implementation of the contract.

Used by plugin unit tests and ``memory://``. Everything lives in dicts and
vanishes with the process. Each method runs without awaiting, so on one event
loop every call is atomic.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Awaitable, Sequence

from service.errors import CommandAlreadyRecorded, ConcurrencyConflict, NotUnique
from service.store.base import DEFAULT_KEEP_SNAPSHOTS, AggregateQuery, AuditQuery, check_keep_snapshots
from service.store.leasing import Fencing
from service.store.notifier import CommitNotifier
from service.store.records import (
    HIDDEN_CLAIM_MARK,
    AggregateHead,
    AuditEntry,
    ClaimChange,
    CommandRecord,
    DataKey,
    DocumentRange,
    DocumentWrite,
    HeldClaim,
    LogFilter,
    LogPage,
    NewEvent,
    ParkedEvent,
    RecordedEvent,
    Snapshot,
    StoredDocument,
)
from service.store.selection import select_events
from service.store.sole_owner import SoleOwnerLeases


class MemoryStore(SoleOwnerLeases):
    def __init__(self, *, keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS) -> None:
        self._keep_snapshots = check_keep_snapshots(keep_snapshots)
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._log: list[RecordedEvent] = []
        self._event_ids: set[str] = set()
        self._commands: dict[str, CommandRecord] = {}
        self._claims: dict[tuple[str, str], str] = {}
        # Per aggregate, in version order.
        self._snapshots: dict[str, list[Snapshot]] = {}
        self._refusals: list[AuditEntry] = []
        self._keys: dict[str, DataKey] = {}
        self._commits = CommitNotifier()
        self._projection_positions: dict[str, int] = {}
        self._documents: dict[tuple[str, str], StoredDocument] = {}
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
        stream = self._streams.get(aggregate_id, [])
        if len(stream) != expected_version:
            raise ConcurrencyConflict(aggregate_id, expected_version, current=len(stream))
        if any(e.event_id in self._event_ids for e in events):
            raise ValueError("duplicate event id")
        claimed = self._claims_after(aggregate_id, claims)
        recorded = [
            RecordedEvent.committed(
                new,
                aggregate_id=aggregate_id,
                version=expected_version + offset,
                position=len(self._log) + offset,
            )
            for offset, new in enumerate(events, start=1)
        ]
        if recorded:
            self._streams.setdefault(aggregate_id, []).extend(recorded)
            self._log.extend(recorded)
            self._event_ids.update(e.event_id for e in recorded)
            self._commits.notify(recorded[-1].position)
        for command in commands:
            self._commands[command.command_id] = command
        for key, owner in claimed.items():
            if owner is None:
                del self._claims[key]
            else:
                self._claims[key] = owner
        return recorded

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
        # Positions are 1..n, the index + 1 of each event in the log.
        found: list[RecordedEvent] = []
        size = 0
        for event in self._log[max(after_position, 0) :]:
            if log_filter.matches(event):
                found.append(event)
                if max_bytes is not None:
                    size += event.stored_size()
                if len(found) == limit or (max_bytes is not None and size >= max_bytes):
                    return LogPage(tuple(found), event.position, more=True)
        return LogPage(tuple(found), max(len(self._log), after_position))

    async def log_head(self) -> int:
        return len(self._log)

    async def wait_for_commit(self, after_position: int, max_wait: float) -> None:
        await self._commits.wait_beyond(after_position, max_wait)

    async def projection_position(self, name: str) -> int:
        return self._projection_positions.get(name, 0)

    async def load_document(self, projection: str, key: str) -> StoredDocument | None:
        return self._documents.get((projection, key))

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
        for write in writes:
            if write.data is None:
                self._documents.pop((name, write.key), None)
            else:
                self._documents[(name, write.key)] = StoredDocument(write.key, write.type_name, write.data)
        for event in parked:
            self._parked[(name, event.position, event.event_id)] = event
        self._projection_positions[name] = new_position

    async def list_documents(self, projection: str, listing: DocumentRange) -> list[StoredDocument]:
        keys = sorted(
            (key for name, key in self._documents if name == projection and listing.matches(key)),
            reverse=listing.descending,
        )
        return [self._documents[(projection, key)] for key in keys[: listing.limit]]

    async def reset_projection(self, name: str) -> None:
        for key in [k for k in self._documents if k[0] == name]:
            del self._documents[key]
        for parked in [k for k in self._parked if k[0] == name]:
            del self._parked[parked]
        if name in self._projection_positions:
            self._projection_positions[name] = 0

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

    async def find_command(self, command_id: str) -> CommandRecord | None:
        return self._commands.get(command_id)

    async def head(self, aggregate_id: str) -> AggregateHead | None:
        stream = self._streams.get(aggregate_id)
        if not stream:
            return None
        return AggregateHead(stream[-1].aggregate_type, stream[-1].version)

    async def read_aggregate(self, aggregate_id: str, query: AggregateQuery = AggregateQuery()) -> list[RecordedEvent]:
        return select_events(self._streams.get(aggregate_id, []), query)

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
        kept = self._snapshots.setdefault(snapshot.aggregate_id, [])
        versions = [s.version for s in kept]
        at = bisect.bisect_left(versions, snapshot.version)
        if at < len(kept) and kept[at].version == snapshot.version:
            kept[at] = snapshot
        else:
            kept.insert(at, snapshot)
        del kept[: -self._keep_snapshots]

    async def load_snapshot(self, aggregate_id: str, *, at_most: int | None = None) -> Snapshot | None:
        kept = self._snapshots.get(aggregate_id, [])
        usable = [s for s in kept if at_most is None or s.version <= at_most]
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
        current = self._keys.get(aggregate_id)
        if current is None:
            return False
        self._keys[aggregate_id] = DataKey(aggregate_id, None, None)
        self._snapshots.pop(aggregate_id, None)
        self._claims = {key: owner for key, owner in self._claims.items() if owner != aggregate_id}
        return not current.forgotten

    async def data_keys_to_rewrap(self, active_master_key_id: str, limit: int) -> list[DataKey]:
        stale = (k for k in self._keys.values() if not k.forgotten and k.master_key_id != active_master_key_id)
        return [k for _, k in zip(range(limit), stale, strict=False)]

    async def rewrap_data_key(self, old: DataKey, new: DataKey) -> bool:
        if self._keys.get(old.aggregate_id) != old:
            return False
        self._keys[old.aggregate_id] = new
        return True
