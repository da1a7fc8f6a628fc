"""A saga whose deadline function has a bug (it raises) for some processes
until a flag is flipped: the integration tests' plugin for what a reaction
does with a failing ``@on_deadline`` function, on the box plugin's messages.

An Order is placed (CreateBox: BoxCreated) and cancelled by its "payment"
deadline (ArchiveBox: BoxArchived), due the number of milliseconds its name
says ("after-<ms>"). While the file named by ``$FAILING_DEADLINE_FLAG``
exists, the deadline function raises for orders whose id starts with
"bad"; once it is deleted (the fix deployed), it works. Two plugins, one
per ``on_failure``: ``parks`` (reaction ``faulty.parks``, parked at the 2nd
failure) and ``stops`` (reaction ``faulty.stops``, the default); a server
serves one (``--plugin tests.support.failing_deadline:parks``).

A third, ``commands`` (reaction ``faulty.commands``, parking), has the bug in
the command its deadline sends instead: while the file named by
``$FAILING_DEADLINE_COMMAND_FLAG`` exists, the ArchiveBox handler raises for
orders whose id starts with "bad" (HANDLER_FAILED); the deadline function
works."""

from __future__ import annotations

import os
from datetime import timedelta

from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.plugins import CommandContext, Deadline, Plugin, ProjectedEvent, Schedule, Send, ValidationError
from service.plugins.projections import OnFailure

FLAG_ENV = "FAILING_DEADLINE_FLAG"
COMMAND_FLAG_ENV = "FAILING_DEADLINE_COMMAND_FLAG"
PARKS, STOPS, COMMANDS = "faulty.parks", "faulty.stops", "faulty.commands"
MAX_ATTEMPTS = 2


def _flagged(env: str, order_id: str) -> bool:
    """Whether the bug of ``env``'s flag file hits ``order_id`` now."""
    flag = os.environ.get(env, "")
    return order_id.startswith("bad") and bool(flag) and os.path.exists(flag)


def _plugin(name: str, reaction_name: str, on_failure: OnFailure) -> Plugin:
    plugin = Plugin(name)
    order = plugin.aggregate("Order", state=box.Box)

    @order.command(box.CreateBox)
    def place(command: box.CreateBox, state: box.Box, context: CommandContext) -> box.BoxCreated:
        return box.BoxCreated(name=command.name)

    @order.command(box.ArchiveBox)
    def cancel(command: box.ArchiveBox, state: box.Box, context: CommandContext) -> box.BoxArchived:
        if _flagged(COMMAND_FLAG_ENV, context.aggregate_id):
            raise RuntimeError(f"the handler's bug for order {context.aggregate_id}")
        if state.archived:
            raise ValidationError("the order was cancelled already", reason="ORDER_SETTLED")
        return box.BoxArchived()

    @order.apply(box.BoxCreated)
    def _placed(state: box.Box, event: box.BoxCreated) -> None:
        state.name = event.name

    @order.apply(box.BoxArchived)
    def _cancelled(state: box.Box, event: box.BoxArchived) -> None:
        state.archived = True

    orders = plugin.reaction(
        reaction_name,
        aggregate_types=["Order"],
        state=box.Box,
        state_key=lambda envelope: envelope.aggregate_id,
        start_from="beginning",
        retry_seconds=0.2,
        on_failure=on_failure,
        max_attempts=MAX_ATTEMPTS,
    )

    @orders.on(box.BoxCreated)
    def await_payment(event: box.BoxCreated, envelope: ProjectedEvent, progress: box.Box) -> Schedule:
        progress.name = "awaiting-payment"
        return Schedule("payment", after=timedelta(milliseconds=int(event.name.removeprefix("after-"))))

    @orders.on_deadline("payment")
    def payment_overdue(deadline: Deadline, progress: box.Box) -> Send:
        if _flagged(FLAG_ENV, deadline.state_key):
            raise RuntimeError(f"the bug of order {deadline.state_key}")
        progress.name = "cancelling"
        return Send(deadline.state_key, box.ArchiveBox())

    @orders.on(box.BoxArchived)
    def cancelled(event: box.BoxArchived, envelope: ProjectedEvent, progress: box.Box) -> None:
        progress.Clear()  # the process is over

    return plugin


parks = _plugin("failing_deadline_parks", PARKS, "park")
stops = _plugin("failing_deadline_stops", STOPS, "stop")
commands = _plugin("failing_deadline_commands", COMMANDS, "park")
