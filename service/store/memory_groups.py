"""``GroupStore`` in memory (the reference implementation, with
``MemoryStore``): dicts, and the process's own consumer leases."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from service.errors import ConcurrencyConflict, ResourceExists, quoted
from service.store.grouping import (
    UPDATABLE_SETTINGS,
    ConsumerReport,
    GroupParkedEvent,
    GroupSpec,
    GroupState,
    SegmentCheckpoint,
    SettledEvent,
    consumer_group,
    consumers_of,
    owners_from_view,
)
from service.store.leasing import Fencing, LeaseMember, LeaseView
from service.store.local_leases import LocalLeases


def group_exists(name: str) -> ResourceExists:
    return ResourceExists(
        f"subscription group {quoted(name)} exists already", reason="GROUP_EXISTS", metadata={"group": name}
    )


@dataclass(slots=True)
class _Group:
    spec: GroupSpec
    checkpoints: list[SegmentCheckpoint]
    parked: dict[str, GroupParkedEvent] = field(default_factory=dict)
    settled_ahead: dict[int, list[SettledEvent]] = field(default_factory=dict)  # by segment


# A consumer's report is forgotten this long after it was written (its
# session ended without another, or its consumer left the group).
REPORTS_KEPT_SECONDS = 3600.0


class MemoryGroups:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._groups_clock = clock
        self._groups: dict[str, _Group] = {}
        self._consumer_leases = LocalLeases(clock=clock)
        # Per group, each consumer's last report and when it was written.
        self._consumer_reports: dict[str, dict[str, tuple[ConsumerReport, float]]] = {}

    @property
    def consumer_leases(self) -> LocalLeases:
        return self._consumer_leases

    def _log_end(self) -> int:
        """The log's end, past which no checkpoint is committed (the store
        that holds the log says; alone, groups know of no end)."""
        return 2**63 - 1

    async def create_group(self, spec: GroupSpec) -> None:
        if spec.name in self._groups:
            raise group_exists(spec.name)
        checkpoints = [SegmentCheckpoint(s, spec.start_position) for s in range(spec.segments)]
        self._groups[spec.name] = _Group(spec.incarnated(), checkpoints)

    def _unpark_aggregate(self, aggregate_id: str) -> None:
        """Drop every group's parked events of the aggregate (deleted or forgotten)."""
        for group in self._groups.values():
            for event_id in [e for e, parked in group.parked.items() if parked.aggregate_id == aggregate_id]:
                del group.parked[event_id]

    async def update_group(self, spec: GroupSpec) -> bool:
        group = self._groups.get(spec.name)
        if group is None or group.spec.incarnation != spec.incarnation:
            return False
        changes = {setting: getattr(spec, setting) for setting in UPDATABLE_SETTINGS}
        group.spec = replace(group.spec, **changes)
        return True

    async def delete_group(self, name: str) -> bool:
        self._consumer_leases.drop_group(consumer_group(name))
        self._consumer_reports.pop(name, None)
        return self._groups.pop(name, None) is not None

    async def load_group(self, name: str) -> GroupState | None:
        group = self._groups.get(name)
        if group is None:
            return None
        members, owners = owners_from_view(self._consumer_leases.view(consumer_group(name)))
        return GroupState(
            spec=group.spec,
            checkpoints=tuple(group.checkpoints),
            parked=len(group.parked),
            consumers=consumers_of(members, owners, self._reports_of(name)),
        )

    def _reports_of(self, name: str) -> dict[str, ConsumerReport]:
        """The group's reports, their ages as of now."""
        now = self._groups_clock()
        return {
            member: replace(
                report,
                answered_ago=None if report.answered_ago is None else report.answered_ago + now - written,
                heard_ago=now - written,
                connected_ago=None if report.connected_ago is None else report.connected_ago + now - written,
            )
            for member, (report, written) in self._consumer_reports.get(name, {}).items()
        }

    async def report_consumer(self, name: str, member_id: str, report: ConsumerReport) -> None:
        self._keep_report(name, member_id, report)

    async def renew_consumer(
        self, name: str, member: LeaseMember, names: Sequence[str], ttl: float, report: ConsumerReport
    ) -> LeaseView:
        view = await self._consumer_leases.renew_leases(consumer_group(name), member, names, ttl)
        # LocalLeases never suspends: the renewal and the report are one step, as a transaction.
        self._keep_report(name, member.member_id, report)
        return view

    def _keep_report(self, name: str, member_id: str, report: ConsumerReport) -> None:
        now = self._groups_clock()
        reports = self._consumer_reports.setdefault(name, {})
        for member in [m for m, (_, written) in reports.items() if now - written > REPORTS_KEPT_SECONDS]:
            del reports[member]
        connected_ago = report.connected_ago
        last = reports.get(member_id)
        if last is not None and last[0].connected_ago is not None:
            connected_ago = last[0].connected_ago + now - last[1]  # the first report's, as the SQL stores keep it
        reports[member_id] = (replace(report, heard_ago=0.0, connected_ago=connected_ago), now)

    async def list_groups(self) -> list[GroupState]:
        states = [await self.load_group(name) for name in sorted(self._groups)]
        return [state for state in states if state is not None]

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
        group = self._groups.get(name)
        current = group.checkpoints[segment] if group is not None and segment < len(group.checkpoints) else None
        if current is None or current.position != expected_position or new_position > self._log_end():
            raise ConcurrencyConflict(f"group:{name}/{segment}", expected_position)
        if fencing is not None and not self._consumer_leases.holds(fencing):
            raise ConcurrencyConflict(f"group:{name}/{segment}", expected_position)
        assert group is not None
        self._park(group, parked)
        group.checkpoints[segment] = replace(
            current,
            position=new_position,
            acknowledged=current.acknowledged + acknowledged,
            skipped=current.skipped + skipped,
        )
        kept = group.settled_ahead.get(segment, []) if settled_ahead is None else settled_ahead
        group.settled_ahead[segment] = sorted(
            (settled for settled in kept if settled.position > new_position), key=lambda settled: settled.position
        )

    async def settled_ahead(self, name: str, segment: int) -> list[SettledEvent]:
        group = self._groups.get(name)
        return [] if group is None else list(group.settled_ahead.get(segment, ()))

    async def park(self, name: str, events: Sequence[GroupParkedEvent]) -> None:
        group = self._groups.get(name)
        if group is not None:
            self._park(group, events)

    @staticmethod
    def _park(group: _Group, events: Sequence[GroupParkedEvent]) -> None:
        for event in events:
            group.parked[event.event_id] = replace(event, replaying=False)

    async def unpark(self, name: str, event_ids: Sequence[str]) -> None:
        group = self._groups.get(name)
        if group is not None:
            for event_id in event_ids:
                gone = group.parked.pop(event_id, None)
                if gone is not None and gone.segment < len(group.checkpoints):
                    checkpoint = group.checkpoints[gone.segment]
                    group.checkpoints[gone.segment] = replace(checkpoint, acknowledged=checkpoint.acknowledged + 1)

    async def repark(self, name: str, events: Sequence[GroupParkedEvent]) -> None:
        group = self._groups.get(name)
        if group is not None:
            self._park(group, [event for event in events if event.event_id in group.parked])

    async def dismiss_parked(self, name: str, event_ids: Sequence[str], *, skipped: bool = False) -> list[str]:
        group = self._groups.get(name)
        parked = group.parked if group is not None else {}
        missing = [event_id for event_id in dict.fromkeys(event_ids) if event_id not in parked]
        if group is not None and not missing:
            for event_id in event_ids:
                gone = parked.pop(event_id, None)
                if gone is not None and gone.segment < len(group.checkpoints):
                    checkpoint = group.checkpoints[gone.segment]
                    group.checkpoints[gone.segment] = (
                        replace(checkpoint, skipped=checkpoint.skipped + 1)
                        if skipped
                        else replace(checkpoint, dismissed=checkpoint.dismissed + 1)
                    )
        return missing

    def _sorted_parked(self, name: str) -> list[GroupParkedEvent]:
        group = self._groups.get(name)
        if group is None:
            return []
        return sorted(group.parked.values(), key=lambda p: (p.position, p.event_id))

    async def list_parked(
        self, name: str, *, after_position: int = 0, after: tuple[int, str] | None = None, limit: int = 100
    ) -> list[GroupParkedEvent]:
        if after is not None:
            return [p for p in self._sorted_parked(name) if (p.position, p.event_id) > after][:limit]
        return [p for p in self._sorted_parked(name) if p.position > after_position][:limit]

    async def find_parked(self, name: str, event_ids: Sequence[str]) -> list[GroupParkedEvent]:
        wanted = set(event_ids)
        return [p for p in self._sorted_parked(name) if p.event_id in wanted]

    async def replay_parked(self, name: str, event_ids: Sequence[str]) -> int:
        group = self._groups.get(name)
        if group is None:
            return 0
        wanted = set(event_ids)
        marked = 0
        for event_id, event in group.parked.items():
            if not wanted or event_id in wanted:
                group.parked[event_id] = replace(event, replaying=True)
                marked += 1
        return marked

    async def parked_to_replay(self, name: str, segments: Sequence[int], limit: int) -> list[GroupParkedEvent]:
        held = set(segments)
        return [p for p in self._sorted_parked(name) if p.replaying and p.segment in held][:limit]
