"""The reloader's own rules (service/security/reloading.py): only a changed
file is read again, and a bug while one is read again neither ends the
watch nor keeps the other files from being read."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service.errors import ConfigurationError
from service.security.reloading import SecurityReloader, WatchedFile


async def test_only_a_changed_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text("one")
    used: list[str] = []
    watched = WatchedFile(str(path), "API-key file", path.read_text, used.append)
    reloader = SecurityReloader([watched], interval=60)
    await reloader.check()
    assert used == []  # as read at start-up
    path.write_text("two, longer")
    await reloader.check()
    await reloader.check()
    assert used == ["two, longer"]


async def test_a_bug_in_one_file_leaves_the_others_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first, second = tmp_path / "policy.toml", tmp_path / "keys.toml"
    first.write_text("a")
    second.write_text("b")
    used: list[str] = []

    def broken(_: object) -> None:
        raise RuntimeError("a bug below")

    reloader = SecurityReloader(
        [
            WatchedFile(str(first), "policy file", first.read_text, broken),
            WatchedFile(str(second), "API-key file", second.read_text, used.append),
        ],
        interval=60,
    )
    first.write_text("a, changed")
    second.write_text("b, changed")
    with caplog.at_level(logging.ERROR):
        await reloader.check()
    assert "reading policy file" in caplog.text and "a bug below" in caplog.text
    assert used == ["b, changed"]


async def test_the_change_callbacks_run_once_per_look_that_put_a_file_to_use(tmp_path: Path) -> None:
    good, broken = tmp_path / "keys.toml", tmp_path / "policy.toml"
    good.write_text("one")
    broken.write_text("fine")

    def load_broken() -> str:
        if "bad" in broken.read_text():
            raise ConfigurationError("not TOML", reason="BAD_POLICY")
        return broken.read_text()

    reloader = SecurityReloader(
        [
            WatchedFile(str(good), "API-key file", good.read_text, lambda _: None),
            WatchedFile(str(broken), "policy file", load_broken, lambda _: None),
        ],
        interval=60,
    )
    calls: list[str] = []
    reloader.on_change.append(lambda: calls.append("changed"))
    await reloader.check()
    assert calls == []  # nothing changed
    broken.write_text("bad, and longer")
    await reloader.check()
    assert calls == []  # changed, but not usable: what is in force did not change
    good.write_text("two, longer")
    broken.write_text("fine again, longer")
    await reloader.check()
    assert calls == ["changed"]  # two files in one look: one call
