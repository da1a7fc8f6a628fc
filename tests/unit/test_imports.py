"""Every module of the service imports on its own, in a fresh interpreter:
no import cycle hides behind the order in which the server happens to
import things (``import service.processing.router`` alone used to fail)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import service

ROOT = Path(service.__file__).parent
# Run as a module from the root: as a script, its folder would come first
# on the path, and tests/support/http.py would hide the standard library's.
IMPORT_ALONE = ("-m", "tests.support.import_alone")


def modules() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue  # runs the CLI
        found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def test_every_module_imports_on_its_own() -> None:
    # Each in a process of its own (tests/support/import_alone.py): a module
    # imported first in a shared interpreter could mask another's cycle.
    found = modules()
    assert "service.processing.router" in found and len(found) > 80
    run = subprocess.run(
        [sys.executable, *IMPORT_ALONE, *found], capture_output=True, text=True, timeout=600, cwd=ROOT.parent
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "", f"modules that do not import on their own:\n{run.stdout}"


def test_a_module_in_an_import_cycle_is_reported(tmp_path: Path) -> None:
    """The check itself: two modules that import each other at the top."""
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "first.py").write_text("from cyclic.second import SECOND\nFIRST = 1\n")
    (package / "second.py").write_text("from cyclic.first import FIRST\nSECOND = 2\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT.parent)])}
    run = subprocess.run(
        [sys.executable, *IMPORT_ALONE, "cyclic.first", "cyclic.second", "service.processing.router"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT.parent,
    )
    assert run.returncode == 0, run.stderr
    reported = run.stdout.splitlines()
    assert [line.split(":")[0] for line in reported] == ["cyclic.first", "cyclic.second"]
    assert all("circular import" in line for line in reported)
