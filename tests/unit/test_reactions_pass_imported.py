"""A reaction runner passes imported events by (service/store/imported.py),
through the real importer and executor on the memory store: it sends nothing
for them and its checkpoint moves past them; an event of a command that
came after is reacted to, and the mark is left out of the reaction's own
commands even when its function puts it in their metadata, so that their
events are not hidden from reactions in turn."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from chronicle.v1 import export_pb2
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.plugins import Plugin, ProjectedEvent, Send
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.reactions import ReactionRunner
from service.processing.router import Router
from service.store.base import Store
from service.store.imported import IMPORTED_KEY
from service.store.memory import MemoryStore
from service.store.records import RecordedEvent
from service.transfer.exporter import FORMAT, FORMAT_VERSION
from service.transfer.importer import Importer
from service.transfer.records import end_record, exported_event

plugin = Plugin("relays")
slot = plugin.aggregate("Slot", state=box.Box)


@slot.command(box.RenameBox)
def rename(command: box.RenameBox, state: box.Box, context: Any) -> box.BoxRenamed:
    return box.BoxRenamed(name=command.name)


@slot.apply(box.BoxRenamed)
def _renamed(state: box.Box, event: box.BoxRenamed) -> None:
    state.name = event.name


# Relays each name given to "source" to "copy"; its function tries to mark
# the command as imported.
relay = plugin.reaction("relays.relay", aggregate_types=["Slot"])


@relay.on(box.BoxRenamed)
def pass_on(event: box.BoxRenamed, envelope: ProjectedEvent, state: None) -> Send | None:
    if envelope.aggregate_id != "source":
        return None
    return Send("copy", box.RenameBox(name=event.name), metadata={IMPORTED_KEY: "true", "kept": "yes"})


REGISTRY = Registry([plugin])


def imported_rename(aggregate_id: str, version: int, name: str) -> export_pb2.ExportRecord:
    return exported_event(
        RecordedEvent(
            event_id=str(uuid.uuid4()),
            aggregate_id=aggregate_id,
            aggregate_type="Slot",
            version=version,
            position=0,
            event_type="box.v1.BoxRenamed",
            schema_version=1,
            payload=box.BoxRenamed(name=name).SerializeToString(),
            timestamp_us=time.time_ns() // 1000,
            command_id="",
            user_id="legacy",
            origin="legacy",
            correlation_id="",
            causation_id="",
            metadata={},
        )
    )


async def records(*events: export_pb2.ExportRecord) -> AsyncIterator[export_pb2.ExportRecord]:
    yield export_pb2.ExportRecord(header=export_pb2.ExportHeader(format=FORMAT, format_version=FORMAT_VERSION))
    for event in events:
        yield event
    yield end_record(Counter(event.WhichOneof("record") or "" for event in events))


async def test_imported_events_are_passed_by_and_the_reactions_commands_never_carry_the_mark() -> None:
    store = MemoryStore()
    roles = Store.of(store)
    executor = CommandExecutor(roles, REGISTRY)
    router = Router(executor)
    await Importer(roles, registry=REGISTRY).run(
        records(imported_rename("source", 1, "a"), imported_rename("source", 2, "b"))
    )
    runner = ReactionRunner(
        relay,
        registry=REGISTRY,
        submit=router.submit,
        log=roles.log,
        documents=roles.projections,
        reader=executor.loader.reader,
    )
    assert await runner.step(0) == await store.log_head() == 2
    assert await store.read_aggregate("copy") == []  # nothing sent for history
    assert runner.status.handled == 0

    spec = REGISTRY.command("box.v1.RenameBox")
    assert spec is not None
    await router.submit(
        CommandRequest(command_id=str(uuid.uuid4()), aggregate_id="source", spec=spec, message=box.RenameBox(name="c"))
    )
    await runner.step(2)
    (copied,) = await store.read_aggregate("copy")
    assert box.BoxRenamed.FromString(copied.payload).name == "c"
    assert IMPORTED_KEY not in copied.metadata and copied.metadata["kept"] == "yes"
