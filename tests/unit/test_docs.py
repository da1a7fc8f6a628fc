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


ANCHORED_LINK = re.compile(r"\]\(([^)#\s]*)#([^)\s]+)\)")  # [text](target.md#anchor) or [text](#anchor)


def heading_anchors(document: Path) -> set[str]:
    """The anchors GitHub gives ``document``'s headings (lower case, spaces
    to hyphens, punctuation dropped; a repeated one numbered), outside code
    blocks, and its explicit ``<a id=...>``."""
    text = re.sub(r"^```.*?^```", "", document.read_text(), flags=re.MULTILINE | re.DOTALL)
    anchors: set[str] = set(re.findall(r'<a (?:name|id)="([^"]+)"', text))
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def broken_anchors(documents: list[Path]) -> list[str]:
    broken = []
    for document in documents:
        for target, anchor in ANCHORED_LINK.findall(document.read_text()):
            path = document.parent / target if target else document
            if "://" in target or path.suffix != ".md" or not path.exists():
                continue  # another site, a file that is not a document, or a missing one (the test above)
            if anchor not in heading_anchors(path):
                shown = document.relative_to(ROOT) if document.is_relative_to(ROOT) else document
                broken.append(f"{shown} → {target}#{anchor}")
    return broken


def test_every_heading_the_docs_link_to_is_in_its_document() -> None:
    # A section renamed or dropped (a bench run rewriting benchmarks.md) leaves its links landing at the top.
    assert broken_anchors(DOCUMENTS) == []


def test_the_anchor_check_sees_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\n\n## Stores that grow\n\n[here](#stores-that-grow), [gone](#nothing)\n")
    (tmp_path / "b.md").write_text("[there](a.md#stores-that-grow) [not](a.md#stores-that-shrink)\n")
    found = broken_anchors([tmp_path / "a.md", tmp_path / "b.md"])
    assert [line.split(" → ")[1] for line in found] == ["#nothing", "a.md#stores-that-shrink"]


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


def test_the_bank_tenant_check_plugins_md_shows_is_the_one_shipped() -> None:
    shown = (ROOT / "docs" / "plugins.md").read_text().partition("### A reaction acts for the user who caused it")[2]
    block = shown.partition("```python\n")[2].partition("        ...")[0]
    assert block.startswith("def _require_same_tenant(")
    shipped = (ROOT / "domain_plugins" / "bank_account" / "transfers.py").read_text()
    signature, _, body = block.partition("\n")
    assert signature in shipped
    assert body in shipped  # the docstring between them left out
