"""The console's subscription-group pages and their actions.

Every read and every action goes through ``SubscriptionGroupService`` as
the logged-in principal, so the grants and the audit are the RPCs' own:
listing takes the subscribe grant of the group's types (``ListParked``,
``ListGroups``), replaying and dismissing take the admin grant and are
audited by ``ReplayParked`` and ``DismissParked``.

An action on all of a group's parked events is confirmed first: the
confirmation shows how many there are and carries a digest of their ids,
and the action does nothing if the parked events are no longer those
(``Changed``): the operator confirms what will be done, not what was there
a minute ago.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from google.protobuf import duration_pb2

from chronicle.v1 import subscription_group_service_pb2 as groups_pb
from service.api.group_service import MAX_CONFIRMED_DISMISSAL
from service.console.confirming import Changed, check_confirmed, digest_of
from service.console.html import Content, Html, Name, link, segment, table, tag, url, void
from service.console.views import Parts, query_number
from service.errors import InvalidInput, ResourceNotFound
from service.principal import current_principal

PARKED_PAGE_SIZE = 100  # a group's parked events on its page, a page at a time (by page token)
_LISTING_PAGE = 1000  # ListParked's largest page
# The most parked events an action on all of them takes from the console:
# each is listed (for the confirmation's count and digest) and, to dismiss,
# named in one call (``dismiss_confirmed``: one transaction); beyond, the
# page sends the operator to the CLI.
MAX_ALL_PARKED = MAX_CONFIRMED_DISMISSAL
_BATCH = 100  # ReplayParked's and DismissParked's most ids in one call
# The servicers take gRPC's context and do not use it on these paths.
_NO_CONTEXT = cast(Any, None)
# The actions on all of a group's parked events: what the confirmation and the button say.
ALL_ACTIONS = {"replay-all": "Replay", "dismiss-all": "Dismiss"}


@dataclass(frozen=True, slots=True)
class Done:
    """What an action on all parked events did, for the session's notice."""

    acted: int
    gone: int = 0  # left the parked list while the batches went (acknowledged replays)


def group_path(name: str, action: str = "") -> str:
    return "/groups/" + segment(name) + (f"/{action}" if action else "")


async def all_parked(parts: Parts, name: str) -> list[groups_pb.GroupParkedEvent]:
    """Every parked event of the group, by position (``ListParked``, a page
    of 1,000 at a time: the caller's subscribe grant, as the RPC); more than
    ``MAX_ALL_PARKED`` is refused (``TOO_MANY_PARKED``)."""
    found: list[groups_pb.GroupParkedEvent] = []
    token = ""  # ListParked's: by position alone, a page could end between two pieces of a split event
    while True:
        page = await parts.groups.ListParked(
            groups_pb.ListParkedRequest(group=name, limit=_LISTING_PAGE, page_token=token), _NO_CONTEXT
        )
        found.extend(page.parked)
        if len(found) > MAX_ALL_PARKED:
            raise InvalidInput(
                f"group {name} has more than {MAX_ALL_PARKED:,} parked events: too many to act on from the"
                f" console; use chronicle group {name} --replay-all, or --dismiss EVENT_ID... in batches",
                reason="TOO_MANY_PARKED",
                metadata={"group": name, "limit": str(MAX_ALL_PARKED)},
            )
        if not page.next_page_token:
            return found
        token = page.next_page_token


def check_action(action: str) -> str:
    if action not in ALL_ACTIONS:
        raise InvalidInput.for_field(
            "action", f"must be one of {', '.join(ALL_ACTIONS)}, not {action[:40]!r}", reason="INVALID_ACTION"
        )
    return action


