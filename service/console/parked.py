"""A projection's parked events (``/projections/NAME``) and a reaction's
parked commands (``/reactions/NAME``), read through ``ListParkedEvents``
and ``ListParkedCommands`` as the logged-in principal, a page at a time;
the actions on them are their RPCs (the admin grant, audited by the RPC).

Both listings are read from the store, the same on every replica, and
forgetting an aggregate deletes what was parked of it (its parked events;
a parked command whose target or cause it was), so nothing of a forgotten
aggregate reaches these pages. A rebuild (the way a projection's parked
events are applied again) works from any replica; a reaction's parked
commands are replayed and dismissed only by the replica that runs it
(``REACTION_RUNS_ELSEWHERE``): elsewhere the page names that replica and
offers no button.

The RPCs' page tokens ride in the *Next page* link sealed (``cursors``),
bound to the session and the listing, as the Log page's cursor does.
"""

from __future__ import annotations

import time
from typing import Any, cast

from chronicle.v1 import projection_service_pb2 as projections_pb
from chronicle.v1 import reaction_service_pb2 as reactions_pb
from service.console.confirming import Changed, StoppedPartway, check_confirmed, confirmation_fields
from service.console.cursors import Cursors
from service.console.html import Content, Html, Name, link, segment, table, tag, url, void
from service.console.views import Parts, Runners, state_here, to_json
from service.errors import ChronicleError, ResourceNotFound
from service.principal import current_principal

PARKED_EVENTS_PER_PAGE = 100
PARKED_COMMANDS_PER_PAGE = 100
_NO_CONTEXT = cast(Any, None)


def _utc_micros(micros: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(micros / 1e6))


def _pages(cursors: Cursors, here: str, bound_to: str, *, after: str, next_token: str) -> Content:
    """*First page* (when on a later one) and *Next page* (sealed) links."""
    links: list[Content] = []
    if after:
        links.append(link(here, "← First page", class_="first"))
    if next_token:
        links.append(link(url(here, after=cursors.seal(next_token, bound_to=bound_to)), "Next page →", class_="next"))
    return tag("nav", *links, class_="pages") if links else ""


def _form(action: str, csrf_token: str, label: str, /, **fields: str) -> Html:
    return tag(
        "form",
        void("input", type="hidden", name="csrf_token", value=csrf_token),
        *(void("input", type="hidden", name=name, value=value) for name, value in fields.items()),
        tag("button", label, type="submit"),
        method="post",
        action=action,
        class_="action",
    )


# -- a projection's parked events -------------------------------------------------


async def projection_page(
    parts: Parts, name: str, query: dict[str, str], *, cursors: Cursors, session: str, csrf_token: str
) -> tuple[str, list[Content]]:
    # GetProjection first: it refuses a projection that is not loaded, or
    # that the caller may not read, as the RPC does.
    status = await parts.projections.GetProjection(projections_pb.GetProjectionRequest(name=name), _NO_CONTEXT)
    here = "/projections/" + segment(name)
    bound_to = f"parked-events\x00{session}\x00{name}"
    after = query.get("after", "")
    token = cursors.open(after, bound_to=bound_to, field="after") if after else ""
    listed = await parts.projections.ListParkedEvents(
        projections_pb.ListParkedEventsRequest(projection=name, page_size=PARKED_EVENTS_PER_PAGE, page_token=token),
        _NO_CONTEXT,
    )
    runners = Runners.of(parts)
    state, error_view = state_here(runners, name, status)
    admin = parts.authorizer.grant(current_principal.get()).admin
    rows = [
        (
            event.position,
            link(url("/aggregates/" + segment(event.aggregate_id)), Name(event.aggregate_id)),
            tag("code", event.event_id),
            event.event_type,
            event.attempts,
            event.parked_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ") if event.HasField("parked_at") else "",
            tag("pre", event.error, class_="error"),
        )
        for event in listed.events
    ]
    advice: list[Content] = [
        "A parked event is one the projection's handler kept failing on: the projection went on without it. "
        "To apply the parked events again, fix the handler, deploy the plugin, and rebuild the projection: "
        "the rebuild clears its documents, its parked events and its checkpoint, and applies the whole log "
        "again (an event that fails again is parked again). ",
    ]
    if admin:
        advice.append(
            tag(
                "form",
                void("input", type="hidden", name="csrf_token", value=csrf_token),
                tag("button", "Rebuild", type="submit"),
                method="post",
                action=here + "/rebuild",
                class_="rebuild",
                data_projection=name,
            )
        )
    else:
        advice.append("An administrator rebuilds it.")
    version = f"Version {status.version}"
    if status.stored_version and status.stored_version != status.version:
        # The runner stops on them (PROJECTION_VERSION_CHANGED) until a rebuild.
        version += f", its stored documents built by version {status.stored_version}: rebuild it"
    return name, [
        tag(
            "p",
            f"{version}. At position {status.position} of {status.log_head}; {status.parked_events} event(s)"
            f" parked (on failure: {status.on_failure or 'stop'}). Runs on: ",
            runners.runs_on(name),
            ". Status here: ",
            state,
            class_="summary",
            id="projection-summary",
        ),
        error_view,
        tag("h2", "Parked events"),
        tag("p", *advice, class_="advice", id="advice"),
        table(
            ["position", "aggregate", "event id", "type", "attempts", "parked at", "error"],
            rows,
            empty="none parked",
            id="parked",
        ),
        _pages(cursors, here, bound_to, after=after, next_token=listed.next_page_token),
    ]


