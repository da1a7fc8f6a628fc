"""Ports for test and benchmark servers (tests/support/processes.py): two
processes outside pytest-xdist share a block of ports, so each starts its
turn through the block at a place of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.processes import _PORT_BLOCK, _first_offset

ROOT = Path(__file__).resolve().parents[2]


def _apart(a: int, b: int) -> int:
    """How many ports lie between two places in the block, either way round."""
    return min((a - b) % _PORT_BLOCK, (b - a) % _PORT_BLOCK)


def test_processes_started_one_after_another_start_their_turns_far_apart() -> None:
    # Process ids a few apart are what two benchmarks started at once get;
    # with one turn for all (every process starting at the block's first
    # port) they chose the same ports.
    for pid in (1, 4_321, 99_990, 4_194_000):
        for later in range(pid + 1, pid + 21):
            assert _apart(_first_offset(pid), _first_offset(later)) >= 47, (pid, later)


def test_a_process_hands_out_ports_in_turn_from_its_own_place() -> None:
    env = {key: value for key, value in os.environ.items() if key != "PYTEST_XDIST_WORKER"}
    env["PYTHONPATH"] = str(ROOT)
    script = "import os; from tests.support.processes import free_port; print(os.getpid(), free_port(), free_port())"
    output = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    pid, first, second = (int(word) for word in output.split())
    # The first free port at or after the process's own place (one taken
    # by another server is passed over, so allow a few).
    assert 0 <= (first - 20_000 - _first_offset(pid)) % _PORT_BLOCK < 20
    assert 20_000 <= first < 21_000 and 20_000 <= second < 21_000
    assert second != first
