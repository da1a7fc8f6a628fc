"""The documentation stands on its own (every document or file it points
to is in the repository) and shows the code as it is."""

from __future__ import annotations

import re
from pathlib import Path

from domain_plugins import box

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "clients" / "node" / "README.md"]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")  # [text](target#anchor)
NAMED_DOCUMENT = re.compile(r"`([\w./-]+\.md)`")  # `SOMETHING.md` named in prose


def pointers(document: Path) -> list[tuple[str, Path]]:
    text = document.read_text()
    found = [(target, document.parent / target) for target in LINK.findall(text) if "://" not in target]
    for name in NAMED_DOCUMENT.findall(text):
        # named from the repository's root or beside the document
        found.append((name, ROOT / name if (ROOT / name).exists() else document.parent / name))
    return found


def test_every_document_and_file_the_docs_point_to_is_in_the_repository() -> None:
    missing = [
        f"{document.relative_to(ROOT)} → {shown}"
        for document in DOCUMENTS
        for shown, path in pointers(document)
        if not path.exists()
    ]
    assert missing == []


def test_the_check_sees_the_pointers_it_checks() -> None:
    architecture = {shown for shown, _ in pointers(ROOT / "docs" / "architecture.md")}
    assert {"plugins.md", "deployment.md"} <= architecture
    readme = {shown for shown, _ in pointers(ROOT / "README.md")}
    assert "docs/architecture.md" in readme


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", markdown, flags=re.MULTILINE | re.DOTALL)


def test_the_plugins_guide_declares_the_box_as_the_box_plugin_does() -> None:
    guide = (ROOT / "docs" / "plugins.md").read_text()
    (snippet,) = [block for block in python_blocks(guide) if 'plugin.aggregate("Box"' in block]
    code = (ROOT / "domain_plugins" / "box" / "domain.py").read_text().splitlines()
    # the guide abbreviates the bodies; what it declares must be what the plugin declares
    declarations = [line for line in snippet.splitlines() if line.startswith(("box = ", "@box.", "def "))]
    assert len(declarations) == 7
    assert [line for line in declarations if line not in code] == []
    (aggregate,) = box.plugin.aggregates
    assert (aggregate.name, aggregate.snapshot_every) == ("Box", 100)