# -- a reaction's parked commands ---------------------------------------------------


async def reaction_page(
    parts: Parts,
    name: str,
    query: dict[str, str],
    *,
    cursors: Cursors,
    session: str,
    csrf_token: str,
    notice: str,
) -> tuple[str, list[Content]]:
    # GetReaction first: it refuses a reaction that is not loaded, or that
    # the caller may not read, as the RPC does.
    status = await parts.reactions.GetReaction(reactions_pb.GetReactionRequest(name=name), _NO_CONTEXT)
    here = "/reactions/" + segment(name)
    bound_to = f"parked-commands\x00{session}\x00{name}"
    after = query.get("after", "")
    token = cursors.open(after, bound_to=bound_to, field="after") if after else ""
    listed = await parts.reactions.ListParkedCommands(
        reactions_pb.ListParkedCommandsRequest(reaction=name, page_size=PARKED_COMMANDS_PER_PAGE, page_token=token),
        _NO_CONTEXT,
    )
    runners = Runners.of(parts)
    state, error_view = state_here(runners, name, status)
    admin = parts.authorizer.grant(current_principal.get()).admin
    # Only the replica that runs the reaction replays or dismisses its
    # parked commands: elsewhere a button would only be refused.
    actions = admin and status.running

    def row(command: reactions_pb.ParkedCommand) -> list[Content]:
        # A parked deadline (its function failed) has no command: its
        # process and name instead, and the aggregate of the event that
        # scheduled it.
        parked_deadline = command.HasField("deadline")
        aggregate_id = command.event_aggregate_id if parked_deadline else command.aggregate_id
        what, shown = (
            (f"deadline {command.deadline.deadline.name} of process {command.deadline.state_key}", command.deadline)
            if parked_deadline
            else (command.command.type_url.rpartition("/")[2], command.command)
        )
        cells: list[Content] = [
            command.position,
            link(url("/aggregates/" + segment(aggregate_id)), Name(aggregate_id)),
            tag("code", command.command_id),
            tag("details", tag("summary", what), tag("pre", to_json(shown), class_="json")),
            tag("code", command.reason),
            tag("pre", command.message, class_="error"),
            command.replays,
            _utc_micros(command.parked_at_us),
        ]
        if actions:
            cells.append(
                tag(
                    "div",
                    _form(here + "/replay", csrf_token, "Replay", command_id=command.command_id),
                    _form(here + "/dismiss", csrf_token, "Dismiss", command_id=command.command_id),
                    class_="actions",
                    data_command=command.command_id,
                )
            )
        return cells

    content: list[Content] = []
    if notice:  # what this session's last action here did (never from the address)
        content.append(tag("p", notice, class_="notice", id="notice"))
    content += [
        tag(
            "p",
            f"At position {status.position} of {status.log_head}; {status.parked} command(s) parked"
            " (each row says how often it was replayed). Runs on: ",
            runners.runs_on(name),
            ". Status here: ",
            state,
            class_="summary",
            id="reaction-summary",
        ),
        # GetReaction's counters are this replica's since it started, and
        # ``replayed`` is not parked commands replayed (that is each row's
        # ``replays``) but commands sent again and answered from their record.
        tag(
            "p",
            f"On this replica since it started: {status.accepted} command(s) accepted, {status.refused}"
            f" refused ({status.ignored} of those ignored as harmless by its on_refused),"
            f" {status.replayed} sent again and answered from their command record (after a crash,"
            f" a lease that moved or a batch tried again; changing nothing); {status.deadlines_fired}"
            " deadline(s) of its processes fired.",
            class_="summary",
            id="reaction-counters",
        ),
        # Counted by the store over their index (GetReaction), none read.
        tag(
            "p",
            f"{status.deadlines} deadline(s) of its processes pending"
            + (
                f"; the soonest due at {_utc_micros(status.next_deadline.ToMicroseconds())}"
                if status.HasField("next_deadline")
                else ""
            )
            + f" (chronicle reaction {name} --state KEY shows a process's).",
            class_="summary",
            id="reaction-deadlines",
        ),
        error_view,
        tag("h2", "Parked commands"),
        _where_to_act(runners, name, status, admin=admin, here=here, csrf_token=csrf_token),
        table(
            ["position", "aggregate", "command id", "command", "reason", "message", "replays", "parked at"]
            + ([""] if actions else []),
            [row(command) for command in listed.commands],
            empty="none parked",
            id="parked",
        ),
        _pages(cursors, here, bound_to, after=after, next_token=listed.next_page_token),
    ]
    return name, content


