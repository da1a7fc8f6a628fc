"""Checkpoint stores for subscribers: a missing file is "never saved", a
saved position survives a new store object, a save replaces atomically."""

from __future__ import annotations

from pathlib import Path

from service.client import FileCheckpoints, MemoryCheckpoints, ResumePoint


async def test_a_subscriber_that_never_saved_has_no_checkpoint(tmp_path: Path) -> None:
    assert await FileCheckpoints(tmp_path / "none.pos").load() is None


async def test_the_last_saved_position_is_what_a_new_process_loads(tmp_path: Path) -> None:
    path = tmp_path / "state" / "projector.pos"
    for position in (3, 17, 40):
        await FileCheckpoints(path).save(position)
    assert await FileCheckpoints(path).load() == 40
    assert [p.name for p in path.parent.iterdir()] == ["projector.pos"]  # no temporary file left behind


async def test_a_resume_point_keeps_the_event_id_beside_its_position(tmp_path: Path) -> None:
    path = tmp_path / "projector.pos"
    await FileCheckpoints(path).save_point(ResumePoint(12, "9b1c6b1e-0d7e-4b43-9a51-5d0c7f1f3c11"))
    assert path.read_text() == "12 9b1c6b1e-0d7e-4b43-9a51-5d0c7f1f3c11\n"
    assert await FileCheckpoints(path).load_point() == ResumePoint(12, "9b1c6b1e-0d7e-4b43-9a51-5d0c7f1f3c11")
    assert await FileCheckpoints(path).load() == 12  # a store of positions reads it as one


async def test_an_older_clients_file_is_a_resume_point_without_an_id(tmp_path: Path) -> None:
    path = tmp_path / "projector.pos"
    path.write_text("40\n")
    assert await FileCheckpoints(path).load_point() == ResumePoint(40, "")


async def test_a_subclass_that_overrides_save_and_load_still_sees_every_point(tmp_path: Path) -> None:
    """Written before resume points, such a subclass must keep working: the
    points go through its ``save`` and ``load``."""
    seen: list[int] = []

    class Recording(MemoryCheckpoints):
        async def save(self, position: int) -> None:
            seen.append(position)
            await super().save(position)

    class Shifted(FileCheckpoints):
        async def load(self) -> int | None:
            loaded = await super().load()
            return None if loaded is None else loaded - 1  # its own idea of where to resume

    recording = Recording()
    await recording.save_point(ResumePoint(5, "e-5"))
    assert seen == [5] and await recording.load_point() == ResumePoint(5, "e-5")
    await recording.save(6)  # saved without an id: the id of 5 is not kept for 6
    assert await recording.load_point() == ResumePoint(6, "")
    path = tmp_path / "shifted.pos"
    await FileCheckpoints(path).save_point(ResumePoint(8, "e-8"))
    assert await Shifted(path).load_point() == ResumePoint(7, "")  # the id is that of 8: not sent for 7
