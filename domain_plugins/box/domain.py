"""The box aggregate."""

from __future__ import annotations

from domain_plugins.box.protos.box.v1 import box_pb2 as pb
from service.plugins import (
    CommandContext,
    InvalidArgumentError,
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


def _modifiable(state: pb.Box) -> None:
    if state.archived:
        raise ValidationError("Cannot modify an archived box", reason="BOX_ARCHIVED")


@box.command(pb.CreateBox, creates=True)
def create_box(command: pb.CreateBox, state: pb.Box, context: CommandContext) -> pb.BoxCreated:
    return pb.BoxCreated(name=_valid_name(command.name))


@box.command(pb.RenameBox, requires_existing=True)
def rename_box(command: pb.RenameBox, state: pb.Box, context: CommandContext) -> pb.BoxRenamed | None:
    _modifiable(state)
    name = _valid_name(command.name)
    if name == state.name:
        return None  # already so named: nothing changes, nothing is appended
    return pb.BoxRenamed(name=name)


@box.command(pb.ArchiveBox, requires_existing=True)
def archive_box(command: pb.ArchiveBox, state: pb.Box, context: CommandContext) -> pb.BoxArchived:
    _modifiable(state)
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