def _where_to_act(
    runners: Runners, name: str, status: reactions_pb.ReactionStatus, *, admin: bool, here: str, csrf_token: str
) -> Content:
    """What may be done about the parked commands, and where."""
    said = (
        "A parked command was refused (or failed) and not compensated. Replaying one sends it again under a"
        " new command id (accepted: it leaves the list; refused: it stays, with the new refusal); dismissing"
        " one removes it unsent. "
    )
    if not admin:
        return tag("p", said, "An administrator replays or dismisses them.", class_="advice", id="advice")
    if not status.running:
        owner = runners.owners.get(name)
        where: Content = (
            tag(
                "span",
                "Only the replica that runs this reaction replays or dismisses its parked commands: ",
                runners.runs_on(name),
                f" (its console, or chronicle reaction {name} --replay COMMAND_ID --server"
                f" {runners.addresses.get(owner, 'ADDRESS') if owner else 'ADDRESS'}).",
                class_="elsewhere",
            )
            if owner
            else "Nobody runs this reaction now: its parked commands are replayed or dismissed on the replica"
            " that takes it over."
        )
        return tag("p", said, where, class_="advice", id="advice")
    return tag(
        "div",
        tag("p", said, class_="advice", id="advice"),
        _form(here + "/replay-all", csrf_token, "Replay all…"),
        _form(here + "/dismiss-all", csrf_token, "Dismiss all…"),
        class_="bulk",
    )


async def all_parked(parts: Parts, name: str) -> list[reactions_pb.ParkedCommand]:
    """Every parked command of the reaction, oldest first
    (``ListParkedCommands``, page after page: the caller's read grant, as
    the RPC). A reaction parks at most a thousand."""
    found: list[reactions_pb.ParkedCommand] = []
    token = ""
    while True:
        page = await parts.reactions.ListParkedCommands(
            reactions_pb.ListParkedCommandsRequest(reaction=name, page_token=token), _NO_CONTEXT
        )
        found.extend(page.commands)
        token = page.next_page_token
        if not token:
            return found


def confirm_page(
    name: str, action: str, commands: list[reactions_pb.ParkedCommand], csrf_token: str, notice: str = ""
) -> tuple[str, list[Content]]:
    """The confirmation an all-action asks for before it acts: how many
    commands it takes, and the form that takes exactly those (their count
    and the digest of their ids)."""
    verb = "Replay" if action == "replay-all" else "Dismiss"
    what = (
        "sends each again, oldest first (those refused again stay parked)"
        if action == "replay-all"
        else "removes them all unsent"
    )
    here = "/reactions/" + segment(name)
    content: list[Content] = [tag("p", notice, class_="notice", id="notice")] if notice else []
    if not commands:
        content.append(tag("p", f"{name} has no parked commands: nothing to {verb.lower()}.", id="confirm"))
        return f"{verb} all parked commands of {name}?", [*content, link(here, "Back", class_="cancel")]
    content += [
        tag(
            "p",
            f"{name} has {len(commands)} parked command(s) now. This {what}. Only these are acted on: if the"
            " reaction's parked commands change before you confirm, nothing is done and you are asked again.",
            class_="summary",
            id="confirm",
            data_count=len(commands),
        ),
        _form(
            f"{here}/{action}",
            csrf_token,
            f"{verb} {len(commands)} parked command(s)",
            **confirmation_fields([command.command_id for command in commands]),
        ),
        link(here, "Cancel", class_="cancel"),
    ]
    return f"{verb} all parked commands of {name}?", content


