"""Print the runtime dependencies pyproject.toml declares, one a line (a
requirements file): the Dockerfile builds their wheels in a layer of their
own, from pyproject.toml and constraints.txt alone, so that a change to
Chronicle's code does not rebuild them."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def dependencies(pyproject: Path) -> list[str]:
    with pyproject.open("rb") as file:
        return [str(requirement) for requirement in tomllib.load(file)["project"]["dependencies"]]


if __name__ == "__main__":
    print("\n".join(dependencies(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))))