async def confirm_page(
    parts: Parts, name: str, action: str, csrf_token: str, notice: str = ""
) -> tuple[str, list[Content]]:
    """``/groups/NAME/confirm?action=replay-all|dismiss-all``: how many
    parked events the action would take, and (to an administrator) the form
    that takes exactly those."""
    verb = ALL_ACTIONS[check_action(action)]
    events = await all_parked(parts, name)
    admin = parts.authorizer.grant(current_principal.get()).admin
    content: list[Content] = []
    if notice:
        content.append(tag("p", notice, class_="notice", id="notice"))
    back = link(url(group_path(name)), "Back to the group", class_="cancel")
    if not events:
        content.append(tag("p", f"Group {name} has no parked events: nothing to {verb.lower()}.", id="confirm"))
        return f"{verb} parked events of {name}", [*content, back]
    first, last = events[0].position, events[-1].position
    what = (
        "delivered again to the consumers that hold their segments (each one left parked if it fails again)"
        if action == "replay-all"
        else "deleted from the parked list for good, without being delivered again or counted as acknowledged"
    )
    content.append(
        tag(
            "p",
            f"{verb} all {len(events)} parked event(s) of group {name} (positions {first} to {last})? They are {what}."
            " Only these are acted on: if the group's parked events change before you confirm, nothing is done"
            " and you are asked again.",
            id="confirm",
            data_count=len(events),
        )
    )
    if admin:
        content.append(
            tag(
                "form",
                void("input", type="hidden", name="csrf_token", value=csrf_token),
                void("input", type="hidden", name="count", value=len(events)),
                void("input", type="hidden", name="digest", value=digest_of([event.event_id for event in events])),
                tag("button", f"{verb} {len(events)} parked event(s)", type="submit"),
                method="post",
                action=url(group_path(name, action)),
                class_=f"confirm {action}",
            )
        )
    else:
        content.append(tag("p", f"Only an administrator may {verb.lower()} parked events.", class_="empty"))
    return f"{verb} parked events of {name}", [*content, back]


async def act_on_all(parts: Parts, name: str, action: str, form: dict[str, str]) -> Done:
    """Replay or dismiss all the group's parked events, if they are those
    the operator confirmed (``Changed`` otherwise). To a caller who is no
    administrator, the RPC's own refusal (audited), whatever the form says."""
    check_action(action)
    if not parts.authorizer.grant(current_principal.get()).admin:
        await _refused_by_the_rpc(parts, name, action)
    ids = [event.event_id for event in await all_parked(parts, name)]
    check_confirmed(ids, form)
    # The confirmed events by id, never "all" (an empty list to ReplayParked):
    # an event parked after the confirmation is not acted on unconfirmed.
    if action == "dismiss-all":
        # All or none, in one transaction: a failure midway (the store went
        # away) leaves every confirmed event parked, not the first batches
        # dismissed and the page saying nothing of them.
        return Done(*await parts.groups.dismiss_confirmed(name, ids))
    return await _in_batches(parts, name, ids, _replay)


async def _refused_by_the_rpc(parts: Parts, name: str, action: str) -> None:
    """The RPC refuses a caller without the admin grant before it reads
    anything else (and audits the refusal): let it say so."""
    if action == "replay-all":
        await parts.groups.ReplayParked(groups_pb.ReplayParkedRequest(group=name), _NO_CONTEXT)
    else:
        await parts.groups.DismissParked(groups_pb.DismissParkedRequest(group=name), _NO_CONTEXT)


async def _in_batches(
    parts: Parts, name: str, event_ids: list[str], act: Callable[[Parts, str, list[str]], Awaitable[int]]
) -> Done:
    """``act`` (``ReplayParked``: a replay only marks events, each batch
    standing on its own) a hundred ids at a time (its most), each batch all
    or none; a batch refused because one
    of its events left the parked list meanwhile (its replay was
    acknowledged) is acted on one by one."""
    acted = gone = 0
    for start in range(0, len(event_ids), _BATCH):
        batch = event_ids[start : start + _BATCH]
        try:
            acted += await act(parts, name, batch)
        except ResourceNotFound as error:
            if error.reason != "PARKED_EVENT_NOT_FOUND":
                raise
            for event_id in batch:
                try:
                    acted += await act(parts, name, [event_id])
                except ResourceNotFound as one:
                    if one.reason != "PARKED_EVENT_NOT_FOUND":
                        raise
                    gone += 1
    return Done(acted, gone)


