"""``GroupStore`` on PostgreSQL: settings, segment checkpoints and parked
events in three tables (migration 0013), every method one operation; the
consumers hold segments by the store's own leases (``leases.py``), so the
consumers of one group may be connected to different replicas."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import cast

from service.errors import ConcurrencyConflict
from service.store.base import LeaseStore
from service.store.grouping import (
    GROUP_LEASE_PREFIX,
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
from service.store.postgres import sql
from service.store.postgres.connection import Statement
from service.store.postgres.database import Database
from service.store.postgres.errors import Refused
from service.store.postgres.leases import renewal, renewed
from service.store.postgres.rows import rows, scalar
from service.store.sql_common import group_params, group_spec_from_row, parked_from_row, parked_page


def _report(name: str, member_id: str, report: ConsumerReport) -> list[Statement]:
    # Milliseconds: the statement's parameters are text (no floats).
    answered_ago = None if report.answered_ago is None else round(report.answered_ago * 1000)
    connected_ago = None if report.connected_ago is None else round(report.connected_ago * 1000)
    return [
        Statement(sql.FORGET_OLD_REPORTS.encode(), (name,)),
        Statement(
            sql.UPSERT_CONSUMER_REPORT.encode(),
            (name, member_id, report.replica_id, report.replica_address, report.in_flight, answered_ago, connected_ago),
        ),
    ]


def _parked_json(events: Sequence[GroupParkedEvent]) -> str:
    return json.dumps(
        [
            {
                "event_id": e.event_id,
                "position": e.position,
                "segment": e.segment,
                "aggregate_id": e.aggregate_id,
                "attempts": e.attempts,
                "reason": e.reason,
                "event_type": e.event_type or None,
                "parked_at_us": e.parked_at_us,
            }
            for e in events
        ],
        separators=(",", ":"),
    )


class GroupsRole:
    _db: Database
    _lease_db: Database  # PostgresStore's: the leases' connection

    @property
    def consumer_leases(self) -> LeaseStore:
        return cast(LeaseStore, self)  # PostgresStore's LeasesRole: the leases every replica sees

    async def create_group(self, spec: GroupSpec) -> None:
        (result,) = await self._db.run(
            "create_group", [Statement(sql.CREATE_GROUP.encode(), group_params(spec.incarnated()))]
        )
        if not int(result.command_tuples or 0):
            raise group_exists(spec.name)

    async def delete_group(self, name: str) -> bool:
        lease_group = consumer_group(name)
        # In the order a consumer session's operations take their locks
        # (heartbeat and leaving: its member row, then leases; a commit
        # round: the leases, then the segments' rows): against a session
        # still at work the deletion waits its turn instead of deadlocking
        # (tests/integration/test_group_deletion.py).
        *_, deleted = await self._db.run(
            "delete_group",
            [
                Statement(sql.DELETE_GROUP_MEMBERS.encode(), (lease_group,)),
                Statement(sql.DELETE_GROUP_LEASES.encode(), (lease_group,)),
                Statement(sql.DELETE_GROUP_REPORTS.encode(), (name,)),
                Statement(sql.DELETE_GROUP.encode(), (name,)),
            ],
        )
        return bool(deleted.ntuples)

    async def update_group(self, spec: GroupSpec) -> bool:
        (updated,) = await self._db.run("update_group", [Statement(sql.UPDATE_GROUP.encode(), updatable_params(spec))])
        return bool(updated.ntuples)

    async def load_group(self, name: str) -> GroupState | None:
        states = await self._load(name)
        return states[0] if states else None

    async def list_groups(self) -> list[GroupState]:
        return await self._load(None)

    async def _load(self, name: str | None) -> list[GroupState]:
        one = (name,)
        both = (name, GROUP_LEASE_PREFIX)
        results = await self._db.run(
            "load_groups",
            [
                Statement(sql.LOAD_GROUPS.encode(), one),
                Statement(sql.LOAD_GROUP_SEGMENTS.encode(), one),
                Statement(sql.COUNT_GROUP_PARKED.encode(), one),
                Statement(sql.LOAD_GROUP_CONSUMERS.encode(), both),
                Statement(sql.LOAD_GROUP_HOLDERS.encode(), both),
                Statement(sql.LOAD_GROUP_REPORTS.encode(), both),
            ],
            read_only=True,
        )
        checkpoints: dict[str, list[SegmentCheckpoint]] = {}
        for group, segment, position, acknowledged, skipped, dismissed in rows(results[1]):
            checkpoint = SegmentCheckpoint(int(segment), int(position), int(acknowledged), int(skipped), int(dismissed))
            checkpoints.setdefault(group, []).append(checkpoint)
        parked = {str(group): int(count) for group, count in rows(results[2])}
        members: dict[str, list[str]] = {}
        for group, member in rows(results[3]):
            members.setdefault(group, []).append(str(member))
        owners: dict[str, dict[int, str]] = {}
        for group, lease, owner in rows(results[4]):
            if str(lease).isdigit():
                owners.setdefault(group, {})[int(lease)] = str(owner)
        reports: dict[str, dict[str, ConsumerReport]] = {}
        for group, member, replica_id, address, in_flight, answered_ago, heard_ago, connected_ago in rows(results[5]):
            reports.setdefault(str(group), {})[str(member)] = ConsumerReport(
                replica_id=str(replica_id),
                replica_address=str(address),
                in_flight=int(in_flight),
                answered_ago=None if answered_ago is None else max(0.0, float(answered_ago)),
                heard_ago=max(0.0, float(heard_ago)),
                connected_ago=None if connected_ago is None else max(0.0, float(connected_ago)),
            )
        states = []
        for row in rows(results[0]):
            spec = group_spec_from_row(row)
            states.append(
                GroupState(
                    spec=spec,
                    checkpoints=tuple(checkpoints.get(spec.name, ())),
                    parked=parked.get(spec.name, 0),
                    consumers=consumers_of(
                        tuple(sorted(members.get(spec.name, ()))), owners.get(spec.name, {}), reports.get(spec.name)
                    ),
                )
            )
        return states

    async def report_consumer(self, name: str, member_id: str, report: ConsumerReport) -> None:
        await self._db.run("report_consumer", _report(name, member_id, report))

    async def renew_consumer(
        self, name: str, member: LeaseMember, names: Sequence[str], ttl: float, report: ConsumerReport
    ) -> LeaseView:
        # One operation (one transaction) on the leases' connection, which
        # no append holds up (store.py): the renewal's statements, then the report's.
        statements = renewal(consumer_group(name), member, names, ttl)
        results = await self._lease_db.run("renew_consumer", [*statements, *_report(name, member.member_id, report)])
        return renewed(results)

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
        statements = []
        if fencing is not None:
            fenced = (fencing.group, fencing.name, fencing.member_id, fencing.epoch)
            statements.append(Statement(sql.CHECK_FENCING.encode(), fenced))
        moved = (name, segment, expected_position, new_position, acknowledged, skipped)
        statements.append(Statement(sql.MOVE_SEGMENT.encode(), moved))
        if parked:
            statements.append(Statement(sql.PARK_GROUP_EVENTS.encode(), (name, _parked_json(parked))))
        if settled_ahead is None:
            statements.append(Statement(sql.FORGET_SETTLED_PASSED.encode(), (name, segment, new_position)))
        else:
            kept = [
                {"event_id": s.event_id, "position": s.position, "outcome": s.outcome}
                for s in settled_ahead
                if s.position > new_position
            ]
            statements.append(Statement(sql.FORGET_SETTLED_AHEAD.encode(), (name, segment)))
            statements.append(Statement(sql.KEEP_SETTLED_AHEAD.encode(), (name, segment, json.dumps(kept))))
        try:
            await self._db.run("commit_segment", statements)
        except Refused:  # the checkpoint moved, the group is gone, or the lease changed holder
            raise ConcurrencyConflict(f"group:{name}/{segment}", expected_position) from None

    async def settled_ahead(self, name: str, segment: int) -> list[SettledEvent]:
        (result,) = await self._db.run(
            "settled_ahead", [Statement(sql.SETTLED_AHEAD.encode(), (name, segment))], read_only=True
        )
        return [
            SettledEvent(str(event_id), int(position), str(outcome)) for event_id, position, outcome in rows(result)
        ]

    async def park(self, name: str, events: Sequence[GroupParkedEvent]) -> None:
        if events:
            await self._db.run("park", [Statement(sql.PARK_GROUP_EVENTS.encode(), (name, _parked_json(events)))])

    async def unpark(self, name: str, event_ids: Sequence[str]) -> None:
        if event_ids:
            await self._db.run("unpark", [Statement(sql.UNPARK_GROUP_EVENTS.encode(), (name, list(event_ids)))])

    async def repark(self, name: str, events: Sequence[GroupParkedEvent]) -> None:
        if events:
            await self._db.run("repark", [Statement(sql.REPARK_GROUP_EVENTS.encode(), (name, _parked_json(events)))])

    async def dismiss_parked(self, name: str, event_ids: Sequence[str], *, skipped: bool = False) -> list[str]:
        wanted = (name, list(dict.fromkeys(event_ids)))
        try:
            await self._db.run(
                "dismiss_parked",
                [
                    Statement(sql.LOCK_GROUP_PARKED.encode(), wanted),
                    Statement(sql.DISMISS_GROUP_PARKED.encode(), (*wanted, skipped)),
                ],
            )
        except Refused:  # one is not parked: nothing dismissed
            found = {parked.event_id for parked in await self.find_parked(name, wanted[1])}
            return [event_id for event_id in wanted[1] if event_id not in found] or wanted[1]
        return []

    async def list_parked(
        self, name: str, *, after_position: int = 0, after: tuple[int, str] | None = None, limit: int = 100
    ) -> list[GroupParkedEvent]:
        (result,) = await self._db.run(
            "list_parked",
            [Statement(sql.LIST_GROUP_PARKED.encode(), parked_page(name, after_position, after, limit))],
            read_only=True,
        )
        return [parked_from_row(row) for row in rows(result)]

    async def find_parked(self, name: str, event_ids: Sequence[str]) -> list[GroupParkedEvent]:
        (result,) = await self._db.run(
            "find_parked",
            [Statement(sql.GROUP_PARKED_EVENTS.encode(), (name, list(event_ids)))],
            read_only=True,
        )
        return [parked_from_row(row) for row in rows(result)]

    async def replay_parked(self, name: str, event_ids: Sequence[str]) -> int:
        (result,) = await self._db.run(
            "replay_parked", [Statement(sql.REPLAY_GROUP_PARKED.encode(), (name, list(event_ids)))]
        )
        return int(scalar(result) or 0)

    async def parked_to_replay(self, name: str, segments: Sequence[int], limit: int) -> list[GroupParkedEvent]:
        (result,) = await self._db.run(
            "parked_to_replay",
            [Statement(sql.GROUP_PARKED_TO_REPLAY.encode(), (name, list(segments), limit))],
            read_only=True,
        )
        return [parked_from_row(row) for row in rows(result)]
