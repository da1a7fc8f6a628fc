"""Two behaviours docs/plugins.md ("Process managers: reactions") warns
saga authors of, pinned so that the warnings stay true:

- "Route only what the server vouches for": a reaction's command carries
  the triggering event's metadata, a client's included, under the
  reaction's origin, unless the ``Send`` sets the key itself;
- "Refusals": ``on_refused`` gets the state as the sending function left
  it (cleared, if it cleared it before its ``Send``)."""

from __future__ import annotations

from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.plugins import CommandContext, Plugin, ProjectedEvent, Refusal, Send, ValidationError
from service.testing import ReactionRun

REACTION = "saga.archiving"


def _saga(*, tags_its_send: bool, clears_first: bool) -> tuple[Plugin, list[str]]:
    """On a Feed's BoxCreated, archive the Sink "sink-<name>" (which refuses
    a name "refused"); what ``on_refused`` saw of the state is appended to
    the list returned."""
    plugin = Plugin("saga")
    feed = plugin.aggregate("Feed", state=box.Box)
    sink = plugin.aggregate("Sink", state=box.Box)
    seen: list[str] = []

    @feed.command(box.CreateBox)
    def create(command: box.CreateBox, state: box.Box, context: CommandContext) -> box.BoxCreated:
        return box.BoxCreated(name=command.name)

    @feed.apply(box.BoxCreated)
    def _created(state: box.Box, event: box.BoxCreated) -> None:
        state.name = event.name

    @sink.command(box.ArchiveBox)
    def archive(command: box.ArchiveBox, state: box.Box, context: CommandContext) -> box.BoxArchived:
        if context.aggregate_id == "sink-refused":
            raise ValidationError("this sink takes nothing")
        return box.BoxArchived()

    @sink.apply(box.BoxArchived)
    def _archived(state: box.Box, event: box.BoxArchived) -> None:
        state.archived = True

    saga = plugin.reaction(REACTION, aggregate_types=["Feed"], state=box.Box, state_key=lambda e: e.aggregate_id)

    @saga.on(box.BoxCreated)
    def archive_its_sink(event: box.BoxCreated, envelope: ProjectedEvent, state: box.Box) -> Send:
        state.name = event.name
        if clears_first:
            state.Clear()
        metadata = {"order": envelope.aggregate_id} if tags_its_send else {}
        return Send(f"sink-{event.name}", box.ArchiveBox(), metadata=metadata)

    @saga.on_refused
    def compensate(refusal: Refusal, envelope: ProjectedEvent, state: box.Box) -> None:
        seen.append(state.name)

    return plugin, seen


def test_a_send_that_sets_no_routing_key_carries_the_clients_under_the_reactions_origin() -> None:
    plugin, _ = _saga(tags_its_send=False, clears_first=False)
    with ReactionRun(plugin) as run:
        run.submit("feed-1", box.CreateBox(name="a"), metadata={"order": "ord-victim"})
        run.settle()
        (archived,) = run.recorded("sink-a")
    assert archived.origin == f"reaction:{REACTION}"
    assert archived.metadata["order"] == "ord-victim"  # the client's value, inherited


def test_a_send_that_sets_the_routing_key_carries_its_own() -> None:
    plugin, _ = _saga(tags_its_send=True, clears_first=False)
    with ReactionRun(plugin) as run:
        run.submit("feed-1", box.CreateBox(name="a"), metadata={"order": "ord-victim"})
        run.settle()
        (archived,) = run.recorded("sink-a")
    assert archived.metadata["order"] == "feed-1"


def test_on_refused_sees_the_state_as_the_sending_function_left_it() -> None:
    for clears_first, seen_name in ((True, ""), (False, "refused")):
        plugin, seen = _saga(tags_its_send=True, clears_first=clears_first)
        with ReactionRun(plugin) as run:
            run.submit("feed-1", box.CreateBox(name="refused"))
            run.settle()
        assert seen == [seen_name], clears_first
