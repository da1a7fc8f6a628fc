"""The Node.js client's REASONS (clients/node/src/reasons.js and its types)
list every reason the server's code names: tools/gen_node_reasons.py reads
them from the code and writes the list; here it must be current, and the
reading must see what the docs and the protos' comments name."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_node_reasons", ROOT / "tools" / "gen_node_reasons.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = load_tool()


@pytest.fixture(scope="module")
def server_reasons() -> list[str]:
    reasons: list[str] = tool.server_reasons()  # a second or so: read once for the module
    return reasons


def test_the_node_clients_list_is_the_servers(server_reasons: list[str]) -> None:
    stale = tool.stale_files(tool.generated(server_reasons))
    assert stale == [], "a reason of the server is missing from the Node client: run python tools/gen_node_reasons.py"


def test_a_reason_the_server_adds_makes_the_list_stale(server_reasons: list[str]) -> None:
    assert "BRAND_NEW_REASON" not in server_reasons
    assert sorted(tool.stale_files(tool.generated([*server_reasons, "BRAND_NEW_REASON"]))) == sorted(
        [tool.REASONS_JS, tool.TYPES]
    )


def test_each_way_the_server_names_a_reason_is_read(tmp_path: Path) -> None:
    service = tmp_path / "service"
    (service / "client").mkdir(parents=True)
    (service / "errors.py").write_text(
        "from dataclasses import dataclass\n"
        'SHARED_REASON = "SHARED_REASON"\n'
        'SOME_CODE = "AS_A_CONSTANT"\n'
        "class Refused(Exception):\n"
        '    default_reason = "AS_A_CLASS_DEFAULT"\n'
        "def refuse(message, reason): ...\n"
        "@dataclass\n"
        "class Refusal:\n"
        "    command: str\n"
        "    reason: str\n"
    )
    (service / "api.py").write_text(
        "from service.errors import SOME_CODE, Refusal, Refused, refuse\n"
        "def handle(x):\n"
        '    raise Refused("m", reason="AS_A_KEYWORD" if x else SOME_CODE)\n'
        'def other(): refuse("m", "AS_A_POSITIONAL")\n'
        'def third(): return Refusal("c", "AS_A_FIELD"), {"reason": "AS_A_DICT_KEY"}\n'
        'def fourth(): return "NOT_A_REASON", Refused("m", reason="NOT_FOUND")  # a status code name\n'
    )
    (service / "client" / "errors.py").write_text('X = Refused("m", reason="THE_CLIENTS_OWN")\n')
    assert tool.server_reasons(service) == [
        "AS_A_CLASS_DEFAULT",
        "AS_A_CONSTANT",
        "AS_A_DICT_KEY",
        "AS_A_FIELD",
        "AS_A_KEYWORD",
        "AS_A_POSITIONAL",
        "SHARED_REASON",
    ]


def test_every_reason_the_plugin_guide_names_is_listed(server_reasons: list[str]) -> None:
    text = (ROOT / "docs" / "plugins.md").read_text()
    section = text.split("## What the server says: reasons a plugin author meets", 1)[1].split("\n## ", 1)[0]
    named = {
        reason
        for line in section.splitlines()
        if line.startswith("| `")
        for reason in re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1])
    }
    assert "HANDLER_FAILED" in named
    assert sorted(named - set(server_reasons) - tool.STATUS_CODE_NAMES) == []


# Named in the protos' comments, but no reason of the server's: the bank
# example's refusals, and a label of a log line.
NOT_SERVER_REASONS = {"ACCOUNT_CLOSED", "INSUFFICIENT_FUNDS", "LATE_ACK"}


def test_every_reason_the_protos_comments_name_is_listed(server_reasons: list[str]) -> None:
    named: set[str] = set()
    for proto in (ROOT / "protos" / "chronicle" / "v1").glob("*.proto"):
        for line in proto.read_text().splitlines():
            if line.strip().startswith("//"):
                named.update(tool.REASON.findall(line))
    assert "WRONG_EXPECTED_VERSION" in named
    assert sorted(named - set(server_reasons) - tool.STATUS_CODE_NAMES - NOT_SERVER_REASONS) == []
