"""Every .proto the repository ships, and the one ``chronicle new-plugin``
writes, says where Go and Java code generated from it goes (``go_package``,
``java_package``): without ``go_package`` protoc-gen-go refuses a file
(unless given an M flag per file), and the example plugins' protos had none,
so a Go client could not be generated from them as docs/clients.md says.

The values of the repository's own are pinned here: ``buf breaking`` leaves
the example plugins' ``go_package`` alone (buf.yaml: adding it counted as a
change), so this is what notices a later change of it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from service.scaffold import new_plugin

ROOT = Path(__file__).resolve().parents[2]
_OPTION = re.compile(r'^option\s+(\w+)\s*=\s*"([^"]*)"\s*;', re.MULTILINE)


def options(text: str) -> dict[str, str]:
    return dict(_OPTION.findall(text))


def shipped_protos() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.proto"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / line for line in listed.stdout.splitlines()]


def test_the_repository_ships_protos() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in shipped_protos()}
    assert "protos/chronicle/v1/event.proto" in names
    assert "domain_plugins/bank_account/protos/bank/v1/bank_account.proto" in names


@pytest.mark.parametrize("path", shipped_protos(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_shipped_proto_declares_its_go_and_java_packages(path: Path) -> None:
    declared = options(path.read_text(encoding="utf-8"))
    assert declared.get("go_package") and declared.get("java_package"), declared
    relative = path.relative_to(ROOT)
    if relative.parts[0] == "protos":
        assert declared["go_package"] == "github.com/chronicle/chronicle/gen/go/chronicle/v1;chroniclev1"
        assert declared["java_package"] == "dev.chronicle.v1"
    elif relative.parts[0] == "domain_plugins":
        package = relative.parts[-3]  # domain_plugins/NAME/protos/PACKAGE/v1/FILE.proto
        assert declared["go_package"] == f"github.com/chronicle/chronicle/gen/go/examples/{package}/v1;{package}v1"
        assert declared["java_package"] == f"dev.chronicle.examples.{package}.v1"


def test_a_new_plugins_proto_declares_its_go_and_java_packages(tmp_path: Path) -> None:
    written = new_plugin("parcel_tracking", into=Path("domain_plugins"), root=tmp_path)
    (proto,) = [path for path in written if path.suffix == ".proto"]
    assert options(proto.read_text(encoding="utf-8")) == {
        "go_package": "example.com/parcel_tracking/gen/go/parcel_tracking/v1;parcel_trackingv1",
        "java_package": "com.example.parcel_tracking.v1",
    }
    assert "option java_multiple_files = true;" in proto.read_text(encoding="utf-8")
