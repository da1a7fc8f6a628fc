"""The console's audit page: the audit log read through
``AdminService.QueryAudit`` as the logged-in principal (the admin grant,
refused and audited as the RPC refuses), newest first, a page at a time.

QueryAudit answers the newest entries before a time; entries of the same
microsecond come in no order of their own (two replicas, a flood of
refusals). A page therefore goes on from a point ``(t, k)``: every entry
newer than ``t``, and the first ``k`` of those *at* ``t`` in an order the
console fixes (their serialized bytes), were shown. The point rides in the
*Next page* link sealed (``cursors``), bound to the session and the filters,
as the Log page's does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from google.protobuf import timestamp_pb2

from chronicle.v1 import admin_service_pb2 as admin_pb
from service.api.admin_service import AdminService
from service.console.cursors import Cursors
from service.console.html import Content, Name, link, table, tag, url, void
from service.errors import InvalidInput

AUDIT_PAGE_SIZE = 50
# QueryAudit's most: the entries of one microsecond are read in one call.
_MOST = 1000
_NO_CONTEXT = cast(Any, None)
_OUTCOMES = {
    "": admin_pb.AUDIT_OUTCOME_UNSPECIFIED,
    "accepted": admin_pb.AUDIT_OUTCOME_ACCEPTED,
    "refused": admin_pb.AUDIT_OUTCOME_REFUSED,
}
_OUTCOME_NAMES = {admin_pb.AUDIT_OUTCOME_ACCEPTED: "accepted", admin_pb.AUDIT_OUTCOME_REFUSED: "refused"}
# The filters a page's address carries (each checked by QueryAudit, the times here).
FILTERS = ("principal", "action", "aggregate", "command", "outcome", "since", "until")


@dataclass(frozen=True, slots=True)
class AuditFilters:
    """The page's filters, as typed (``since`` and ``until``: UTC)."""

    principal: str = ""
    action: str = ""  # a command type, or an administrator's action (SERVICE/RPC)
    aggregate: str = ""
    command: str = ""
    outcome: str = ""
    since: str = ""
    until: str = ""

    @classmethod
    def of(cls, query: dict[str, str]) -> AuditFilters:
        filters = cls(**{name: query.get(name, "").strip() for name in FILTERS})
        if filters.outcome not in _OUTCOMES:
            raise InvalidInput.for_field("outcome", "must be accepted, refused or empty (any)", reason="INVALID_FILTER")
        return filters

    def as_query(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in FILTERS}

    def listing(self) -> str:
        """What a cursor is bound to besides the session: these filters."""
        return json.dumps(self.as_query(), sort_keys=True)

    def request(self, *, since_us: int | None = None, until_us: int | None = None, limit: int) -> Any:
        """QueryAudit's request: these filters, narrowed to ``since_us`` ..
        ``until_us`` (microseconds) when given."""
        request = admin_pb.QueryAuditRequest(
            aggregate_id=self.aggregate,
            principal=self.principal,
            command_id=self.command,
            command_type=self.action,
            outcome=_OUTCOMES[self.outcome],
            limit=limit,
        )
        if since_us is not None:
            request.since.FromMicroseconds(since_us)
        elif self.since:
            request.since.CopyFrom(_moment("since", self.since))
        if until_us is not None:
            request.until.FromMicroseconds(until_us)
        elif self.until:
            request.until.CopyFrom(_moment("until", self.until))
        return request


