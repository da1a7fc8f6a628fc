"""Whether the plugins about to be deployed can read what a store holds.

``chronicle plugins --check --database-url URL`` (docs/plugins.md, "Before
deploying a new version"). The plugins' own checks at start-up
(registry.py) judge the plugins alone: an event type at schema version 2
with no upcaster is allowed, since no v1 may ever have been stored. Only the
store can say whether one was, and a server started with such plugins fails
every read of the aggregates that hold one. So this reads, without writing:

- every (aggregate type, event type, schema version) the log holds, judged
  as a reader would judge one such event (processing/upcasting.py):
  UNKNOWN_AGGREGATE_TYPE, UNKNOWN_EVENT_TYPE, AGGREGATE_TYPE_MISMATCH,
  SCHEMA_VERSION_TOO_NEW, UNSUPPORTED_SCHEMA_VERSION (older, no upcaster);
- every projection or reaction name the store holds a checkpoint, documents
  or parked events of that no loaded plugin declares (ORPHANED_PROJECTION:
  a renamed or retired one, whose rows nothing will read or delete);
- each declared projection's stored version (the declaration's version its
  documents were built by) against its declared one: one that differs
  would stop it (PROJECTION_VERSION_CHANGED), or rebuild it
  (``rebuild_on_change``);
- each declared reaction's process states, whose stored type must be its
  ``state`` now or one it upcasts (``@reaction.upcast_state``), else the
  reaction stops at the first event of that process (DOCUMENT_TYPE_MISMATCH);
  and their pending deadlines, each of whose names an ``@on_deadline``
  function must handle, else the reaction stops when it falls due
  (UNKNOWN_DEADLINE). A state sealed by encryption at rest cannot be opened
  here: counted as ``sealed_states``, not judged.

The same rules as an import's (transfer/readable.py, asked once per kind
of event, not per event), without the payload: a payload is parsed only
when an event is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from chronicle.v1 import reaction_service_pb2 as reaction_pb
from service.errors import InvalidInput
from service.plugins.projections import Projection
from service.plugins.reactions import Reaction
from service.plugins.registry import Registry
from service.store.base import StoreAdapter
from service.store.encryption import is_sealed
from service.store.records import DocumentRange, RecordedEvent
from service.store.server_names import is_server_own
from service.transfer.readable import check_readable

# Where a reaction keeps its process states among its documents
# (processing/reaction_documents.py's STATE_PREFIX; that module is above this layer).
STATE_PREFIX = "state:"
# States listed per store read: a page, not a reaction's every state at once.
STATE_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the store holds that the plugins cannot read."""

    reason: str
    message: str
    details: dict[str, str | int | bool]

    def as_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "message": self.message, **self.details}


@dataclass(slots=True)
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    event_kinds: int = 0
    stored_names: int = 0
    sealed_states: int = 0

    @property
    def readable(self) -> bool:
        return not self.findings

    def as_json(self) -> dict[str, Any]:
        return {
            "readable": self.readable,
            "event_kinds_checked": self.event_kinds,
            "stored_projections_checked": self.stored_names,
            "sealed_states_not_checked": self.sealed_states,
            "findings": [finding.as_json() for finding in self.findings],
        }


async def check_store(registry: Registry, store: StoreAdapter) -> CheckReport:
    """What in ``store`` the plugins of ``registry`` cannot read; reads only."""
    report = CheckReport()
    kinds = await store.stored_event_kinds()
    report.event_kinds = len(kinds)
    for aggregate_type, event_type, schema_version in kinds:
        finding = judge_event_kind(registry, aggregate_type, event_type, schema_version)
        if finding is not None:
            report.findings.append(finding)
    # The server's own rows (reactions' starts, '#...') are no plugin's to
    # declare: never an orphan, and DeleteProjection refuses them.
    stored = [(name, position) for name, position in await store.stored_projections() if not is_server_own(name)]
    report.stored_names = len(stored)
    declared = {p.name for p in registry.projections} | {r.name for r in registry.reactions}
    for name, position in stored:
        if name not in declared:
            report.findings.append(
                Finding(
                    "ORPHANED_PROJECTION",
                    f"the store holds projection or reaction {name!r} (checkpoint {position}), which no loaded"
                    " plugin declares: renamed or retired? Its rows stay unread; once it is retired, delete them"
                    f" (chronicle projection delete {name})",
                    {"name": name, "position": position},
                )
            )
    held = {name for name, _ in stored}
    for projection in registry.projections:
        if projection.name in held:
            finding = judge_version(projection, await store.projection_version(projection.name))
            if finding is not None:
                report.findings.append(finding)
    for reaction in registry.reactions:
        if reaction.state_type is not None:
            await _check_states(reaction, store, report)
    return report


