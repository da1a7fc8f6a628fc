"""The index of everything the loaded plugins declared.

Built once at start-up; refuses two plugins claiming one aggregate type,
command type or event type, and names both in the error.
"""

from __future__ import annotations

from collections.abc import Iterable

from service.errors import ConfigurationError
from service.plugins.api import AggregateType, CommandSpec, EventSpec, Plugin


class Registry:
    def __init__(self, plugins: Iterable[Plugin]) -> None:
        self.plugins: list[Plugin] = []
        self._aggregates: dict[str, AggregateType] = {}
        self._commands: dict[str, CommandSpec] = {}
        self._events: dict[str, EventSpec] = {}
        for plugin in plugins:
            self._add(plugin)

    def _add(self, plugin: Plugin) -> None:
        if any(p.name == plugin.name for p in self.plugins):
            raise ConfigurationError(f"two plugins are named {plugin.name!r}", reason="DUPLICATE_PLUGIN")
        for aggregate in plugin.aggregates:
            self._claim(self._aggregates, aggregate.name, aggregate, "aggregate type", plugin)
            for name, command in aggregate.commands.items():
                self._claim(self._commands, name, command, "command type", plugin)
            for name, event in aggregate.events.items():
                self._claim(self._events, name, event, "event type", plugin)
        self.plugins.append(plugin)

    @staticmethod
    def _claim(
        index: dict[str, AggregateType] | dict[str, CommandSpec] | dict[str, EventSpec],
        name: str,
        value: object,
        what: str,
        plugin: Plugin,
    ) -> None:
        existing = index.get(name)
        if existing is not None:
            owner = existing.plugin.name if isinstance(existing, AggregateType) else existing.aggregate.plugin.name
            raise ConfigurationError(
                f"{what} {name!r} is registered by both plugin {owner!r} and plugin {plugin.name!r}",
                reason="DUPLICATE_REGISTRATION",
                metadata={"name": name, "plugins": f"{owner},{plugin.name}"},
            )
        index[name] = value  # type: ignore[assignment]

    @property
    def aggregates(self) -> list[AggregateType]:
        return list(self._aggregates.values())

    @property
    def commands(self) -> list[CommandSpec]:
        return list(self._commands.values())

    def aggregate(self, name: str) -> AggregateType | None:
        return self._aggregates.get(name)

    def command(self, type_name: str) -> CommandSpec | None:
        return self._commands.get(type_name)

    def event(self, type_name: str) -> EventSpec | None:
        return self._events.get(type_name)