async def _replay(parts: Parts, name: str, event_ids: list[str]) -> int:
    answer = await parts.groups.ReplayParked(
        groups_pb.ReplayParkedRequest(group=name, event_ids=event_ids), _NO_CONTEXT
    )
    return int(answer.replaying)


async def _dismiss(parts: Parts, name: str, event_ids: list[str]) -> int:
    answer = await parts.groups.DismissParked(
        groups_pb.DismissParkedRequest(group=name, event_ids=event_ids), _NO_CONTEXT
    )
    return int(answer.dismissed)


async def replay_parked(parts: Parts, name: str, event_id: str) -> int:
    """ReplayParked of one event as the RPC runs it: the admin grant, audited."""
    return await _replay(parts, name, [event_id])


async def dismiss_parked(parts: Parts, name: str, event_id: str) -> int:
    """DismissParked of one event as the RPC runs it: the admin grant, audited."""
    return await _dismiss(parts, name, [event_id])


def notice_of(action: str, done: Done) -> str:
    verb = "Replaying" if action == "replay-all" else "Dismissed"
    told = f"{verb} {done.acted} parked event(s)."
    if done.gone:
        told += f" {done.gone} left the parked list meanwhile (their replay was acknowledged)."
    return told


def changed_notice(changed: Changed) -> str:
    return (
        f"The group's parked events changed since you confirmed ({changed.confirmed} then, {changed.now} now):"
        " nothing was done. Confirm again."
    )


def parked_action_form(name: str, action: str, event_id: str, csrf_token: str) -> Html:
    """The Replay or Dismiss button of one parked event."""
    return tag(
        "form",
        void("input", type="hidden", name="csrf_token", value=csrf_token),
        void("input", type="hidden", name="event_id", value=event_id),
        tag("button", action.capitalize(), type="submit"),
        method="post",
        action=url(group_path(name, action)),
        class_=action,
        data_event=event_id,
    )


def parked_table(
    name: str, parked: Sequence[groups_pb.GroupParkedEvent], *, admin: bool, csrf_token: str
) -> list[Content]:
    rows = []
    for event in parked:
        row: list[Content] = [
            event.position,
            link(url("/aggregates/" + segment(event.aggregate_id)), Name(event.aggregate_id)),
            tag("code", event.event_id),
            event.event_type or "unknown",
            _parked_at(event),
            event.attempts,
            event.reason,
        ]
        if admin:
            replay = "replaying" if event.replaying else parked_action_form(name, "replay", event.event_id, csrf_token)
            row.append(Html(replay + parked_action_form(name, "dismiss", event.event_id, csrf_token)))
        rows.append(row)
    headings = ["position", "aggregate", "event id", "type", "parked at", "attempts", "last reason"]
    content: list[Content] = [tag("h2", "Parked events")]
    if admin and parked:
        content.append(
            tag(
                "p",
                link(url(group_path(name, "confirm"), action="replay-all"), "Replay all…", class_="replay-all"),
                " ",
                link(url(group_path(name, "confirm"), action="dismiss-all"), "Dismiss all…", class_="dismiss-all"),
                class_="actions",
            )
        )
    content.append(table(headings + ([""] if admin else []), rows, empty="none parked", id="parked"))
    return content


def _parked_at(event: groups_pb.GroupParkedEvent) -> str:
    """When it was parked, in UTC; "unknown" for an event parked by a server
    from before that was kept."""
    if not event.HasField("parked_at"):
        return "unknown"
    return event.parked_at.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- consumers --------------------------------------------------------------------


def _seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _ago(seconds: float) -> str:
    return f"{seconds:.1f} s ago" if seconds < 10 else f"{seconds:.0f} s ago"


