"""The plugin API's decorators are typed: mypy rejects a handler registered
for the wrong command or aggregate, and an apply function for the wrong
state or event, where the plugin is written rather than when it runs."""

from __future__ import annotations

from pathlib import Path

import mypy.api
import pytest

ROOT = Path(__file__).resolve().parents[2]

HEADER = """
from domain_plugins.box.protos.box.v1 import box_pb2 as pb
from service.plugins import CommandContext, Plugin

plugin = Plugin("typed")
box = plugin.aggregate("Box", state=pb.Box)
"""


def mypy_errors(tmp_path: Path, body: str) -> list[str]:
    source = tmp_path / "typed_plugin.py"
    source.write_text(HEADER + body)
    out, err, _ = mypy.api.run(
        ["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache"), str(source)]
    )
    assert not err, err
    return [line for line in out.splitlines() if ": error:" in line]


def test_well_typed_handlers_and_apply_functions_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    errors = mypy_errors(
        tmp_path,
        """
@box.command(pb.CreateBox, creates=True)
def create(command: pb.CreateBox, state: pb.Box, context: CommandContext) -> pb.BoxCreated:
    return pb.BoxCreated(name=command.name)


@box.apply(pb.BoxCreated)
def created(state: pb.Box, event: pb.BoxCreated) -> None:
    state.name = event.name


@box.apply(pb.BoxRenamed)
def renamed(state: pb.Box, event: pb.BoxRenamed) -> pb.Box:
    return pb.Box(name=event.name)
""",
    )
    assert errors == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            """
@box.command(pb.RenameBox)
def handler(command: pb.CreateBox, state: pb.Box, context: CommandContext) -> None:
    return None
""",
            id="handler-for-another-command",
        ),
        pytest.param(
            """
@box.command(pb.CreateBox)
def handler(command: pb.CreateBox, state: pb.BoxCreated, context: CommandContext) -> None:
    return None
""",
            id="handler-of-another-state",
        ),
        pytest.param(
            """
@box.apply(pb.BoxCreated)
def applier(state: pb.Box, event: pb.BoxRenamed) -> None:
    pass
""",
            id="apply-for-another-event",
        ),
        pytest.param(
            """
@box.apply(pb.BoxCreated)
def applier(state: pb.Box, event: pb.BoxCreated) -> int:
    return 1
""",
            id="apply-returning-something-else",
        ),
    ],
)
def test_a_mistyped_registration_is_a_type_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    monkeypatch.chdir(ROOT)
    errors = mypy_errors(tmp_path, body)
    assert len(errors) == 1, errors
    assert "[arg-type]" in errors[0]
