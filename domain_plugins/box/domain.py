"""The box aggregate."""

from __future__ import annotations

from domain_plugins.box.protos.box.v1 import box_pb2 as pb
from service.plugins import (
    AlreadyExistsError,
    CommandContext,
    InvalidArgumentError,
    NotFoundError,
    Plugin,
    ValidationError,
)

MAX_NAME = 100

plugin = Plugin("box", description="Boxes: the smallest example domain, the one docs/plugins.md follows.")
box = plugin.aggregate("Box", state=pb.Box, snapshot_every=100)


def _valid_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise InvalidArgumentError(f"name must be 1 to {MAX_NAME} characters", reason="INVALID_BOX_NAME", field="name")
    return name


def _modifiable(state: pb.Box, context: CommandContext) -> None:
    if context.is_new:
        raise NotFoundError(f"box {context.aggregate_id!r} does not exist", reason="BOX_NOT_FOUND")
    if state.archived:
        raise ValidationError("Cannot modify an archived box", reason="BOX_ARCHIVED")


@box.command(pb.CreateBox)
def create_box(command: pb.CreateBox, state: pb.Box, context: CommandContext) -> pb.BoxCreated:
    if not context.is_new:
        raise AlreadyExistsError(f"box {context.aggregate_id!r} already exists", reason="BOX_ALREADY_EXISTS")
    return pb.BoxCreated(name=_valid_name(command.name))


@box.command(pb.RenameBox)
def rename_box(command: pb.RenameBox, state: pb.Box, context: CommandContext) -> pb.BoxRenamed | None:
    _modifiable(state, context)
    name = _valid_name(command.name)
    if name == state.name:
        return None  # already so named: nothing changes, nothing is appended
    return pb.BoxRenamed(name=name)


@box.command(pb.ArchiveBox)
def archive_box(command: pb.ArchiveBox, state: pb.Box, context: CommandContext) -> pb.BoxArchived:
    _modifiable(state, context)
    return pb.BoxArchived()


@box.apply(pb.BoxCreated)
def _created(state: pb.Box, event: pb.BoxCreated) -> None:
    state.name = event.name


@box.apply(pb.BoxRenamed)
def _renamed(state: pb.Box, event: pb.BoxRenamed) -> None:
    state.name = event.name


@box.apply(pb.BoxArchived)
def _archived(state: pb.Box, event: pb.BoxArchived) -> None:
    state.archived = True
