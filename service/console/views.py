"""The console's pages: each reads through the same servicers the gRPC
API runs (``EventService``, ``ProjectionService``, ``ReactionService``,
``ClusterService``, ``SubscriptionGroupService``; ``AdminService`` for the
audit page, ``audit``),
with the logged-in principal as the caller, so the same authorizer decides
what it may see; a listing the API does not have (aggregates by prefix)
asks the ``Authorizer`` the RPCs ask, and leaves out what may not be read.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from chronicle.v1 import event_pb2
from chronicle.v1 import event_service_pb2 as events_pb
from chronicle.v1 import projection_service_pb2 as projections_pb
from chronicle.v1 import reaction_service_pb2 as reactions_pb
from service.api.admin_service import AdminService
from service.api.cluster_service import ClusterService
from service.api.codec import MAX_VERSION
from service.api.event_service import EventService
from service.api.group_service import SubscriptionGroupService
from service.api.projection_service import ProjectionService
from service.api.reaction_service import ReactionService
from service.cluster.leases import LeaseKeeper
from service.cluster.ownership import Ownership
from service.console.charts import Series, line_chart
from service.console.consoles import console_of
from service.console.cursors import Cursors
from service.console.html import Content, Html, Name, join, link, segment, table, tag, url, void
from service.console.load import LoadSampler
from service.console.tail_resume import TailResume
from service.errors import ChronicleError, InvalidInput, PermissionDenied, StoreUnavailable
from service.plugins.registry import Registry
from service.principal import Principal, current_principal
from service.processing.projections import Projections
from service.security.policy import Authorizer
from service.store.base import EventRecorder, LogReader

PAGE_SIZE = 50
EVENTS_PER_PAGE = 100
TAIL_BACKLOG = 50
# The servicers take gRPC's context and do not use it on these paths.
_NO_CONTEXT = cast(Any, None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Parts:
    """What the pages read from: the servicers and the parts behind them."""

    registry: Registry
    authorizer: Authorizer
    events: EventService
    projections: ProjectionService
    reactions: ReactionService
    cluster: ClusterService
    groups: SubscriptionGroupService
    admin: AdminService  # the audit log (QueryAudit)
    aggregates: EventRecorder  # aggregates by prefix (no RPC lists them)
    log: LogReader
    runners: Projections
    ownership: Ownership
    leases: LeaseKeeper
    load: LoadSampler | None
    projections_group: str


def to_json(message: Message) -> str:
    """A message as indented JSON, an ``Any`` resolved through the
    descriptors the plugins registered (an unknown type: its bytes in base64)."""
    try:
        data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    except (TypeError, KeyError):  # a type no loaded plugin declares
        data = {"undecodable_base64": base64.b64encode(message.SerializeToString()).decode()}
    return json.dumps(data, indent=2, ensure_ascii=False)


def payload_json(event: event_pb2.Event) -> str:
    if event.redacted:
        return "(forgotten: the aggregate's key was erased)"
    try:
        return json.dumps(
            json_format.MessageToDict(event.payload, preserving_proto_field_name=True),
            indent=2,
            ensure_ascii=False,
        )
    except (TypeError, KeyError):
        return json.dumps(
            {"@type": event.payload.type_url, "undecodable_base64": base64.b64encode(event.payload.value).decode()}
        )


def envelope_json(event: event_pb2.Event) -> str:
    envelope = event_pb2.Event()
    envelope.CopyFrom(event)
    envelope.ClearField("payload")
    return json.dumps(
        json_format.MessageToDict(envelope, preserving_proto_field_name=True), indent=2, ensure_ascii=False
    )


def when(event: event_pb2.Event) -> str:
    return event.timestamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def error_box(error: ChronicleError) -> Html:
    return tag("p", tag("strong", error.reason), ": ", error.message, class_="error")


# -- the log ------------------------------------------------------------------


def _check_reads_some(parts: Parts, principal: Principal) -> None:
    """``READ_DENIED`` for a principal that may read no aggregate type, as
    the API refuses it (``EventService``'s wait for a position, on the same
    rule): such a principal learns nothing of the log, not even how far it
    has grown."""
    known = [aggregate.name for aggregate in parts.registry.aggregates]
    if parts.authorizer.enforcing and not parts.authorizer.may_read_any(principal, known):
        who = principal.name or "an anonymous caller"
        raise PermissionDenied(
            f"{who} may not read any aggregate type", reason="READ_DENIED", metadata={"principal": principal.name}
        )


async def log_page(parts: Parts, query: dict[str, str], *, cursors: Cursors, session: str) -> tuple[str, list[Content]]:
    """Aggregates by id or prefix, those the caller may read. ``session``
    binds the *Next page* cursor (sealed by ``cursors``: it may name an
    aggregate the caller may not read) to the session and the listing."""
    principal = current_principal.get()
    _check_reads_some(parts, principal)
    prefix = query.get("q", "").strip()
    bound_to = f"log\x00{session}\x00{prefix}"
    after = query.get("after", "")
    last_seen = cursors.open(after, bound_to=bound_to, field="after") if after else ""
    shown = []
    exhausted = False
    # Aggregates the caller may not read are left out; a page that held only
    # those is skipped over, a bounded number of times.
    for _ in range(20):
        batch = await parts.aggregates.list_aggregates(prefix, after=last_seen, limit=PAGE_SIZE)
        for aggregate in batch:
            # By id: a tenant-scoped grant shows its tenant's aggregates alone.
            if parts.authorizer.may_read_id(principal, aggregate.aggregate_type, aggregate.aggregate_id):
                shown.append(aggregate)
        if len(batch) < PAGE_SIZE:
            exhausted = True
            break
        last_seen = batch[-1].aggregate_id
        if len(shown) >= PAGE_SIZE:
            break
    # The next page starts after the last aggregate shown on a full page, or,
    # when the bounded scan gave up short of one, after the last one it read:
    # a run of aggregates the caller may not read never ends the listing.
    # That one may be unreadable, so the link carries it sealed, never as is.
    resume_after = shown[PAGE_SIZE - 1].aggregate_id if len(shown) >= PAGE_SIZE else last_seen
    shown = shown[:PAGE_SIZE]
    head = await parts.log.log_head()
    search = tag(
        "form",
        tag("label", "Aggregate id or prefix ", void("input", type="search", name="q", value=prefix, autofocus="")),
        tag("button", "Find", type="submit"),
        method="get",
        action="/log",
        class_="search",
    )
    rows = [
        (link(url("/aggregates/" + segment(a.aggregate_id)), Name(a.aggregate_id)), a.aggregate_type, a.version)
        for a in shown
    ]
    more: list[Content] = []
    if after:
        more.append(link(url("/log", q=prefix), "← First page", class_="first"))
    if not exhausted:
        cursor = cursors.seal(resume_after, bound_to=bound_to)
        more.append(link(url("/log", q=prefix, after=cursor), "Next page →", class_="next"))
    return "Log", [
        tag("p", f"The log's head is at position {head}.", class_="summary"),
        search,
        table(["aggregate", "type", "version"], rows, empty="no aggregate you may read matches", id="aggregates"),
        tag("nav", *more, class_="pages") if more else "",
    ]


async def aggregate_page(parts: Parts, aggregate_id: str, query: dict[str, str]) -> tuple[str, list[Content]]:
    from_version = query_number(query, "from", default=1, reason="INVALID_VERSION")
    at_version = query_number(query, "version", default=0, reason="INVALID_VERSION")
    request = events_pb.ReadAggregateRequest(
        aggregate_id=aggregate_id, from_version=from_version, limit=EVENTS_PER_PAGE + 1
    )
    events = [event async for event in parts.events.ReadAggregate(request, _NO_CONTEXT)]
    if not events and from_version == 1:
        return Name(aggregate_id), [tag("p", "No aggregate has this id (it has no events).", class_="empty")]
    # A page ends after a whole version: an upcaster's pieces of one stored
    # event share its version, and the next page starts at the version after
    # (ReadAggregate never ends a page between them, so all of them are here).
    # (When the one asked for beyond the page is a piece too, the next page
    # may turn out empty.)
    more = len(events) > EVENTS_PER_PAGE
    if more:
        last_version = events[EVENTS_PER_PAGE - 1].version
        events = [event for event in events if event.version <= last_version]
    state_request = events_pb.GetAggregateRequest(aggregate_id=aggregate_id)
    if at_version:
        state_request.at_version = at_version
    try:
        state = await parts.events.GetAggregate(state_request, _NO_CONTEXT)
        state_view: list[Content] = [
            tag("p", f"{state.aggregate_type} at version {state.version}"),
            tag("pre", to_json(state.state), class_="json", id="state"),
        ]
    except ChronicleError as error:
        state_view = [error_box(error)]
    here = url("/aggregates/" + segment(aggregate_id))
    version_form = tag(
        "form",
        # The events shown stay those of this page.
        void("input", type="hidden", name="from", value=from_version) if from_version > 1 else "",
        tag(
            "label",
            "State at version ",
            void("input", type="number", name="version", min="1", value=at_version or None),
        ),
        tag("button", "Show", type="submit"),
        method="get",
        action=here,
    )
    rows = [
        (
            event.version,
            event.event_type,
            event.position,
            when(event),
            tag("pre", payload_json(event), class_="json payload"),
            tag("details", tag("summary", "envelope"), tag("pre", envelope_json(event), class_="json")),
        )
        for event in events
    ]
    content: list[Content] = [
        tag("section", tag("h2", "State"), version_form, *state_view),
        tag(
            "section",
            tag("h2", "Events"),
            table(["version", "type", "position", "recorded", "payload", ""], rows, id="events"),
        ),
    ]
    # Versions follow one another, so the pages before this one are a
    # subtraction away; each link keeps the state's version.
    pages: list[Content] = []
    shown = {"version": at_version} if at_version else {}
    if from_version > 1:
        pages.append(link(url(here, **shown), "← First events", class_="first"))
        earlier = max(1, from_version - EVENTS_PER_PAGE)
        pages.append(
            link(url(here, **shown, **({"from": earlier} if earlier > 1 else {})), "← Earlier events", class_="prev")
        )
    if more:
        pages.append(link(url(here, **shown, **{"from": events[-1].version + 1}), "Later events →", class_="next"))
    if pages:
        content.append(tag("nav", *pages, class_="pages"))
    return Name(aggregate_id), content


def query_number(query: dict[str, str], name: str, *, default: int, reason: str, minimum: int = 1) -> int:
    """``?name=`` as a whole number from ``minimum`` (``default`` when
    absent or empty); anything else is ``INVALID_ARGUMENT`` (400), not
    quietly read as the default."""
    text = query.get(name, "")
    if not text:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 19) or not minimum <= int(text) <= MAX_VERSION:
        raise InvalidInput.for_field(
            name, f"must be a whole number from {minimum} to {MAX_VERSION}, not {text[:40]!r}", reason=reason
        )
    return int(text)


# -- the live tail ------------------------------------------------------------


async def tail_page(parts: Parts) -> tuple[str, list[Content]]:
    principal = current_principal.get()
    known = [aggregate.name for aggregate in parts.registry.aggregates]
    # The tail starts a few events before the log's head; to a principal who
    # may subscribe to no type (Subscribe refuses it, and says so on this
    # page) the page does not say where the head is.
    may_subscribe = any(parts.authorizer.may_subscribe_somewhere(principal, name) for name in known)
    head = await parts.log.log_head() if may_subscribe else None
    return "Live log", [
        tag(
            "p",
            f"Events as they are written, the newest on top, from the {TAIL_BACKLOG} before this page opened.",
            class_="summary",
        ),
        tag("p", "connecting…", id="tail-status", class_="status"),
        table(
            ["position", "aggregate", "version", "type", "recorded", "payload"],
            [],
            empty="no events yet",
            id="tail",
            data_after=str(max(0, head - TAIL_BACKLOG)) if head is not None else None,
        ),
    ]


def _sse(event: str, data: object, resume: str = "") -> bytes:
    """One server-sent event; ``resume`` (ASCII, no line break) as its id."""
    head = f"id: {resume}\n" if resume else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def tail_stream(
    parts: Parts,
    after: int,
    *,
    resume: TailResume | None = None,
    keepalive: float = 15.0,
    on_refused: Callable[[ChronicleError], Awaitable[None]] | None = None,
) -> AsyncIterator[bytes]:
    """Server-sent events: each event of the log after ``after`` that the
    caller may subscribe to (Subscribe's own rule), as JSON; a comment now
    and then so that a browser that left is noticed. Each event and
    checkpoint carries, as its SSE id, where to resume (``TailResume``:
    ``resume`` passes over the pieces of a split event shown before).
    ``on_refused`` hears of the refusal that ends it (the audit log)."""
    resume = resume if resume is not None else TailResume.starting(after)
    # With the id of the event the tail saw at ``after`` (a page reconnecting):
    # a log that went back under it since is refused (LOG_REWOUND), not skipped.
    request = events_pb.SubscribeRequest(after_position=after, after_event_id=resume.after_id, pages=True)
    stream = parts.events.Subscribe(request, _NO_CONTEXT)
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=4)

    async def pump() -> None:
        try:
            async for item in stream:
                await queue.put(item)
            await queue.put(None)
        except ChronicleError as error:
            await queue.put(error)

    task = asyncio.get_running_loop().create_task(pump(), name="console-tail")
    try:
        yield b"retry: 3000\n\n"
        while True:
            try:
                async with asyncio.timeout(keepalive):
                    item = await queue.get()
            except TimeoutError:
                yield b": still here\n\n"
                continue
            if item is None:
                yield _sse("end", "the server is closing this stream")
                return
            if isinstance(item, ChronicleError):
                if on_refused is not None:
                    await on_refused(item)
                yield _sse("refused", f"{item.reason}: {item.message}")
                return
            response = cast(events_pb.SubscribeResponse, item)
            if response.HasField("page"):
                events = response.page.events
                for index, event in enumerate(events):
                    # The last of its position: the next event is at a higher one, or the server said so.
                    completes = (
                        response.completes_position
                        if index == len(events) - 1
                        else events[index + 1].position > event.position
                    )
                    if resume.passes_over(event.position, completes, event.event_id):
                        continue
                    resume.showed(event.position, completes, event.event_id)
                    yield _sse(
                        "event",
                        {
                            "position": event.position,
                            "aggregate_id": event.aggregate_id,
                            "aggregate_type": event.aggregate_type,
                            "version": event.version,
                            "event_type": event.event_type,
                            "recorded": when(event),
                            "payload": payload_json(event),
                        },
                        resume.query(),
                    )
            elif response.HasField("checkpoint") or response.HasField("caught_up"):
                mark = response.checkpoint if response.HasField("checkpoint") else response.caught_up
                resume.covered(mark.position, mark.event_id)
                yield _sse("checkpoint", mark.position, resume.query())
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await cast(Any, stream).aclose()


# -- projections ----------------------------------------------------------------


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(seconds))


@dataclass(frozen=True, slots=True)
class Runners:
    """Who runs each projection and reaction (their leases share one
    group), as this replica's last heartbeat saw the leases."""

    me: str
    owners: dict[str, str | None]
    addresses: dict[str, str]
    consoles: dict[str, str]  # each member's console URL ("" when it serves none)

    @classmethod
    def of(cls, parts: Parts) -> Runners:
        view = parts.leases.view(parts.projections_group)
        members = view.members if view is not None else ()
        return cls(
            parts.leases.member_id,
            {lease.name: lease.owner for lease in view.leases} if view is not None else {},
            {member.member_id: member.address for member in members},
            {member.member_id: member.console for member in members},
        )

    def elsewhere(self, name: str) -> bool:
        owner = self.owners.get(name)
        return bool(owner) and owner != self.me

    def runs_on(self, name: str) -> Content:
        owner = self.owners.get(name)
        if owner == self.me:
            return "this replica"
        if owner:
            replica = tag("span", f"{self.addresses.get(owner) or 'address not known'} ({owner[:8]})", class_="replica")
            console = console_of(self.consoles.get(owner, ""))
            return join([replica, " ", console]) if console else replica
        return "nobody now"


class _Progress(Protocol):
    """What GetProjection and GetReaction both answer of a runner here."""

    running: bool
    error: str
    last_error: str

    @property
    def last_error_time(self) -> timestamp_pb2.Timestamp: ...


def state_here(runners: Runners, name: str, status: _Progress) -> tuple[Content, Content]:
    """Its status here (a span) and its error: ``error`` is what holds it
    here now (the servicers report nothing for one another replica runs);
    ``last_error`` what it met here, kept once over."""
    if status.running and status.error:
        return tag("span", "failed", class_="state-failed"), tag("pre", status.error, class_="error")
    if status.running:
        state, kind = "running here", "running"
    elif runners.elsewhere(name):
        state, kind = "runs on another replica", "elsewhere"
    else:
        state, kind = "not running", "not"
    past: list[Content] = []
    if runners.elsewhere(name):
        past.append(tag("p", "Its errors, if any, are on the replica that runs it.", class_="note"))
    if not status.running and status.error:
        # A projection stopped at an event: its runner stored the failure for every replica.
        past.append(tag("p", "Stopped at an event, as the replica that runs it says:", class_="note"))
        past.append(tag("pre", status.error, class_="error"))
    if status.last_error:
        seen = _utc(status.last_error_time.ToNanoseconds() / 1e9)
        past.append(tag("p", f"Over. Met here last at {seen}:", class_="note"))
        past.append(tag("pre", status.last_error, class_="past-error"))
    return tag("span", state, class_="state-" + kind), tag("div", *past) if past else ""


async def projections_page(parts: Parts, notice: str, csrf_token: str) -> tuple[str, list[Content]]:
    # ListProjections lists what the caller may read, as the RPC does.
    listed = await parts.projections.ListProjections(projections_pb.ListProjectionsRequest(), _NO_CONTEXT)
    admin = parts.authorizer.grant(current_principal.get()).admin
    runners = Runners.of(parts)

    def rebuild_form(name: str) -> Html:
        return tag(
            "form",
            void("input", type="hidden", name="csrf_token", value=csrf_token),
            tag("button", "Rebuild", type="submit"),
            method="post",
            action=url("/projections/" + segment(name) + "/rebuild"),
            class_="rebuild",
            data_projection=name,
        )

    rows = []
    for status in listed.projections:
        runner = parts.runners.runners.get(status.name)
        parking = runner.status.parking if runner is not None else None
        if status.running and status.error and parking is not None:
            state: Content = tag("span", "parking", class_="state-parking")
            error_view: Content = tag(
                "div",
                f"Attempt {parking.attempts} of {parking.max_attempts} failed on the event at position"
                f" {parking.position}: it is tried again, and parked after {parking.max_attempts} failed attempts"
                f" ({status.parked_events} parked so far).",
                tag("pre", status.error),
                class_="parking",
            )
        else:
            state, error_view = state_here(runners, status.name, status)
        lag = max(0, status.log_head - status.position)
        row: list[Content] = [
            link(url("/projections/" + segment(status.name)), status.name),  # its parked events
            ", ".join(status.aggregate_types) or "(all)",
            status.position,
            status.log_head,
            tag("span", lag, class_="lag", data_projection=status.name),
            state,
            runners.runs_on(status.name),
            status.parked_events,
            error_view,
        ]
        if admin:
            row.append(rebuild_form(status.name))
        rows.append(row)
    headings = [
        "projection",
        "aggregate types",
        "position",
        "log head",
        "lag",
        "status",
        "runs on",
        "parked",
        "error",
    ]
    content: list[Content] = []
    if notice:  # what this session's last action here did (never from the address)
        content.append(tag("p", notice, class_="notice", id="notice"))
    content += [
        tag(
            "p",
            "Refreshed every two seconds. A projection runs in one replica at a time. Its position (the"
            " checkpoint), lag and parked events are read from the store, the same from every replica, and so"
            " is a stop at an event (a handler's failure); its other errors are known only to the replica it"
            " ran on.",
            class_="summary",
        ),
        table(headings + ([""] if admin else []), rows, empty="no projection you may read", id="projections"),
    ]
    return "Projections", content


async def reactions_page(parts: Parts) -> tuple[str, list[Content]]:
    # ListReactions lists what the caller may read, as the RPC does.
    listed = await parts.reactions.ListReactions(reactions_pb.ListReactionsRequest(), _NO_CONTEXT)
    runners = Runners.of(parts)
    rows: list[list[Content]] = []
    for status in listed.reactions:
        state, error_view = state_here(runners, status.name, status)
        rows.append(
            [
                link(url("/reactions/" + segment(status.name)), status.name),  # its parked commands
                ", ".join(status.aggregate_types) or "(all)",
                status.position,
                status.log_head,
                tag("span", max(0, status.log_head - status.position), class_="lag", data_reaction=status.name),
                state,
                runners.runs_on(status.name),
                status.parked,
                error_view,
            ]
        )
    headings = ["reaction", "aggregate types", "position", "log head", "lag", "status", "runs on", "parked", "error"]
    return "Reactions", [
        tag(
            "p",
            "Refreshed every two seconds. A reaction runs in one replica at a time. Its position (the"
            " checkpoint), lag and parked commands are read from the store, the same from every replica; its"
            " errors are known only to the replica it ran on. A reaction's page lists its parked commands; the"
            " replica that runs it replays or dismisses them.",
            class_="summary",
        ),
        table(headings, rows, empty="no reaction you may read", id="reactions"),
    ]


async def rebuild_projection(parts: Parts, name: str) -> None:
    """RebuildProjection as the RPC runs it: the admin grant, audited."""
    await parts.projections.RebuildProjection(projections_pb.RebuildProjectionRequest(name=name), _NO_CONTEXT)


# -- load -----------------------------------------------------------------------


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


async def load_page(parts: Parts) -> tuple[str, list[Content]]:
    """Server-wide counts: every principal's commands, their latency and
    their refusals by reason, of every aggregate type. No grant reads them
    by type (the metrics carry none per principal), so with ``--auth`` they
    are an administrator's, as ``/metrics`` is the operator's: ADMIN_DENIED
    to anyone else, audited as a refused page."""
    if parts.authorizer.enforcing:
        parts.authorizer.check_admin(current_principal.get(), "see the server's load")
    sampler = parts.load
    if sampler is None:
        return "Load", [tag("p", "Metrics are off on this server.", class_="empty")]
    samples = list(sampler.samples)
    minutes = sampler.window / 60
    # The charts span the samples there are: up to the window, less on a
    # server that started a moment ago.
    covered = sum(s.seconds for s in samples)
    span = f"-{covered / 60:.0f} min" if covered >= 120 else f"-{covered:.0f} s"

    def values(pick: Any) -> list[float | None]:
        return [pick(s) for s in samples]

    charts = [
        line_chart(
            "Commands",
            [Series("commands/s", values(lambda s: s.commands_per_second))],
            unit="per second",
            span_label=span,
        ),
        line_chart(
            "Command latency",
            [
                Series("p50", values(lambda s: _ms(s.p50))),
                Series("p95", values(lambda s: _ms(s.p95))),
                Series("p99", values(lambda s: _ms(s.p99))),
            ],
            unit="ms",
            span_label=span,
        ),
        line_chart(
            "Conflicts and refusals",
            [
                Series("conflicts/s", values(lambda s: s.conflicts_per_second)),
                Series("refusals/s", values(lambda s: s.refusals_per_second)),
            ],
            unit="per second",
            span_label=span,
        ),
    ]
    by_reason: dict[str, float] = {}
    for sample in samples:
        for reason, count in sample.refusals.items():
            by_reason[reason] = by_reason.get(reason, 0) + count
    total_seconds = sum(s.seconds for s in samples)
    commands = sum(s.commands_per_second * s.seconds for s in samples)
    return "Load", [
        tag(
            "p",
            f"Up to the last {minutes:g} minutes, one sample every {sampler.interval:g} s: {commands:.0f} commands"
            f" in {total_seconds:.0f} s.",
            class_="summary",
            id="load-summary",
        ),
        tag("div", *charts, class_="charts"),
        tag("h2", "Refusals by reason"),
        table(
            ["reason", "count"],
            [(reason, f"{count:.0f}") for reason, count in sorted(by_reason.items(), key=lambda kv: -kv[1])],
            empty="none in this window",
            id="refusals",
        ),
    ]


# -- cluster --------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def _lapse(value: float | None) -> str:
    """Time left before a lease or membership lapses; past it (this
    replica has not heard from the store since), "lapsed", not a negative time."""
    return "lapsed" if value is not None and value <= 0 else _seconds(value)


async def _readable_runner_kinds(parts: Parts) -> dict[str, str]:
    """The projections and reactions the caller may list, each with its kind."""
    projections = await parts.projections.ListProjections(projections_pb.ListProjectionsRequest(), _NO_CONTEXT)
    reactions = await parts.reactions.ListReactions(reactions_pb.ListReactionsRequest(), _NO_CONTEXT)
    kinds = {status.name: "reaction" for status in reactions.reactions}
    kinds.update((status.name, "projection") for status in projections.projections)
    return kinds


async def cluster_page(parts: Parts) -> tuple[str, list[Content]]:
    topology = parts.ownership.topology()
    me = parts.leases.member_id
    counts: dict[str, int] = {}
    for owner in topology.owners:
        counts[owner] = counts.get(owner, 0) + 1
    # Every replica's soonest partition lease lapse, as the store said at
    # this replica's last heartbeat (its own, as it keeps them).
    membership_lapses, partition_lapses = parts.leases.lapsing(parts.ownership.group.name)
    soonest: dict[str, float] = {}
    for partition, owner in enumerate(topology.owners):
        lapse = partition_lapses.get(str(partition))
        if owner and lapse is not None:
            soonest[owner] = min(lapse, soonest.get(owner, lapse))
    members = [
        (
            tag("code", member.member_id),
            member.address,
            counts.get(member.member_id, 0),
            "this replica" if member.member_id == me else "",
            _lapse(soonest.get(member.member_id)),
            _lapse(membership_lapses.get(member.member_id)),
            "this console" if member.member_id == me else console_of(member.console),
            # "": a replica of a version from before members said theirs.
            member.version or "older than 0.2.0",
        )
        for member in topology.members
    ]
    # Each owner by its member id's first eight characters, as the other
    # pages name a replica, with its address (a list index named nothing
    # the rest of the page shows).
    addresses = {member.member_id: member.address for member in topology.members}
    cells = [
        tag(
            "li",
            tag("span", partition, class_="partition"),
            tag("span", owner[:8] if owner else "—", class_="owner"),
            class_="mine" if owner == me else ("free" if not owner else None),
            title=f"{owner} ({addresses.get(owner) or 'address not known'})" if owner else "no owner",
        )
        for partition, owner in enumerate(topology.owners)
    ]
    age, remaining = parts.leases.ages(parts.ownership.group.name)
    projection_age, _ = parts.leases.ages(parts.projections_group)
    projection_view = parts.leases.view(parts.projections_group)
    _, projection_lapses = parts.leases.lapsing(parts.projections_group)
    # Projections and reactions share one lease group: each lease is shown
    # only to who may list what it runs (as ListProjections and ListReactions
    # decide), and named for what it is.
    try:
        kinds: dict[str, str] | None = await _readable_runner_kinds(parts)
    except StoreUnavailable:
        # The rest of the page is in memory, and is what an operator needs
        # while the store is down: it is shown; only this table, whose
        # filter (what the caller may list) goes through the store, is not.
        kinds = None
    projection_rows = [
        (
            lease.name,
            tag("code", lease.owner) if lease.owner else "nobody",
            lease.epoch,
            _lapse(projection_lapses.get(lease.name)) if lease.owner else "",
            kinds[lease.name],
        )
        for lease in (projection_view.leases if projection_view is not None and kinds is not None else ())
        if kinds is not None and lease.name in kinds
    ]
    leases_table = (
        table(
            ["name", "held by", "epoch", "lapses in", "kind"],
            projection_rows,
            empty="no projection or reaction you may read",
            id="projection-leases",
        )
        if kinds is not None
        else tag(
            "p",
            "Not shown: the store is unavailable, and which of these leases you may see is decided through it.",
            class_="note",
            id="projection-leases-unavailable",
        )
    )
    legend = ", ".join(f"{member.member_id[:8]} = {member.address}" for member in topology.members)
    return "Cluster", [
        tag(
            "p",
            f"Topology epoch {topology.epoch}, {topology.partition_count} partitions; this replica last heard"
            f" from the store {_seconds(age)} ago.",
            class_="summary",
        ),
        tag("h2", "Replicas"),
        table(
            [
                "member",
                "address",
                "partitions",
                "",
                "soonest lease lapses in",
                "membership lapses in",
                "console",
                "version",
            ],
            members,
            empty="no live member",
            id="members",
        ),
        tag("h2", "Partition owners"),
        tag("p", legend, class_="legend-text"),
        tag("ol", *cells, class_="partitions", id="partitions"),
        tag(
            "p",
            f"This replica holds {len(remaining)} partition leases; the soonest lapses in"
            f" {_seconds(min(remaining.values(), default=None))} unless renewed.",
            class_="summary",
            id="own-leases",
        ),
        tag("h2", "Projection and reaction leases"),
        tag("p", f"Last heard {_seconds(projection_age)} ago.", class_="summary") if projection_view else "",
        leases_table,
    ]
