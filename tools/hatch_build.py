"""Hatch build hook: generate the Protobuf code before building, so that a
wheel (and an editable install) carries it. Runs tools/gen_protos.py. Also
bakes the git commit built from into service/build_commit.txt (service/
version.py reads it), when git and a repository are there to say it."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        spec = importlib.util.spec_from_file_location("gen_protos", root / "tools" / "gen_protos.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        written = module.generate(root)
        commit = _git_commit(root)
        if commit:
            (root / "service" / "build_commit.txt").write_text(commit + "\n")
            written.append(root / "service" / "build_commit.txt")
        # Generated files are git-ignored; artifacts puts them in the build.
        build_data["artifacts"].extend(str(path.relative_to(root)) for path in written)
        build_data["artifacts"].extend(
            str(init.relative_to(root))
            for init in [*root.glob("chronicle/**/__init__.py"), *root.glob("domain_plugins/*/protos/**/__init__.py")]
        )


def _git_commit(root: Path) -> str:
    """The commit ``root`` is checked out at (with ``-dirty`` when changed); "" without git."""
    try:
        found = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12", "--exclude", "*"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return ""
    return found.stdout.strip() if found.returncode == 0 else ""
