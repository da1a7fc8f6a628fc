"""The Python examples of the README and of docs/clients.md run as printed,
against a real server."""

from __future__ import annotations

import ast
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


def output_after(markdown: str, code: str) -> str:
    """The first plain block after ``code``'s: what the text says it prints."""
    rest = markdown[markdown.index(code) + len(code) :].removeprefix("```\n")  # the example's own end
    found = re.search(r"^```\n(.*?)^```$", rest, flags=re.MULTILINE | re.DOTALL)
    assert found is not None, "no output block after the example"
    return found.group(1)


def run_twice(example: str, address: str, tmp_path: Path) -> list[subprocess.CompletedProcess[str]]:
    """``example`` saved as a script, on ``address`` instead of the printed
    one, run twice in ``tmp_path``: as a user runs it again while `make run`
    serves the same store."""
    assert example.count(PRINTED_ADDRESS) == 1  # the only thing the test changes
    script = tmp_path / "example.py"
    script.write_text(example.replace(PRINTED_ADDRESS, address))
    return [
        subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        for _ in range(2)
    ]


def test_the_readme_python_example_runs_as_a_script_and_prints_the_refusal_reason(tmp_path: Path) -> None:
    (example,) = python_blocks((ROOT / "README.md").read_text())
    with server_process(f"sqlite:///{tmp_path}/events.db") as server:
        runs = run_twice(example, server.address, tmp_path)
    assert [(ran.returncode, ran.stderr, ran.stdout) for ran in runs] == [(0, "", "INSUFFICIENT_FUNDS\n")] * 2


def test_the_clients_doc_python_tour_runs_as_a_script_and_prints_what_the_doc_says(tmp_path: Path) -> None:
    """A complete script (its imports, no names left undefined), and new
    accounts at every run: run twice on one store, it prints the same, its
    greeter going on from its checkpoint file."""
    doc = (ROOT / "docs" / "clients.md").read_text()
    tour, *fragments = python_blocks(doc)  # the later ones: parts of an app (a FastAPI lifespan, a timeout)
    for fragment in fragments:
        compile(fragment, "docs/clients.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)  # they parse, at least
    with server_process(f"sqlite:///{tmp_path}/events.db") as server:
        runs = run_twice(tour, server.address, tmp_path)
    assert [(ran.returncode, ran.stderr) for ran in runs] == [(0, "")] * 2
    assert [ran.stdout for ran in runs] == [output_after(doc, tour)] * 2
    assert (tmp_path / "greeted.pos").exists()
