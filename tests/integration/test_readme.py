"""The README's Python example runs as printed, against a real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import server_process

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PRINTED_ADDRESS = "127.0.0.1:50051"  # what `make run` serves; the test's server is elsewhere


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", markdown, flags=re.MULTILINE | re.DOTALL)


def test_the_readme_python_example_runs_as_a_script_and_prints_the_refusal_reason(tmp_path: Path) -> None:
    (example,) = python_blocks((ROOT / "README.md").read_text())
    assert example.count(PRINTED_ADDRESS) == 1  # the only thing the test changes
    with server_process(f"sqlite:///{tmp_path}/events.db") as server:
        script = tmp_path / "example.py"
        script.write_text(example.replace(PRINTED_ADDRESS, server.address))
        # Twice against one store, as a user runs it again while `make run` serves.
        runs = [
            subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
            for _ in range(2)
        ]
    assert [(ran.returncode, ran.stderr, ran.stdout) for ran in runs] == [(0, "", "INSUFFICIENT_FUNDS\n")] * 2
