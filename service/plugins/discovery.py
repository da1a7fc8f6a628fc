"""Finding plugins: the ``chronicle.plugins`` entry-point group and module
paths named in the settings (``package.module`` or ``package.module:attr``)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from importlib.metadata import entry_points

from service.errors import ConfigurationError
from service.plugins.api import Plugin

ENTRY_POINT_GROUP = "chronicle.plugins"
# The package of the example plugins Chronicle's own wheel registers in the
# entry-point group (pyproject.toml): left out of discovery when a
# deployment serves its own domains only (``example_plugins=False``).
EXAMPLES_PACKAGE = "domain_plugins"
log = logging.getLogger(__name__)


def _as_plugin(obj: object, source: str) -> Plugin:
    if isinstance(obj, Plugin):
        return obj
    candidate = getattr(obj, "plugin", None)
    if isinstance(candidate, Plugin):
        return candidate
    raise ConfigurationError(
        f"{source} is not a chronicle Plugin (a module needs a `plugin` attribute)",
        reason="NOT_A_PLUGIN",
    )


def load_module_plugin(path: str) -> Plugin:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigurationError(f"cannot import plugin {path!r}: {error}", reason="PLUGIN_IMPORT_FAILED") from error
    if attribute:
        try:
            return _as_plugin(getattr(module, attribute), path)
        except AttributeError as error:
            raise ConfigurationError(f"{module_name} has no attribute {attribute!r}", reason="NOT_A_PLUGIN") from error
    return _as_plugin(module, path)


def discover_plugins(
    paths: Iterable[str] = (), *, entry_point_group: str | None = ENTRY_POINT_GROUP, examples: bool = True
) -> list[Plugin]:
    """Plugins from the entry-point group (unless None), then from ``paths``.
    Without ``examples``, the group's entry points into Chronicle's example
    plugins are skipped (not imported); ``paths`` naming one still load it.

    A plugin found both ways (the same object) is loaded once.
    """
    found: list[Plugin] = []
    if entry_point_group is not None:
        for entry in entry_points(group=entry_point_group):
            if not examples and is_example(entry.value):
                continue
            try:
                loaded = entry.load()
            except Exception as error:  # a broken third-party plugin must say which one
                raise ConfigurationError(
                    f"entry point {entry.name!r} ({entry.value}) failed to load: {error}",
                    reason="PLUGIN_IMPORT_FAILED",
                ) from error
            found.append(_as_plugin(loaded, f"entry point {entry.name!r}"))
    for path in paths:
        found.append(load_module_plugin(path))
    unique: list[Plugin] = []
    for plugin in found:
        if not any(plugin is seen for seen in unique):
            unique.append(plugin)
    log.debug("plugins: %s", [p.name for p in unique])
    return unique


def is_example(target: str) -> bool:
    """Whether an entry point's target (``module:attr``) is one of
    Chronicle's example plugins."""
    module = target.partition(":")[0].strip()
    return module == EXAMPLES_PACKAGE or module.startswith(EXAMPLES_PACKAGE + ".")