def _connected_since(seconds: float, now: datetime | None = None) -> str:
    """When a consumer joined, ``seconds`` ago (by the store's clock; shown
    at this replica's), and for how long: "2026-12-06 13:45:02 UTC (for 5 min)"."""
    joined = (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    whole = int(seconds)
    if whole < 60:
        lasted = f"{whole} s"
    elif whole < 3600:
        lasted = f"{whole // 60} min"
    else:
        lasted = f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{joined:%Y-%m-%d %H:%M:%S} UTC (for {lasted})"


def silent(parts: Parts, consumer: groups_pb.GroupConsumer) -> bool:
    """Whether the consumer's session missed two heartbeats' reports (each
    replica reports every ``interval``: the cluster's lease time over three,
    read from this replica's, as the cluster shares one): its replica stopped
    or cannot reach the store, and its lease still holds its segments."""
    return consumer.HasField("since_last_heard") and _seconds(consumer.since_last_heard) > 2 * parts.leases.interval


def not_answering(group: groups_pb.GroupInfo, consumer: groups_pb.GroupConsumer) -> bool:
    """Whether the consumer holds events in flight and has not acked or
    nacked for longer than the group's ack timeout, as its session last
    reported: a process stopped (SIGSTOP) or stuck while its connection and
    its replica's heartbeats go on looks healthy otherwise."""
    return (
        consumer.in_flight > 0
        and consumer.HasField("since_last_answer")
        and _seconds(consumer.since_last_answer) > _seconds(group.ack_timeout)
    )


def _cut_rule(group: groups_pb.GroupInfo) -> str:
    """When the server cuts a consumer that does not answer
    (``service/groups.py``: ``_count_unanswered``, ``_check_stall``)."""
    stalled = (
        "once a write to it waits an ack timeout (it stopped reading: CONSUMER_STALLED), its events and"
        " segments going to the other consumers"
    )
    if not group.max_unanswered_timeouts:
        return f"the server cuts it only {stalled}; never for not answering (max_unanswered_timeouts 0)"
    return (
        f"the server cuts it after {group.max_unanswered_timeouts} ack timeouts in a row with no ack or nack"
        f" (CONSUMER_UNRESPONSIVE), or {stalled}"
    )


def consumers_table(
    parts: Parts, consumers: Sequence[groups_pb.GroupConsumer], group: groups_pb.GroupInfo | None = None
) -> Html:
    """Each live consumer: its segments, the replica it is connected to and
    since when, its events in flight and its last ack or nack, as its session last
    reported to the store (the same on every replica), and how long ago
    that was; a silent one says so, with when its lease lapses; one not
    answering (``not_answering``, given its ``group``) says so, with
    when the server cuts it."""
    me = parts.leases.member_id
    rows = []
    for consumer in consumers:
        reported = consumer.HasField("since_last_heard")
        if not reported:
            replica: Content = "not reported yet"
        elif consumer.replica_id == me:
            replica = "this replica"
        else:
            replica = tag("span", f"{consumer.replica_address} ({consumer.replica_id[:8]})", class_="replica")
        answered: Content = (
            _ago(_seconds(consumer.since_last_answer)) if consumer.HasField("since_last_answer") else "none yet"
        )
        if group is not None and not_answering(group, consumer):
            answered = tag(
                "span",
                f"not answering: {answered}, past the ack timeout ({_seconds(group.ack_timeout):g} s) with"
                f" {consumer.in_flight} event(s) in flight; {_cut_rule(group)}",
                class_="error not-answering",
            )
        heard: Content = _ago(_seconds(consumer.since_last_heard)) if reported else ""
        # Unset before its first report, or reported by a replica of an older version.
        connected = _connected_since(_seconds(consumer.since_connected)) if consumer.HasField("since_connected") else ""
        if silent(parts, consumer):
            lapses = max(0.0, parts.leases.ttl - _seconds(consumer.since_last_heard))
            heard = tag(
                "span",
                f"silent: last heard {heard}; holds its segments until its lease lapses (in about {lapses:.0f} s)",
                class_="error silent",
            )
        rows.append(
            (
                consumer.consumer,
                ", ".join(str(s) for s in consumer.segments),
                replica,
                connected,
                consumer.in_flight if reported else "",
                answered if reported else "",
                heard,
            )
        )
    headings = [
        "consumer",
        "segments",
        "connected to",
        "connected since",
        "in flight",
        "last ack or nack",
        "last heard",
    ]
    return table(headings, rows, empty="no live consumer", id="consumers")


# The settings UpdateGroup changes (the segments are fixed for a group's
# life), each with how the form names it and whether it is a duration.
UPDATABLE = (
    ("ack_timeout", "ack timeout (s)", True),
    ("max_delivery_attempts", "max delivery attempts", False),
    ("max_unanswered_timeouts", "max unanswered timeouts (0: never)", False),
    ("retry_backoff", "retry backoff (s)", True),
    ("max_retry_backoff", "max retry backoff (s)", True),
)
_MAX_SETTING_TEXT = 20


def _exact_seconds(duration: duration_pb2.Duration) -> str:
    """A duration in seconds, exactly (a form sends back what it shows)."""
    value = Decimal(duration.seconds) + Decimal(duration.nanos) / 1_000_000_000
    return format(value.normalize(), "f")


def settings_form(name: str, group: groups_pb.GroupInfo, csrf_token: str) -> Html:
    """An administrator's form to change the updatable settings
    (``UpdateGroup``: the admin grant, audited by the RPC)."""
    fields: list[Content] = [void("input", type="hidden", name="csrf_token", value=csrf_token)]
    for field, label, duration in UPDATABLE:
        value = getattr(group, field)
        shown = _exact_seconds(value) if duration else str(value)
        fields.append(
            tag("label", label, " ", void("input", type="text", name=field, value=shown, size=8, inputmode="decimal"))
        )
    fields.append(tag("button", "Update settings", type="submit"))
    return tag("form", *fields, method="post", action=url(group_path(name, "settings")), class_="settings")


def update_request(name: str, form: dict[str, str]) -> groups_pb.UpdateGroupRequest:
    """``UpdateGroup``'s request from the form: each non-empty field, a
    whole number or (a duration) seconds; anything else is refused
    (``BAD_GROUP_SETTING``), not guessed at. The RPC checks the ranges."""
    request = groups_pb.UpdateGroupRequest(name=name)
    for field, _, duration in UPDATABLE:
        text = form.get(field, "").strip()
        if not text:
            continue
        number = _setting_number(field, text, whole=not duration)
        if duration:
            getattr(request, field).FromNanoseconds(int(number * 1_000_000_000))
        else:
            setattr(request, field, int(number))
    return request


def _setting_number(field: str, text: str, *, whole: bool) -> Decimal:
    try:
        number = Decimal(text) if len(text) <= _MAX_SETTING_TEXT and text.isascii() else None
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite() or number < 0 or (whole and number != number.to_integral_value()):
        kind = "a whole number" if whole else "a number of seconds"
        raise InvalidInput.for_field(field, f"must be {kind}, not {text[:40]!r}", reason="BAD_GROUP_SETTING")
    if number >= 2**32:
        raise InvalidInput.for_field(field, "is too large", reason="BAD_GROUP_SETTING")
    return number


async def update_settings(parts: Parts, name: str, form: dict[str, str]) -> str:
    """UpdateGroup as the RPC runs it (the admin grant, audited; a setting
    it refuses is its refusal); the settings as they are now, to tell. To
    a caller who is no administrator, the RPC's refusal before the form is
    read: a refusal of a value would tell them what the form takes."""
    if not parts.authorizer.grant(current_principal.get()).admin:
        await parts.groups.UpdateGroup(groups_pb.UpdateGroupRequest(name=name), _NO_CONTEXT)
    answer = await parts.groups.UpdateGroup(update_request(name, form), _NO_CONTEXT)
    group = answer.group
    return (
        f"Settings of group {name} updated: ack timeout {_exact_seconds(group.ack_timeout)} s,"
        f" max delivery attempts {group.max_delivery_attempts}, max unanswered timeouts"
        f" {group.max_unanswered_timeouts}, retry backoff {_exact_seconds(group.retry_backoff)} s, max retry"
        f" backoff {_exact_seconds(group.max_retry_backoff)} s."
    )


def settings_table(group: groups_pb.GroupInfo) -> Html:
    """The group's delivery settings, as ListGroups answers them."""
    unanswered = group.max_unanswered_timeouts
    rows: list[tuple[Content, Content, Content]] = [
        ("ack timeout", f"{_seconds(group.ack_timeout):g} s", "an event not acked or nacked by then goes again"),
        ("max delivery attempts", group.max_delivery_attempts, "deliveries of an event before it is parked"),
        (
            "max unanswered timeouts",
            unanswered or "0 (never)",
            "ack timeouts in a row without an answer after which a consumer is cut",
        ),
        (
            "retry backoff",
            f"{_seconds(group.retry_backoff):g} s",
            "the wait before a nacked or timed-out event goes again, doubling each time",
        ),
        ("max retry backoff", f"{_seconds(group.max_retry_backoff):g} s", "the most that wait grows to"),
        ("segments", group.segments, "the most consumers that share its events"),
    ]
    return table(["setting", "value", "meaning"], rows, id="settings")


# -- pages ----------------------------------------------------------------------


async def groups_page(parts: Parts) -> tuple[str, list[Content]]:
    listed = await parts.groups.ListGroups(groups_pb.ListGroupsRequest(), _NO_CONTEXT)
    rows = [
        (
            link(url(group_path(group.name)), group.name),
            group.position,
            group.log_head,
            tag("span", group.lag, class_="lag", data_group=group.name),
            group.acknowledged,
            tag("span", group.parked, class_="parked" + (" error" if group.parked else ""), data_group=group.name),
            group.skipped,
            group.dismissed,
            ", ".join(
                f"{c.consumer} ({len(c.segments)}{', silent' if silent(parts, c) else ''})" for c in group.consumers
            )
            or "none",
        )
        for group in listed.groups
    ]
    return "Groups", [
        tag(
            "p",
            "Subscription groups the server keeps the position of, shared by their consumers; refreshed every two"
            " seconds. Only groups you may consume (a consume grant names them, and you may subscribe to their every"
            " aggregate type) are listed; to an administrator, every group.",
            class_="summary",
        ),
        table(
            [
                "group",
                "position",
                "log head",
                "lag",
                "acknowledged",
                "parked",
                "skipped",
                "dismissed",
                "consumers (segments)",
            ],
            rows,
            empty="no group you may consume",
            id="groups",
        ),
    ]


async def group_page(
    parts: Parts, name: str, query: dict[str, str], csrf_token: str, notice: str = ""
) -> tuple[str, list[Content]]:
    # ListParked first: it refuses a group that does not exist or that the
    # caller may not consume, as the RPC does.
    # Pages follow ListParked's token (?page=): paging by position (?after=,
    # still read) would pass over the rest of a split event's pieces.
    after = query_number(query, "after", default=0, reason="INVALID_POSITION", minimum=0)
    request = groups_pb.ListParkedRequest(
        group=name, after_position=after, limit=PARKED_PAGE_SIZE, page_token=query.get("page", "")
    )
    parked = await parts.groups.ListParked(request, _NO_CONTEXT)
    listed = await parts.groups.ListGroups(groups_pb.ListGroupsRequest(), _NO_CONTEXT)
    admin = parts.authorizer.grant(current_principal.get()).admin
    content: list[Content] = []
    if notice:  # what this session's last action here did (never from the address)
        content.append(tag("p", notice, class_="notice", id="notice"))
    for group in listed.groups:
        if group.name != name:
            continue
        content.append(
            tag(
                "p",
                f"At position {group.position} of {group.log_head} (lag {group.lag}); {group.acknowledged}"
                f" acknowledged, {group.parked} parked, {group.skipped} skipped, {group.dismissed} dismissed;"
                f" at most {group.max_delivery_attempts} deliveries of an"
                f" event; {group.segments} segments.",
                class_="summary",
                id="group-summary",
            )
        )
        content.append(tag("h2", "Settings"))
        content.append(settings_table(group))
        if admin:
            content.append(settings_form(name, group, csrf_token))
        content.append(tag("h2", "Consumers"))
        content.append(consumers_table(parts, group.consumers, group))
    content.extend(parked_table(name, parked.parked, admin=admin, csrf_token=csrf_token))
    if parked.next_page_token:
        following = url(group_path(name), page=parked.next_page_token)
        content.append(link(following, "Next page →", class_="next"))
    return name, content
