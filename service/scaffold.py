"""``chronicle new-plugin NAME``: a new domain plugin from the template in
``service/templates/plugin`` (shipped in the wheel, so it works from an
installed Chronicle too).

A generator rather than a folder to copy, because one name appears in a
dozen spellings (``library``, ``Library``, ``LIBRARY_NOT_FOUND``,
``library.v1``, ``domain_plugins.library.protos.library.v1``) across the
proto, the code and the tests, and a missed rename is a confusing first
hour. The files are written in a layout that formatting leaves alone
(exploded signatures and calls), so a generated plugin passes ``make lint``
whatever its name's length; the tests generate one and check that.
"""

from __future__ import annotations

import contextlib
import keyword
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from service.errors import ConfigurationError

NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
# Names the generated modules already use for something else.
RESERVED = frozenset({"plugin", "pb", "service", "tests", "protos", "domain", "scenario", "google", "chronicle"})


@dataclass(frozen=True, slots=True)
class PluginNames:
    """Every spelling of one plugin's name the template needs."""

    name: str  # library: the package, the proto package's first part
    module: str  # domain_plugins.library: how Python imports it

    @property
    def aggregate(self) -> str:  # Library: the aggregate type and its messages
        return "".join(part.capitalize() for part in self.name.split("_"))

    def substitutions(self) -> dict[str, str]:
        return {"name": self.name, "Aggregate": self.aggregate, "NAME": self.name.upper(), "module": self.module}


def names_for(name: str, into: Path) -> PluginNames:
    if not NAME.match(name) or keyword.iskeyword(name) or name in RESERVED:
        raise ConfigurationError(
            f"plugin name {name!r}: use lower_snake_case letters and digits, not a Python keyword "
            f"nor one of {', '.join(sorted(RESERVED))}",
            reason="BAD_PLUGIN_NAME",
        )
    if into.is_absolute() or ".." in into.parts or not all(part.isidentifier() for part in into.parts):
        raise ConfigurationError(
            f"{into}: give a relative folder of Python packages (like domain_plugins), from where you run the server",
            reason="BAD_PLUGIN_FOLDER",
        )
    return PluginNames(name=name, module=".".join((*into.parts, name)))


def _target(relative: str, names: PluginNames) -> str:
    """Where a template file goes: the proto under protos/NAME/v1/NAME.proto,
    the rest where it is, without ``.tmpl``."""
    relative = relative.removesuffix(".tmpl")
    if relative == "protos/plugin.proto":
        return f"protos/{names.name}/v1/{names.name}.proto"
    return relative


def new_plugin(name: str, *, into: Path, root: Path) -> list[Path]:
    """Write the plugin ``name`` as ``root/into/name``; return the files.
    Refuses to overwrite anything."""
    names = names_for(name, into)
    folder = root / into / name
    if folder.exists():
        raise ConfigurationError(f"{folder} exists already; nothing was written", reason="PLUGIN_EXISTS")
    template = resources.files("service") / "templates" / "plugin"
    rendered: dict[Path, str] = {}
    for source in _walk(template):
        content = Template(template.joinpath(*source.parts).read_text(encoding="utf-8"))
        rendered[folder / _target(source.as_posix(), names)] = content.substitute(names.substitutions())
    for depth in range(1, len(into.parts) + 1):  # the folders above must be packages too
        init = root.joinpath(*into.parts[:depth], "__init__.py")
        if not init.exists():
            rendered[init] = ""
    for path, text in rendered.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return sorted(rendered)


def _walk(folder: resources.abc.Traversable, prefix: tuple[str, ...] = ()) -> list[Path]:
    found: list[Path] = []
    for entry in folder.iterdir():
        if entry.is_dir():
            found.extend(_walk(entry, (*prefix, entry.name)))
        elif entry.name.endswith(".tmpl"):
            found.append(Path(*prefix, entry.name))
    return found


def next_steps(name: str, into: Path, written: list[Path]) -> str:
    """What to do after ``new_plugin``: in this repository's ``domain_plugins``
    the Makefile does the work; elsewhere, the commands it would run."""
    names = names_for(name, into)
    folder = (into / name).as_posix()
    lines = [f"wrote the plugin {names.module}:", *(f"  {path.as_posix()}" for path in written), "", "next:"]
    if into == Path("domain_plugins"):
        lines += [
            f"  make protos                        # {name}_pb2.py from the .proto",
            f"  .venv/bin/pytest {folder}",
            f'  make run ARGS="--plugin {names.module}"',
        ]
    else:
        protos = f"{folder}/protos"
        python, tools = _environment()
        lines += [
            f"  {python} -m grpc_tools.protoc -I {protos} --python_out={protos} --pyi_out={protos} "
            f"{name}/v1/{name}.proto",
            f"  {tools}pytest {folder}",
            f"  PYTHONPATH=. {tools}chronicle serve --plugin {names.module}",
        ]
    lines += [
        "",
        'to load it without --plugin, add an entry point to pyproject.toml: [project.entry-points."chronicle.plugins"]',
        f'  {name} = "{names.module}:plugin"',
        "and to check its proto with buf lint and buf breaking, add it to buf.yaml under modules:",
        f"  - path: {folder}/protos",
    ]
    return "\n".join(lines)


def _environment() -> tuple[str, str]:
    """The interpreter this command runs on and the folder of its
    environment's commands (with its slash; relative to the working
    directory when inside it), so that the next steps work as printed
    whether or not that environment is activated."""
    executable = Path(sys.executable)
    with contextlib.suppress(ValueError):
        executable = executable.relative_to(Path.cwd())
    folder = executable.parent.as_posix()
    return executable.as_posix(), ("" if folder == "." else folder + "/")