def changed_notice(changed: Changed) -> str:
    return (
        f"The reaction's parked commands changed since you confirmed ({changed.confirmed} then, {changed.now} now):"
        " nothing was done. Confirm again."
    )


async def confirmed_commands(parts: Parts, name: str, form: dict[str, str]) -> list[reactions_pb.ParkedCommand]:
    """The parked commands, if they are those the confirmation ``form``
    (its count and digest) named; ``Changed`` otherwise."""
    commands = await all_parked(parts, name)
    check_confirmed([command.command_id for command in commands], form)
    return commands


async def refused_by_the_rpc(parts: Parts, name: str, action: str) -> str:
    """The all-RPC, for a caller who is no administrator: it refuses (and
    audits) before it acts."""
    if action == "replay-all":
        await parts.reactions.ReplayAllParkedCommands(
            reactions_pb.ReplayAllParkedCommandsRequest(reaction=name), _NO_CONTEXT
        )
    else:
        await parts.reactions.DismissAllParkedCommands(
            reactions_pb.DismissAllParkedCommandsRequest(reaction=name), _NO_CONTEXT
        )
    return ""


async def replay_command(parts: Parts, name: str, command_id: str) -> str:
    answer = await parts.reactions.ReplayParkedCommand(
        reactions_pb.ReplayParkedCommandRequest(reaction=name, command_id=command_id), _NO_CONTEXT
    )
    if answer.accepted:
        return f"Parked command {command_id} replayed as {answer.command_id}: accepted."
    return f"Parked command {command_id} replayed as {answer.command_id}: refused again ({answer.reason})."


async def dismiss_command(parts: Parts, name: str, command_id: str) -> str:
    await parts.reactions.DismissParkedCommand(
        reactions_pb.DismissParkedCommandRequest(reaction=name, command_id=command_id), _NO_CONTEXT
    )
    return f"Parked command {command_id} dismissed."


async def replay_all(parts: Parts, name: str, commands: list[reactions_pb.ParkedCommand]) -> str:
    """Replay the confirmed ``commands``, oldest first, each by its own
    ReplayParkedCommand (audited each): one parked after the confirmation is
    not sent. One that left the list meanwhile (replayed or dismissed
    elsewhere) is counted, not an error."""
    accepted = refused = gone = 0
    for parked_command in commands:
        try:
            answer = await parts.reactions.ReplayParkedCommand(
                reactions_pb.ReplayParkedCommandRequest(reaction=name, command_id=parked_command.command_id),
                _NO_CONTEXT,
            )
        except ResourceNotFound as error:
            if error.reason != "PARKED_COMMAND_NOT_FOUND":
                raise _partway(error, "Replayed", accepted + refused, gone, len(commands)) from error
            gone += 1
            continue
        except ChronicleError as error:
            raise _partway(error, "Replayed", accepted + refused, gone, len(commands)) from error
        if answer.accepted:
            accepted += 1
        else:
            refused += 1
    told = f"Replayed {accepted + refused} parked command(s): {accepted} accepted, {refused} refused again."
    return told + _left(gone)


async def dismiss_all(parts: Parts, name: str, commands: list[reactions_pb.ParkedCommand]) -> str:
    """Dismiss the confirmed ``commands`` in one DismissAllParkedCommands
    naming them (one transaction on the replica that runs the reaction,
    audited once): all of them or, on a failure, none. One parked after the
    confirmation stays parked; one that left the list meanwhile is counted."""
    request = reactions_pb.DismissAllParkedCommandsRequest(
        reaction=name, command_ids=[parked_command.command_id for parked_command in commands]
    )
    try:
        answer = await parts.reactions.DismissAllParkedCommands(request, _NO_CONTEXT)
    except ChronicleError as error:
        raise StoppedPartway(
            error, f"None of the {len(commands)} confirmed parked command(s) was dismissed: all are still parked."
        ) from error
    return f"Dismissed {answer.dismissed} parked command(s)." + _left(answer.gone)


def _partway(error: ChronicleError, verb: str, done: int, gone: int, confirmed: int) -> StoppedPartway:
    """*Replay all* stopped by ``error``: each replay is its own call (it
    sends its command), so those before it stay done; the page says exactly
    how many."""
    rest = confirmed - done - gone
    return StoppedPartway(
        error,
        f"{verb} {done} of the {confirmed} confirmed parked command(s) before this failure;"
        f" the other {rest} are still parked (the one it met among them)." + _left(gone),
    )


def _left(gone: int) -> str:
    return f" {gone} left the parked list meanwhile." if gone else ""
