"""Checkpoint stores for subscribers: a missing file is "never saved", a
saved position survives a new store object, a save replaces atomically."""

from __future__ import annotations

from pathlib import Path

from service.client import FileCheckpoints


async def test_a_subscriber_that_never_saved_has_no_checkpoint(tmp_path: Path) -> None:
    assert await FileCheckpoints(tmp_path / "none.pos").load() is None


async def test_the_last_saved_position_is_what_a_new_process_loads(tmp_path: Path) -> None:
    path = tmp_path / "state" / "projector.pos"
    for position in (3, 17, 40):
        await FileCheckpoints(path).save(position)
    assert await FileCheckpoints(path).load() == 40
    assert [p.name for p in path.parent.iterdir()] == ["projector.pos"]  # no temporary file left behind
