"""The start-up warning when --max-workers cached aggregates cannot fit under
the process's cgroup memory limit (read from a fake cgroup tree here)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service.processing import memory_limit
from service.processing.memory_limit import check_cache_memory
from service.store.memory import MemoryStore
from tests.support.grpc_client import running_server

MiB = 2**20
V1_UNLIMITED = "9223372036854771712"


def cgroup_tree(tmp_path: Path, files: dict[str, str], proc: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    (tmp_path / "proc-cgroup").write_text(proc)
    return root, tmp_path / "proc-cgroup"


def test_a_v2_container_limit_too_small_for_the_default_cap_is_warned_with_a_cap_that_fits(tmp_path: Path) -> None:
    root, proc = cgroup_tree(tmp_path, {"memory.max": str(120 * MiB)}, "0::/\n")
    warning = check_cache_memory(100_000, root=root, proc_cgroup=proc)
    assert warning is not None
    fits = (120 * MiB - 80 * MiB) // 1536
    assert "--max-workers 100000" in warning
    assert "memory limit of 120 MiB" in warning and str(root / "memory.max") in warning
    assert f"at most {fits}" in warning
    # and that cap passes the check
    assert check_cache_memory(fits, root=root, proc_cgroup=proc) is None
    assert check_cache_memory(fits + 1, root=root, proc_cgroup=proc) is not None


def test_a_v1_limit_of_the_process_own_cgroup_is_found_below_the_unlimited_root(tmp_path: Path) -> None:
    root, proc = cgroup_tree(
        tmp_path,
        {
            "memory/memory.limit_in_bytes": V1_UNLIMITED,
            "memory/w-dep-test/memory.limit_in_bytes": str(120 * MiB),
        },
        "5:devices:/\n4:memory:/w-dep-test\n0::/\n",
    )
    warning = check_cache_memory(100_000, root=root, proc_cgroup=proc)
    assert warning is not None and "w-dep-test" in warning


@pytest.mark.parametrize(
    ("files", "proc"),
    [
        ({"memory.max": "max"}, "0::/\n"),  # v2, no limit
        ({"memory.max": str(1024 * MiB)}, "0::/\n"),  # room for 100,000 small aggregates
        ({"memory/memory.limit_in_bytes": V1_UNLIMITED}, "4:memory:/\n"),  # v1, no limit
        ({}, ""),  # no cgroup files at all (not Linux, or not mounted)
    ],
)
def test_no_warning_without_a_limit_or_with_room(tmp_path: Path, files: dict[str, str], proc: str) -> None:
    root, proc_cgroup = cgroup_tree(tmp_path, files, proc)
    assert check_cache_memory(100_000, root=root, proc_cgroup=proc_cgroup) is None


async def test_the_server_logs_the_warning_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root, proc = cgroup_tree(tmp_path, {"memory.max": str(120 * MiB)}, "0::/\n")
    monkeypatch.setattr(memory_limit, "CGROUP_ROOT", root)
    monkeypatch.setattr(memory_limit, "PROC_CGROUP", proc)
    with caplog.at_level(logging.WARNING, logger="service.app"):
        async with running_server(MemoryStore(), max_workers=100_000):
            pass
        warned = [r.getMessage() for r in caplog.records if "--max-workers 100000" in r.getMessage()]
        caplog.clear()
        async with running_server(MemoryStore(), max_workers=20_000):
            pass
        assert not [r for r in caplog.records if "--max-workers" in r.getMessage()]
    assert len(warned) == 1 and "at most 27306" in warned[0]
