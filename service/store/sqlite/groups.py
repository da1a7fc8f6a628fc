"""``GroupStore`` on SQLite: settings, segment checkpoints and parked
events in the file; the consumers hold segments by the store's own leases
(``leases.py``, in the file too), so the consumers of one group may be
connected to different server processes on the file."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import cast

from service.errors import ConcurrencyConflict
from service.store.base import LeaseStore
from service.store.grouping import (
    ConsumerReport,
    GroupParkedEvent,
    GroupSpec,
    GroupState,
    SegmentCheckpoint,
    SettledEvent,
    consumer_group,
    consumers_of,
    updatable_params,
)
from service.store.leasing import Fencing, LeaseMember, LeaseView
from service.store.memory_groups import group_exists
from service.store.sql_common import group_params, group_spec_from_row, parked_from_row, parked_page
from service.store.sqlite import sql
from service.store.sqlite.leases import micros, now_us, renewed, still_held
from service.store.sqlite.writer import Writer, reading, writing

REPORTS_KEPT_US = 3600 * 1_000_000  # a consumer's report is forgotten an hour after it was written


class GroupsRole:
    _writer: Writer
    _lease_writer: Writer  # SqliteStore's LeasesRole's

    @property
    def consumer_leases(self) -> LeaseStore:
        return cast(LeaseStore, self)  # SqliteStore's LeasesRole: the leases every process on the file sees

    async def create_group(self, spec: GroupSpec) -> None:
        if not await self._writer.run(_create, spec.incarnated()):
            raise group_exists(spec.name)

    async def delete_group(self, name: str) -> bool:
        return await self._writer.run(_delete, name)

    async def update_group(self, spec: GroupSpec) -> bool:
        return await self._writer.run(_update, spec)

    async def load_group(self, name: str) -> GroupState | None:
        return await self._writer.run(_load, name)

    async def list_groups(self) -> list[GroupState]:
        return await self._writer.run(_load_all)

    async def report_consumer(self, name: str, member_id: str, report: ConsumerReport) -> None:
        await self._writer.run(_report, name, member_id, report)

    async def renew_consumer(
        self, name: str, member: LeaseMember, names: Sequence[str], ttl: float, report: ConsumerReport
    ) -> LeaseView:
        # On the leases' connection: a heartbeat does not wait behind appends (store.py).
        return await self._lease_writer.run(_renew_consumer, name, member, tuple(names), micros(ttl), report)

    async def commit_segment(
        self,
        name: str,
        segment: int,
        *,
        expected_position: int,
        new_position: int,
        acknowledged: int,
        skipped: int = 0,
        parked: Sequence[GroupParkedEvent] = (),
        fencing: Fencing | None = None,
        settled_ahead: Sequence[SettledEvent] | None = None,
    ) -> None:
        moved = await self._writer.run(
            _commit,
            name,
            segment,
            (expected_position, new_position),
            (acknowledged, skipped),
            parked,
            fencing,
            settled_ahead,
        )
        if not moved:
            raise ConcurrencyConflict(f"group:{name}/{segment}", expected_position)

    async def settled_ahead(self, name: str, segment: int) -> list[SettledEvent]:
        rows = await self._writer.run(lambda db: db.execute(sql.SETTLED_AHEAD, (name, segment)).fetchall())
        return [SettledEvent(str(event_id), int(position), str(outcome)) for event_id, position, outcome in rows]

    async def park(self, name: str, events: Sequence[GroupParkedEvent]) -> None:
        await self._writer.run(_park_alone, name, events)

    async def unpark(self, name: str, event_ids: Sequence[str]) -> None:
        await self._writer.run(_unpark, name, event_ids)

    async def repark(self, name: str, events: Sequence[GroupParkedEvent]) -> None:
        await self._writer.run(_repark, name, events)

    async def dismiss_parked(self, name: str, event_ids: Sequence[str], *, skipped: bool = False) -> list[str]:
        return await self._writer.run(_dismiss, name, event_ids, skipped)

    async def list_parked(
        self, name: str, *, after_position: int = 0, after: tuple[int, str] | None = None, limit: int = 100
    ) -> list[GroupParkedEvent]:
        rows = await self._writer.run(
            lambda db: db.execute(sql.LIST_GROUP_PARKED, parked_page(name, after_position, after, limit)).fetchall()
        )
        return [parked_from_row(row) for row in rows]

    async def find_parked(self, name: str, event_ids: Sequence[str]) -> list[GroupParkedEvent]:
        return await self._writer.run(_find_parked, name, event_ids)

    async def replay_parked(self, name: str, event_ids: Sequence[str]) -> int:
        return await self._writer.run(_replay, name, event_ids)

    async def parked_to_replay(self, name: str, segments: Sequence[int], limit: int) -> list[GroupParkedEvent]:
        rows = await self._writer.run(lambda db: db.execute(sql.GROUP_PARKED_TO_REPLAY, (name,)).fetchall())
        held = set(segments)
        return [p for p in (parked_from_row(row) for row in rows) if p.segment in held][:limit]


def _create(db: sqlite3.Connection, spec: GroupSpec) -> bool:
    with writing(db):
        if db.execute(sql.CREATE_GROUP, group_params(spec)).rowcount == 0:
            return False
        db.executemany(sql.CREATE_SEGMENT, [(spec.name, s, spec.start_position) for s in range(spec.segments)])
        return True


def _delete(db: sqlite3.Connection, name: str) -> bool:
    with writing(db):
        # Its consumers' leases too: a consumer of the deleted group cannot
        # commit into a new group of that name with its old token.
        db.execute(sql.DELETE_GROUP_MEMBERS, (consumer_group(name),))
        db.execute(sql.DELETE_GROUP_LEASES, (consumer_group(name),))
        db.execute(sql.DELETE_GROUP_SEGMENTS, (name,))
        db.execute(sql.DELETE_GROUP_PARKED, (name,))
        db.execute(sql.DELETE_GROUP_SETTLED, (name,))
        db.execute(sql.DELETE_GROUP_REPORTS, (name,))
        return bool(db.execute(sql.DELETE_GROUP, (name,)).rowcount)


def _update(db: sqlite3.Connection, spec: GroupSpec) -> bool:
    with writing(db):
        return bool(db.execute(sql.UPDATE_GROUP, updatable_params(spec)).rowcount)


def _read(db: sqlite3.Connection, name: str) -> GroupState | None:
    row = db.execute(sql.LOAD_GROUP, (name,)).fetchone()
    if row is None:
        return None
    checkpoints = tuple(
        SegmentCheckpoint(int(s), int(p), int(a), int(k), int(d))
        for s, p, a, k, d in db.execute(sql.GROUP_SEGMENTS, (name,)).fetchall()
    )
    (parked,) = db.execute(sql.PARKED_COUNT, (name,)).fetchone()
    lease_group, now = consumer_group(name), now_us()
    members = tuple(str(m) for (m,) in db.execute(sql.GROUP_CONSUMERS, (lease_group, now)))
    owners = {int(s): str(o) for s, o in db.execute(sql.GROUP_HOLDERS, (lease_group, now)) if str(s).isdigit()}
    reports = {
        str(member): ConsumerReport(
            replica_id=str(replica_id),
            replica_address=str(address),
            in_flight=int(in_flight),
            answered_ago=None if answered_at is None else max(0, now - int(answered_at)) / 1e6,
            heard_ago=max(0, now - int(reported_at)) / 1e6,
            connected_ago=None if connected_at is None else max(0, now - int(connected_at)) / 1e6,
        )
        for member, replica_id, address, in_flight, answered_at, reported_at, connected_at in db.execute(
            sql.GROUP_REPORTS, (lease_group, now, name)
        )
    }
    return GroupState(
        spec=group_spec_from_row(row),
        checkpoints=checkpoints,
        parked=int(parked),
        consumers=consumers_of(members, owners, reports),
    )


def _report(db: sqlite3.Connection, name: str, member_id: str, report: ConsumerReport) -> None:
    with writing(db):
        _reported(db, name, member_id, report, now_us())


def _renew_consumer(
    db: sqlite3.Connection,
    name: str,
    member: LeaseMember,
    names: Sequence[str],
    ttl_us: int,
    report: ConsumerReport,
) -> LeaseView:
    with writing(db):
        now = now_us()
        view = renewed(db, consumer_group(name), member, names, ttl_us, now)
        _reported(db, name, member.member_id, report, now)
    return view


def _reported(db: sqlite3.Connection, name: str, member_id: str, report: ConsumerReport, now: int) -> None:
    answered = None if report.answered_ago is None else now - round(report.answered_ago * 1e6)
    connected = None if report.connected_ago is None else now - round(report.connected_ago * 1e6)
    db.execute(sql.FORGET_OLD_REPORTS, (name, now - REPORTS_KEPT_US))
    db.execute(
        sql.UPSERT_CONSUMER_REPORT,
        (name, member_id, report.replica_id, report.replica_address, report.in_flight, answered, now, connected),
    )


def _load(db: sqlite3.Connection, name: str) -> GroupState | None:
    with reading(db):
        return _read(db, name)


def _load_all(db: sqlite3.Connection) -> list[GroupState]:
    with reading(db):
        states = [_read(db, str(name)) for (name,) in db.execute(sql.GROUP_NAMES).fetchall()]
    return [state for state in states if state is not None]


def _park(db: sqlite3.Connection, name: str, events: Sequence[GroupParkedEvent]) -> None:
    db.executemany(
        sql.PARK_GROUP_EVENT,
        [_park_params(name, e) for e in events],
    )


def _park_params(name: str, e: GroupParkedEvent) -> tuple[object, ...]:
    # An unknown type is kept NULL, as on the rows from before migration 23.
    return (
        name,
        e.event_id,
        e.position,
        e.segment,
        e.aggregate_id,
        e.attempts,
        e.reason,
        e.event_type or None,
        e.parked_at_us,
    )


def _park_alone(db: sqlite3.Connection, name: str, events: Sequence[GroupParkedEvent]) -> None:
    with writing(db):
        if db.execute(sql.LOAD_GROUP, (name,)).fetchone() is not None:
            _park(db, name, events)


def _commit(
    db: sqlite3.Connection,
    name: str,
    segment: int,
    move: tuple[int, int],
    counts: tuple[int, int],
    parked: Sequence[GroupParkedEvent],
    fencing: Fencing | None,
    settled_ahead: Sequence[SettledEvent] | None,
) -> bool:
    """``move``: the expected and the new checkpoint; ``counts``: the
    acknowledged and skipped events the move passes."""
    expected, new = move
    with writing(db):
        if fencing is not None and not still_held(db, fencing):
            return False  # another consumer holds the segment now
        if db.execute(sql.MOVE_SEGMENT, (new, *counts, name, segment, expected, new)).rowcount != 1:
            return False
        _park(db, name, parked)
        if settled_ahead is None:
            db.execute(sql.FORGET_SETTLED_PASSED, (name, segment, new))
        else:
            db.execute(sql.FORGET_SETTLED_AHEAD, (name, segment))
            db.executemany(
                sql.KEEP_SETTLED_AHEAD,
                [(name, segment, s.event_id, s.position, s.outcome) for s in settled_ahead if s.position > new],
            )
        return True


def _unpark(db: sqlite3.Connection, name: str, event_ids: Sequence[str]) -> None:
    with writing(db):
        for event_id in event_ids:
            for (segment,) in db.execute(sql.UNPARK_GROUP_EVENT, (name, event_id)).fetchall():
                db.execute(sql.COUNT_GROUP_ACKNOWLEDGED, (name, segment))


def _repark(db: sqlite3.Connection, name: str, events: Sequence[GroupParkedEvent]) -> None:
    with writing(db):
        db.executemany(
            sql.REPARK_GROUP_EVENT,
            [(e.attempts, e.reason, e.event_type or None, e.parked_at_us, name, e.event_id) for e in events],
        )


def _dismiss(db: sqlite3.Connection, name: str, event_ids: Sequence[str], skipped: bool) -> list[str]:
    with writing(db):  # the write lock: nothing settles a replay between the look and the deletion
        wanted = list(dict.fromkeys(event_ids))
        missing = [e for e in wanted if db.execute(sql.GROUP_PARKED_EVENT, (name, e)).fetchone() is None]
        if not missing:
            count = sql.COUNT_GROUP_SKIPPED if skipped else sql.COUNT_GROUP_DISMISSED
            for event_id in wanted:
                for (segment,) in db.execute(sql.DISMISS_GROUP_PARKED, (name, event_id)).fetchall():
                    db.execute(count, (name, segment))
        return missing


def _find_parked(db: sqlite3.Connection, name: str, event_ids: Sequence[str]) -> list[GroupParkedEvent]:
    with reading(db):
        found = [db.execute(sql.GROUP_PARKED_EVENT, (name, event_id)).fetchone() for event_id in set(event_ids)]
    return sorted((parked_from_row(row) for row in found if row is not None), key=lambda p: (p.position, p.event_id))


def _replay(db: sqlite3.Connection, name: str, event_ids: Sequence[str]) -> int:
    with writing(db):
        if not event_ids:
            return int(db.execute(sql.REPLAY_ALL_GROUP_PARKED, (name,)).rowcount)
        return sum(int(db.execute(sql.REPLAY_GROUP_PARKED, (name, event_id)).rowcount) for event_id in event_ids)
