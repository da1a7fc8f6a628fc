"""The index of everything the loaded plugins declared.

Built once at start-up; refuses two plugins claiming one aggregate type,
command type, event type or upcaster step, and names both in the error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from service.errors import ConfigurationError
from service.plugins.api import AggregateType, CommandSpec, EventSpec, Plugin, UpcasterSpec
from service.plugins.projections import Projection
from service.plugins.reactions import Reaction

if TYPE_CHECKING:
    from service.plugins.middleware import Middleware


class Registry:
    def __init__(self, plugins: Iterable[Plugin]) -> None:
        self.plugins: list[Plugin] = []
        self._aggregates: dict[str, AggregateType[Any]] = {}
        self._commands: dict[str, CommandSpec] = {}
        self._events: dict[str, EventSpec] = {}
        self._upcasters: dict[str, UpcasterSpec] = {}
        self._projections: dict[str, Projection] = {}
        self._reactions: dict[str, Reaction[Any]] = {}
        for plugin in plugins:
            self._add(plugin)
        self._check_upcasters()

    def _add(self, plugin: Plugin) -> None:
        if any(p.name == plugin.name for p in self.plugins):
            raise ConfigurationError(f"two plugins are named {plugin.name!r}", reason="DUPLICATE_PLUGIN")
        for aggregate in plugin.aggregates:
            self._claim(self._aggregates, aggregate.name, aggregate, "aggregate type", plugin)
            for name, command in aggregate.commands.items():
                self._claim(self._commands, name, command, "command type", plugin)
            for name, event in aggregate.events.items():
                self._claim(self._events, name, event, "event type", plugin)
            for upcaster in aggregate.upcasters.values():
                self._claim(self._upcasters, upcaster.name, upcaster, "upcaster", plugin)
        for projection in plugin.projections:
            existing: Projection | Reaction[Any] | None = self._projections.get(projection.name) or self._reactions.get(
                projection.name
            )
            if existing is not None:
                raise ConfigurationError(
                    f"projection {projection.name!r} is declared by both plugin {existing.plugin_name!r}"
                    f" and plugin {plugin.name!r}",
                    reason="DUPLICATE_REGISTRATION",
                    metadata={"name": projection.name, "plugins": f"{existing.plugin_name},{plugin.name}"},
                )
            self._projections[projection.name] = projection
        for reaction in plugin.reactions:
            # One namespace with projections: a reaction's checkpoint, state
            # and parked commands are kept like a projection's.
            holder = self._projections.get(reaction.name) or self._reactions.get(reaction.name)
            if holder is not None:
                raise ConfigurationError(
                    f"reaction {reaction.name!r} of plugin {plugin.name!r} has the name of {holder!r}",
                    reason="DUPLICATE_REGISTRATION",
                    metadata={"name": reaction.name, "plugins": f"{holder.plugin_name},{plugin.name}"},
                )
            self._reactions[reaction.name] = reaction
        self.plugins.append(plugin)

    @staticmethod
    def _claim(
        index: dict[str, AggregateType[Any]] | dict[str, CommandSpec] | dict[str, EventSpec] | dict[str, UpcasterSpec],
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

    def _check_upcasters(self) -> None:
        for upcaster in self._upcasters.values():
            event = self._events.get(upcaster.event_type)
            if event is not None and upcaster.from_version >= event.schema_version:
                raise ConfigurationError(
                    f"plugin {upcaster.aggregate.plugin.name!r} upcasts {upcaster.name}, but {upcaster.event_type}"
                    f" is read at schema version {event.schema_version}: an upcaster starts below it",
                    reason="BAD_UPCASTER",
                    metadata={"name": upcaster.name},
                )

    @property
    def aggregates(self) -> list[AggregateType[Any]]:
        return list(self._aggregates.values())

    @property
    def middleware(self) -> list[Middleware]:
        """Every plugin's middleware, in plugin load order."""
        return [m for plugin in self.plugins for m in plugin.middleware]

    @property
    def commands(self) -> list[CommandSpec]:
        return list(self._commands.values())

    def aggregate(self, name: str) -> AggregateType[Any] | None:
        return self._aggregates.get(name)

    def command(self, type_name: str) -> CommandSpec | None:
        return self._commands.get(type_name)

    def event(self, type_name: str) -> EventSpec | None:
        return self._events.get(type_name)

    def upcaster(self, type_name: str, from_version: int) -> UpcasterSpec | None:
        return self._upcasters.get(f"{type_name} v{from_version}")

    @property
    def upcast_types(self) -> frozenset[str]:
        """Stored event types some upcaster reads: what they become is only
        known once they are upcast."""
        return frozenset(u.event_type for u in self._upcasters.values())

    @property
    def projections(self) -> list[Projection]:
        return list(self._projections.values())

    def projection(self, name: str) -> Projection | None:
        return self._projections.get(name)

    @property
    def reactions(self) -> list[Reaction[Any]]:
        return list(self._reactions.values())

    def reaction(self, name: str) -> Reaction[Any] | None:
        return self._reactions.get(name)
