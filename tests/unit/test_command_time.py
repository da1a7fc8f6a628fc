"""What a handler knows of time: the command's timestamp and the clock
``context.now()`` reads, both set by the plugin test helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.plugins import CommandContext, Plugin
from service.testing import Scenario, ScenarioFailed

# A box renamed to the times its handler saw: "<command's timestamp>|<now>".
clocked = Plugin("clocked")
stamp = clocked.aggregate("Stamp", state=box.Box)


@stamp.command(box.RenameBox)
def rename(command: box.RenameBox, state: box.Box, context: CommandContext) -> box.BoxRenamed:
    return box.BoxRenamed(name=f"{context.timestamp.isoformat()}|{context.now().isoformat()}")


@stamp.apply(box.BoxRenamed)
def _renamed(state: box.Box, event: box.BoxRenamed) -> None:
    state.name = event.name


NEW_YEAR = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_handler_sees_the_command_s_timestamp_and_the_test_s_clock() -> None:
    issued = NEW_YEAR - timedelta(seconds=3)
    Scenario(clocked).at(NEW_YEAR).when(box.RenameBox(name="x"), timestamp=issued).then(
        box.BoxRenamed(name=f"{issued.isoformat()}|{NEW_YEAR.isoformat()}")
    )


def test_without_a_timestamp_the_command_is_stamped_when_it_is_run() -> None:
    before = datetime.now(UTC)
    (event,) = Scenario(clocked).at(NEW_YEAR).when(box.RenameBox(name="x")).appended()
    assert isinstance(event, box.BoxRenamed)
    stamped = datetime.fromisoformat(event.name.split("|")[0])
    assert before <= stamped <= datetime.now(UTC)


def test_the_clock_takes_an_aware_time() -> None:
    with pytest.raises(ScenarioFailed):
        Scenario(clocked).at(datetime(2026, 1, 1))  # naive: the mistake under test
