"""Projection handlers and reaction functions run on the server's event
loop, as command handlers do: one that blocks holds up every command. A
call slower than ``--slow-handler-seconds`` (0.1 s) logs a warning naming
the projection or reaction and the event type (0: never)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.plugins import Plugin, ProjectedEvent, Refusal, Send, ValidationError
from service.plugins.projections import Documents
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.projections import ProjectionRunner
from service.processing.reactions import ReactionRunner
from service.processing.router import Router
from service.store.base import Store
from service.store.memory import MemoryStore

plugin = Plugin("sleepy")
lists = plugin.aggregate("List", state=bank.OwnerBalance)


@lists.command(box.RenameBox)
def add(command: box.RenameBox, state: bank.OwnerBalance, context: Any) -> box.BoxRenamed:
    if context.aggregate_id == "closed":
        raise ValidationError("closed", reason="CLOSED")
    return box.BoxRenamed(name=command.name)


@lists.apply(box.BoxRenamed)
def _added(state: bank.OwnerBalance, event: box.BoxRenamed) -> None:
    state.account_ids.append(event.name)


# How long each sleepy function sleeps: set by each test.
NAP = {"seconds": 0.0}

names = plugin.projection("sleepy.names", aggregate_types=["List"])


@names.on(box.BoxRenamed)
def _named(event: box.BoxRenamed, envelope: ProjectedEvent, documents: Documents) -> None:
    time.sleep(NAP["seconds"])  # a blocking call: what the warning is for
    documents.put(envelope.aggregate_id, box.Box(name=event.name))


relay = plugin.reaction("sleepy.relay", aggregate_types=["List"])


@relay.on(box.BoxRenamed)
def forward(event: box.BoxRenamed, envelope: ProjectedEvent, state: None) -> Send | None:
    time.sleep(NAP["seconds"])
    return Send("closed", box.RenameBox(name=event.name)) if envelope.aggregate_id == "source" else None


@relay.on_refused
def give_up(refusal: Refusal, envelope: ProjectedEvent, state: None) -> None:
    time.sleep(NAP["seconds"])


REGISTRY = Registry([plugin])


async def history(store: MemoryStore) -> Router:
    roles = Store.of(store)
    router = Router(CommandExecutor(roles, REGISTRY))
    spec = REGISTRY.command("box.v1.RenameBox")
    assert spec is not None
    NAP["seconds"] = 0.0
    await router.submit(
        CommandRequest(command_id=str(uuid.uuid4()), aggregate_id="source", spec=spec, message=box.RenameBox(name="a"))
    )
    return router


def slow_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "slow" in r.getMessage()]


async def test_a_slow_projection_handler_is_reported_by_projection_and_event_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    await history(store)
    NAP["seconds"] = 0.15  # clearly over the default 0.1 s
    runner = ProjectionRunner(
        names, log=store, documents=store, reader=CommandExecutor(Store.of(store), REGISTRY).loader.reader
    )
    with caplog.at_level(logging.WARNING):
        await runner.step(0)
    (said,) = slow_warnings(caplog)
    assert re.fullmatch(
        r"slow projection handler: projection sleepy\.names on box\.v1\.BoxRenamed at position \d+ took"
        r" \d+\.\d{3}s \(threshold 0\.100s\); it blocked the event loop, and every command of the server with it:"
        r" keep handlers free of I/O and heavy work",
        said,
    ), said
    (record,) = [r for r in caplog.records if "slow" in r.getMessage()]
    assert record.name == "service.processing.projections"
    assert record.__dict__["projection"] == "sleepy.names"
    assert record.__dict__["event_type"] == "box.v1.BoxRenamed"
    assert record.__dict__["elapsed_seconds"] > 0.1 and record.__dict__["position"] > 0


async def test_a_slow_reaction_function_is_reported_by_reaction_and_event_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    router = await history(store)
    NAP["seconds"] = 0.02
    runner = ReactionRunner(
        relay,
        registry=REGISTRY,
        submit=router.submit,
        log=store,
        documents=store,
        reader=CommandExecutor(Store.of(store), REGISTRY).loader.reader,
        slow_handler_seconds=0.005,
    )
    with caplog.at_level(logging.WARNING):
        await runner.step(0)
    forwarded, gave_up = slow_warnings(caplog)
    assert "sleepy.relay" in forwarded and "forward" in forwarded and "box.v1.BoxRenamed" in forwarded
    assert forwarded.startswith("slow reaction handler: reaction sleepy.relay (")
    assert "sleepy.relay" in gave_up and "give_up" in gave_up and "box.v1.RenameBox" in gave_up


async def test_a_threshold_of_zero_reports_nothing(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    await history(store)
    NAP["seconds"] = 0.02
    reader = CommandExecutor(Store.of(store), REGISTRY).loader.reader
    runner = ProjectionRunner(names, log=store, documents=store, reader=reader, slow_handler_seconds=0)
    with caplog.at_level(logging.WARNING):
        await runner.step(0)
    assert slow_warnings(caplog) == []
