"""Key files are the owner's alone: what is refused, what is allowed, and
the way to override it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service.errors import ConfigurationError
from service.security.key_files import check_private


def key_file(tmp_path: Path, mode: int) -> str:
    path = tmp_path / "master.keys"
    path.write_text("k1:…\n")
    path.chmod(mode)
    return str(path)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_a_file_only_its_owner_may_access_is_accepted(tmp_path: Path, mode: int) -> None:
    check_private(key_file(tmp_path, mode), what="master-key file", allow_readable=False)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o601])
def test_a_file_its_group_or_others_may_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path, mode)
    with pytest.raises(ConfigurationError) as refused:
        check_private(path, what="master-key file", allow_readable=False)
    assert refused.value.reason == "KEY_FILE_READABLE"
    assert refused.value.message.startswith(
        f"the master-key file {path} is open to its group or to others (mode {mode:04o})"
    )
    assert f"chmod 600 {path}" in refused.value.message and "--allow-readable-keys" in refused.value.message


def test_the_operator_may_allow_it_and_is_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = key_file(tmp_path, 0o644)
    with caplog.at_level(logging.WARNING, logger="chronicle"):
        check_private(path, what="TLS key", allow_readable=True)
    assert f"the TLS key {path} is open to its group or to others (mode 0644); allowed by --allow-readable-keys" in (
        caplog.messages
    )


def test_a_missing_file_is_left_to_its_loader(tmp_path: Path) -> None:
    check_private(str(tmp_path / "absent"), what="TLS key", allow_readable=False)