def judge_version(projection: Projection, stored: int | None) -> Finding | None:
    """Whether ``projection``'s stored documents were built by another
    version of it than the one declared (None: the same, or none stored):
    its runner would stop on them (or, declared with ``rebuild_on_change``
    at a higher version, rebuild them from the start of the log)."""
    if stored is None or stored == projection.version:
        return None
    name, declared = projection.name, projection.version
    if projection.rebuild_on_change and declared > stored:
        then = (
            "it rebuilds itself from the start of the log once deployed (rebuild_on_change): its reads answer"
            " partial documents until it has caught up"
        )
    else:
        then = (
            "it would stop (PROJECTION_VERSION_CHANGED) until rebuilt: rebuild it once deployed"
            f" (chronicle projection rebuild {name}), or deploy it under a new name (blue/green)"
        )
    return Finding(
        "PROJECTION_VERSION_CHANGED",
        f"projection {name} is declared at version {declared} and its stored documents were built by version"
        f" {stored}: {then}",
        {
            "name": name,
            "version": declared,
            "stored_version": stored,
            "rebuild_on_change": projection.rebuild_on_change,
        },
    )


def judge_event_kind(registry: Registry, aggregate_type: str, event_type: str, schema_version: int) -> Finding | None:
    """Why an event of this kind cannot be read with ``registry``'s plugins
    (None: it can): an import's rules (transfer/readable.py), one rule set
    for both, asked about a stand-in event of the kind. Its payload is empty,
    which parses as any type: the kind is judged, not one event's bytes."""
    stand_in = RecordedEvent(
        event_id="",
        aggregate_id="",
        aggregate_type=aggregate_type,
        version=1,
        position=0,
        event_type=event_type,
        schema_version=schema_version,
        payload=b"",
        timestamp_us=0,
        command_id="",
        user_id="",
        origin="",
        correlation_id="",
        causation_id="",
        metadata={},
    )
    try:
        check_readable(registry, stand_in, index=0)
    except InvalidInput as refusal:
        why = refusal.violations[0].description if refusal.violations else refusal.message
        if refusal.reason == "UNKNOWN_AGGREGATE_TYPE":  # the import's advice (--leave-out) is no deployment's
            why = f"no loaded plugin declares aggregate type {aggregate_type!r}: load the plugin that does"
        details: dict[str, str | int] = {
            "aggregate_type": aggregate_type,
            "event_type": event_type,
            "schema_version": schema_version,
        }
        spec = registry.event(event_type)
        if spec is not None:
            details["plugin_schema_version"] = spec.schema_version
        return Finding(refusal.reason, f"{aggregate_type}/{event_type} v{schema_version}: {why}", details)
    return None


async def _check_states(reaction: Reaction[Any], store: StoreAdapter, report: CheckReport) -> None:
    """One finding per stored state type ``reaction`` can no longer load,
    with how many states are of it and one of their keys."""
    assert reaction.state_type is not None
    readable = {str(reaction.state_type.DESCRIPTOR.full_name), *reaction.state_upcasters}
    unreadable: dict[str, tuple[int, str]] = {}
    # Deadline names no @on_deadline function handles: how many, one state key.
    unhandled: dict[str, tuple[int, str]] = {}
    after: str | None = None
    while True:
        page = await store.list_documents(
            reaction.name, DocumentRange(prefix=STATE_PREFIX, after=after, limit=STATE_PAGE)
        )
        for document in page:
            if is_sealed(document.data):
                report.sealed_states += 1
                continue
            try:
                wrapped = reaction_pb.ProcessState.FromString(document.data)
                stored_as = wrapped.state.type_url.rpartition("/")[2]
            except DecodeError:
                wrapped, stored_as = None, document.type_name
            for deadline in wrapped.deadlines if wrapped is not None else ():
                if deadline.name not in reaction.deadline_handlers:
                    count, key = unhandled.get(deadline.name, (0, document.key.removeprefix(STATE_PREFIX)))
                    unhandled[deadline.name] = (count + 1, key)
            if stored_as not in readable:
                # The state key, as --drop-state and the reaction's own error take it.
                count, key = unreadable.get(stored_as, (0, document.key.removeprefix(STATE_PREFIX)))
                unreadable[stored_as] = (count + 1, key)
        if len(page) < STATE_PAGE:
            break
        after = page[-1].key
    for name, (count, key) in sorted(unhandled.items()):
        report.findings.append(
            Finding(
                "UNKNOWN_DEADLINE",
                f"reaction {reaction.name}: {count} process(es) have a deadline {name!r} pending, which no"
                f" @on_deadline({name!r}) function of it handles: it would stop when the first falls due; keep the"
                f" function, or drop those states (chronicle reaction {reaction.name} --drop-state KEY)",
                {"reaction": reaction.name, "deadline": name, "states": count, "example_key": key},
            )
        )
    for stored_as, (count, key) in sorted(unreadable.items()):
        report.findings.append(
            Finding(
                "DOCUMENT_TYPE_MISMATCH",
                f"reaction {reaction.name}: {count} process state(s) stored as {stored_as}, which is neither its"
                f" state type {reaction.state_type.DESCRIPTOR.full_name} nor one it upcasts: register"
                f" @reaction.upcast_state({stored_as}), or drop them (chronicle reaction {reaction.name}"
                " --drop-state KEY)",
                {
                    "reaction": reaction.name,
                    "stored_type": stored_as,
                    "expected_type": str(reaction.state_type.DESCRIPTOR.full_name),
                    "states": count,
                    "example_key": key,
                },
            )
        )
