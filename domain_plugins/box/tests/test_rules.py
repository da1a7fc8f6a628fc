"""The box's rules."""

from __future__ import annotations

from domain_plugins.box import plugin
from domain_plugins.box.protos.box.v1 import box_pb2 as pb
from service.plugins import AlreadyExistsError, InvalidArgumentError, NotFoundError, ValidationError
from service.testing import Scenario

CREATED = pb.BoxCreated(name="tools")


def box() -> Scenario:
    return Scenario(plugin, aggregate_id="box-1")


def test_create_box() -> None:
    box().when(pb.CreateBox(name=" tools ")).then(pb.BoxCreated(name="tools"))


def test_create_box_twice_is_refused() -> None:
    box().given(CREATED).when(pb.CreateBox(name="x")).then_fails(AlreadyExistsError, reason="BOX_ALREADY_EXISTS")


def test_box_name_is_bounded() -> None:
    for name in ("", "x" * 101):
        box().when(pb.CreateBox(name=name)).then_fails(InvalidArgumentError, reason="INVALID_BOX_NAME")


def test_rename_box() -> None:
    box().given(CREATED).when(pb.RenameBox(name="junk")).then(pb.BoxRenamed(name="junk"))


def test_rename_to_the_same_name_changes_nothing() -> None:
    box().given(CREATED).when(pb.RenameBox(name="tools")).then()


def test_rename_a_missing_box_is_refused() -> None:
    box().when(pb.RenameBox(name="x")).then_fails(NotFoundError, reason="BOX_NOT_FOUND")


def test_archive_box() -> None:
    box().given(CREATED).when(pb.ArchiveBox()).then(pb.BoxArchived())


def test_an_archived_box_cannot_be_modified() -> None:
    for command in (pb.RenameBox(name="x"), pb.ArchiveBox()):
        error = box().given(CREATED, pb.BoxArchived()).when(command).then_fails(ValidationError, reason="BOX_ARCHIVED")
        assert error.message == "Cannot modify an archived box"
