"""A saga with a deadline (a payment timeout), on the box plugin's messages:
an Order is placed (CreateBox: BoxCreated), paid (RenameBox to "paid":
BoxRenamed) or cancelled (ArchiveBox: BoxArchived). The ``saga.orders``
reaction schedules "payment" when an order is placed, cancels it when the
order is paid, and when it is due sends ArchiveBox to the order (the
cancellation), which refuses a paid or archived order. Each process is keyed
by its order's id.

The due time is ``AFTER`` after the placing, unless the order's name says
otherwise ("after-<ms>": that many milliseconds). Served by the
integration tests as ``--plugin tests.support.deadline_saga:plugin``; while
the file named by ``$DEADLINE_SAGA_HOLD`` exists, the reaction fails on any
order named "hold" (to keep it behind the log on purpose)."""

from __future__ import annotations

import os
from datetime import timedelta

from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.plugins import (
    Cancel,
    CommandContext,
    Deadline,
    Plugin,
    ProjectedEvent,
    Schedule,
    Send,
    ValidationError,
)

REACTION = "saga.orders"
AFTER = timedelta(minutes=10)
HOLD_ENV = "DEADLINE_SAGA_HOLD"

plugin = Plugin("deadline_saga")
order = plugin.aggregate("Order", state=box.Box)


@order.command(box.CreateBox)
def place(command: box.CreateBox, state: box.Box, context: CommandContext) -> box.BoxCreated:
    return box.BoxCreated(name=command.name)


@order.command(box.RenameBox)
def pay(command: box.RenameBox, state: box.Box, context: CommandContext) -> box.BoxRenamed:
    if state.archived:
        raise ValidationError("the order was cancelled", reason="ORDER_CANCELLED")
    return box.BoxRenamed(name=command.name)


@order.command(box.ArchiveBox)
def cancel(command: box.ArchiveBox, state: box.Box, context: CommandContext) -> box.BoxArchived:
    if state.archived or state.name == "paid":
        raise ValidationError("the order is paid or cancelled already", reason="ORDER_SETTLED")
    return box.BoxArchived()


@order.apply(box.BoxCreated)
def _placed(state: box.Box, event: box.BoxCreated) -> None:
    state.name = event.name


@order.apply(box.BoxRenamed)
def _paid(state: box.Box, event: box.BoxRenamed) -> None:
    state.name = event.name


@order.apply(box.BoxArchived)
def _cancelled(state: box.Box, event: box.BoxArchived) -> None:
    state.archived = True


def _order_of(envelope: ProjectedEvent) -> str:
    return envelope.aggregate_id


orders = plugin.reaction(
    REACTION, aggregate_types=["Order"], state=box.Box, state_key=_order_of, start_from="beginning", retry_seconds=0.2
)


def _after(name: str) -> timedelta:
    if name.startswith("after-"):
        return timedelta(milliseconds=int(name.removeprefix("after-")))
    return AFTER


@orders.on(box.BoxCreated)
def await_payment(event: box.BoxCreated, envelope: ProjectedEvent, progress: box.Box) -> Schedule:
    hold = os.environ.get(HOLD_ENV, "")
    if event.name == "hold" and hold and os.path.exists(hold):
        raise RuntimeError("held on purpose (the test's hold file exists)")
    progress.name = "awaiting-payment"
    return Schedule("payment", after=_after(event.name))


@orders.on(box.BoxRenamed)
def paid(event: box.BoxRenamed, envelope: ProjectedEvent, progress: box.Box) -> Cancel:
    progress.name = "paid"
    return Cancel("payment")


@orders.on_deadline("payment")
def payment_overdue(deadline: Deadline, progress: box.Box) -> Send:
    progress.name = "cancelling"
    return Send(deadline.state_key, box.ArchiveBox(), metadata={"order": deadline.state_key})


@orders.on(box.BoxArchived)
def cancelled(event: box.BoxArchived, envelope: ProjectedEvent, progress: box.Box) -> None:
    progress.Clear()  # the process is over