def _moment(field: str, text: str) -> timestamp_pb2.Timestamp:
    """``text`` (ISO 8601, as a browser's datetime-local sends it) as a
    time, read as UTC unless it names its offset; INVALID_TIMESTAMP otherwise."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput.for_field(
            field, f"must be a time such as 2026-12-06T13:45:00 (UTC), not {text[:40]!r}", reason="INVALID_TIMESTAMP"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    answer = timestamp_pb2.Timestamp()
    answer.FromDatetime(moment)
    return answer


def _micros(entry: admin_pb.AuditEntry) -> int:
    return int(entry.time.ToMicroseconds())


def _order(entry: admin_pb.AuditEntry) -> tuple[int, bytes]:
    """Newest first; entries of one microsecond by their bytes (an order
    that stays the same from one page to the next)."""
    return -_micros(entry), entry.SerializeToString(deterministic=True)


async def _query(admin: AdminService, request: Any) -> list[admin_pb.AuditEntry]:
    answer = await admin.QueryAudit(request, _NO_CONTEXT)
    return sorted(answer.entries, key=_order)


async def refused_by_the_rpc(admin: AdminService) -> None:
    """QueryAudit refuses a caller without the admin grant before it reads
    its request (and audits the refusal): let it say so, for a page whose
    address the console has not read yet. Called only for a caller the
    policy says QueryAudit refuses (neither the admin grant nor a tenant's
    administrator): for one it answers, it would read a page of entries."""
    await admin.QueryAudit(admin_pb.QueryAuditRequest(), _NO_CONTEXT)


async def _at(admin: AdminService, filters: AuditFilters, micros: int) -> list[admin_pb.AuditEntry]:
    """Every entry (up to QueryAudit's most) of the microsecond ``micros``."""
    return await _query(admin, filters.request(since_us=micros, until_us=micros + 1, limit=_MOST))


async def audit_entries(
    admin: AdminService, filters: AuditFilters, after: tuple[int, int] | None
) -> tuple[list[admin_pb.AuditEntry], tuple[int, int] | None]:
    """One page from ``after`` (None: the newest), and the point the next
    page goes on from (None: this was the last)."""
    entries: list[admin_pb.AuditEntry] = []
    if after is not None:
        micros, shown = after
        entries += (await _at(admin, filters, micros))[shown:]
        entries += await _query(admin, filters.request(until_us=micros, limit=AUDIT_PAGE_SIZE + 1))
    else:
        entries += await _query(admin, filters.request(limit=AUDIT_PAGE_SIZE + 1))
    if len(entries) <= AUDIT_PAGE_SIZE:
        return entries, None
    page = entries[:AUDIT_PAGE_SIZE]
    last = _micros(page[-1])
    if after is not None and last == after[0]:
        return page, (last, after[1] + AUDIT_PAGE_SIZE)  # all of this page were of that microsecond
    # The page's last microsecond may hold more entries than the call
    # returned (its limit cut among them, in no order): take them all, in
    # the console's order, so that the next page goes on where this one ends.
    newer = [entry for entry in page if _micros(entry) > last]
    taken = AUDIT_PAGE_SIZE - len(newer)
    return newer + (await _at(admin, filters, last))[:taken], (last, taken)


def seal_point(cursors: Cursors, point: tuple[int, int], *, bound_to: str) -> str:
    return cursors.seal(f"{point[0]}:{point[1]}", bound_to=bound_to)


def open_point(cursors: Cursors, cursor: str, *, bound_to: str) -> tuple[int, int]:
    micros, _, shown = cursors.open(cursor, bound_to=bound_to, field="after").partition(":")
    return int(micros), int(shown)  # sealed here: always two numbers


def _when(entry: admin_pb.AuditEntry) -> str:
    return entry.time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S.%f") + "Z"


def _outcome(entry: admin_pb.AuditEntry) -> Content:
    name = _OUTCOME_NAMES.get(entry.outcome, "unknown")
    parts: list[Content] = [tag("span", name, class_="outcome-" + name)]
    if entry.reason:
        parts += [" ", tag("code", entry.reason)]
    if entry.dry_run:
        parts.append(" (dry run)")
    if entry.occurrences > 1:
        parts.append(f" ({entry.occurrences} times)")
    return tag("span", *parts)


def _row(entry: admin_pb.AuditEntry) -> list[Content]:
    return [
        _when(entry),
        entry.principal,
        entry.user_id,
        tag("code", entry.command_type),
        Name(entry.aggregate_id),
        tag("code", entry.command_id),
        _outcome(entry),
        entry.message,
        entry.origin,
        entry.peer,
    ]


def filter_form(filters: AuditFilters) -> Content:
    def field(label: str, name: str, **attributes: str) -> Content:
        return tag("label", label, " ", void("input", name=name, value=getattr(filters, name), **attributes))

    outcome = tag(
        "select",
        *(
            tag("option", label, value=value, selected="" if filters.outcome == value else None)
            for value, label in (("", "any"), ("accepted", "accepted"), ("refused", "refused"))
        ),
        name="outcome",
    )
    return tag(
        "form",
        field("Principal", "principal", type="text"),
        field("Command type or action (chronicle.v1.ProjectionService/RebuildProjection)", "action", type="text"),
        field("Aggregate (projection:NAME, reaction:NAME for actions on them)", "aggregate", type="text"),
        field("Command id", "command", type="text"),
        tag("label", "Outcome ", outcome),
        field("Since (UTC)", "since", type="datetime-local", step="1"),
        field("Until (UTC)", "until", type="datetime-local", step="1"),
        tag("button", "Filter", type="submit"),
        method="get",
        action="/audit",
        class_="filters",
        id="audit-filters",
    )


def audit_view(
    entries: list[admin_pb.AuditEntry], filters: AuditFilters, *, first: bool, next_cursor: str
) -> list[Content]:
    pages: list[Content] = []
    if not first:
        pages.append(link(url("/audit", **filters.as_query()), "← Newest", class_="first"))
    if next_cursor:
        pages.append(link(url("/audit", **filters.as_query(), after=next_cursor), "Older →", class_="next"))
    return [
        tag(
            "p",
            "Every command that reached the service, accepted or refused, and every administrator's action,"
            " newest first, 50 a page (QueryAudit). Times are UTC.",
            class_="summary",
        ),
        filter_form(filters),
        table(
            [
                "time",
                "principal",
                "on behalf of",
                "command or action",
                "aggregate",
                "command id",
                "outcome",
                "message",
                "origin",
                "peer",
            ],
            [_row(entry) for entry in entries],
            empty="no entry matches",
            id="audit",
        ),
        tag("nav", *pages, class_="pages") if pages else "",
    ]
