"""A plugin whose handler counts its runs, to tell a retry answered from its
record from one that ran again (tests/integration/test_retry_answered_from_record.py)."""

from __future__ import annotations

import time
from collections import Counter

from domain_plugins.box.protos.box.v1 import box_pb2
from service.plugins import CommandContext, Plugin, ValidationError

# Handler runs by the name a RenameBox asks for: each test uses names of its own.
RUNS: Counter[str] = Counter()

# A name starting with this makes the handler take SLOW_SECONDS (blocking,
# as a slow plugin would), so that retries queue behind it.
SLOW_PREFIX = "slow-"
SLOW_SECONDS = 0.3
# A name starting with this is refused (recorded with the command id).
REFUSED_PREFIX = "refuse-"

counted = Plugin("counted")
tally = counted.aggregate("Counted", state=box_pb2.Box)


@tally.command(box_pb2.RenameBox)
def rename_counting(command: box_pb2.RenameBox, state: box_pb2.Box, context: CommandContext) -> box_pb2.BoxRenamed:
    RUNS[command.name] += 1
    if command.name.startswith(SLOW_PREFIX):
        time.sleep(SLOW_SECONDS)
    if command.name.startswith(REFUSED_PREFIX):
        raise ValidationError("this name is refused", reason="NAME_REFUSED")
    if state.name == command.name:
        # A handler that cannot take the state its own command left (a bug,
        # not a refusal: HandlerFailed, never recorded).
        raise RuntimeError(f"already named {command.name!r}")
    return box_pb2.BoxRenamed(name=command.name)


@tally.apply(box_pb2.BoxRenamed)
def _renamed(state: box_pb2.Box, event: box_pb2.BoxRenamed) -> None:
    state.name = event.name
