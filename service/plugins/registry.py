"""The index of everything the loaded plugins declared.

Built once at start-up; refuses two plugins claiming one aggregate type,
command type, event type or upcaster step, and names both in the error.
Also refuses, naming the plugin: a message type that is both a command and
an event, an upcaster chain with a missing step, a projection or reaction
that names an aggregate type no plugin declares or has a handler for a
command type (it only ever gets events), and a command sent only by
reactions that names one no plugin declares.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from service.errors import ConfigurationError
from service.plugins.api import AggregateType, CommandSpec, EventSpec, Plugin, UpcasterSpec
from service.plugins.deadline_names import named_deadlines
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
        # Claims scope -> (per tenant, the plugin that declared it first).
        self._claim_scopes: dict[str, tuple[bool, str]] = {}
        for plugin in plugins:
            self._add(plugin)
        # The claims scopes checked per tenant (service.claim_scopes): those
        # declared so, and (``keep_per_tenant``) those the store holds per tenant.
        self.per_tenant_claim_scopes = frozenset(s for s, (per_tenant, _) in self._claim_scopes.items() if per_tenant)
        # And those declared global (``per_tenant=False``): checked at start
        # for tenants' claims, stored while they were per tenant.
        self.global_claim_scopes = frozenset(s for s, (per_tenant, _) in self._claim_scopes.items() if not per_tenant)
        self._check_commands_are_not_events()
        self._check_upcasters()
        self._check_upcaster_chains()
        followers: list[Projection | Reaction[Any]] = [*self._projections.values(), *self._reactions.values()]
        for follower in followers:
            self._check_follower(follower)
        for reaction in self._reactions.values():
            _check_deadline_names(reaction)
        self._check_senders()

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
            # Worked out here, at plugin load, not on a command's path.
            _ = aggregate.snapshot_state_type
        for projection in plugin.projections:
            existing: Projection | Reaction[Any] | None = self._projections.get(projection.name) or self._reactions.get(
                projection.name
            )
            if existing is not None:
                raise ConfigurationError(
                    f"projection {projection.name!r} of plugin {plugin.name!r} has the name of"
                    f" {_kind(existing)} {projection.name!r} of plugin {existing.plugin_name!r}"
                    " (projections and reactions share one namespace: their checkpoints are kept alike)",
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
                    f"reaction {reaction.name!r} of plugin {plugin.name!r} has the name of"
                    f" {_kind(holder)} {reaction.name!r} of plugin {holder.plugin_name!r}"
                    " (projections and reactions share one namespace: their checkpoints are kept alike)",
                    reason="DUPLICATE_REGISTRATION",
                    metadata={"name": reaction.name, "plugins": f"{holder.plugin_name},{plugin.name}"},
                )
            self._reactions[reaction.name] = reaction
        for scope, per_tenant in plugin.claim_scopes.items():
            self._add_claim_scope(scope, per_tenant, plugin)
        self.plugins.append(plugin)

    def _add_claim_scope(self, scope: str, per_tenant: bool, plugin: Plugin) -> None:
        """Plugins may share a scope (one user id, two kinds of owner), but
        not disagree on whether it is per tenant: one would check values
        where the other never stored them."""
        declared = self._claim_scopes.get(scope)
        if declared is not None and declared[0] != per_tenant:
            tenant_plugin, global_plugin = (declared[1], plugin.name) if declared[0] else (plugin.name, declared[1])
            raise ConfigurationError(
                f"claims scope {scope!r} is declared per tenant by plugin {tenant_plugin!r} and global by plugin"
                f" {global_plugin!r}: a scope is one or the other",
                reason="DUPLICATE_REGISTRATION",
                metadata={"name": scope, "plugins": f"{declared[1]},{plugin.name}"},
            )
        if declared is None:
            self._claim_scopes[scope] = (per_tenant, plugin.name)

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

    def _check_senders(self) -> None:
        """A command sent only by named reactions names declared ones: a
        misspelt name would leave a command nothing may send."""
        for name, command in self._commands.items():
            unknown = sorted((command.sent_by_reactions or frozenset()) - self._reactions.keys())
            if not unknown:
                continue
            plugin = command.aggregate.plugin.name
            known = ", ".join(sorted(self._reactions)) or "none"
            raise ConfigurationError(
                f"plugin {plugin!r} lets only reaction {', '.join(unknown)} send {name}, which no loaded plugin"
                f" declares (known: {known}): correct the name in sent_by_reactions, or load the plugin that"
                " declares it",
                reason="UNKNOWN_REACTION",
                metadata={"name": name, "plugins": plugin, "reactions": ",".join(unknown)},
            )

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

    def _check_commands_are_not_events(self) -> None:
        """A message type is a command or an event, never both: the server
        tells them apart by type (a Submit's payload, a stored event)."""
        for name, command in self._commands.items():
            event = self._events.get(name)
            if event is None:
                continue
            command_owner, event_owner = command.aggregate.plugin.name, event.aggregate.plugin.name
            raise ConfigurationError(
                f"{name} is registered as a command (of {command.aggregate.name}, plugin {command_owner!r})"
                f" and as an event (of {event.aggregate.name}, plugin {event_owner!r}): a message type is one or"
                " the other; give the event its own message (say, the command's name in the past tense)",
                reason="DUPLICATE_REGISTRATION",
                metadata={"name": name, "plugins": f"{command_owner},{event_owner}"},
            )

    def _check_upcaster_chains(self) -> None:
        """Upcasters go one version at a time: from the lowest version some
        upcaster reads, every version up to the current one (or, for a type
        no plugin applies any more, up to the highest upcaster) needs one,
        or events stored at the missing version cannot be read. A type with
        no upcaster at all is taken to have no older versions stored."""
        versions: dict[str, dict[int, UpcasterSpec]] = {}
        for upcaster in self._upcasters.values():
            versions.setdefault(upcaster.event_type, {})[upcaster.from_version] = upcaster
        for event_type, steps in sorted(versions.items()):
            event = self._events.get(event_type)
            top = event.schema_version if event is not None else max(steps) + 1
            missing = [version for version in range(min(steps), top) if version not in steps]
            if not missing:
                continue
            owners = sorted({u.aggregate.plugin.name for u in steps.values()})
            if len(owners) == 1:
                upcasts = f"plugin {owners[0]!r} upcasts"
            else:
                upcasts = f"plugins {', '.join(repr(owner) for owner in owners)} upcast"
            if event is not None:
                reader = event.aggregate.plugin.name
                chain = f"plugin {reader!r} reads {event_type} at schema version {top} and " + (
                    f"upcasts it from v{min(steps)}" if owners == [reader] else f"{upcasts} it from v{min(steps)}"
                )
                owners = sorted({*owners, reader})
            else:
                chain = f"{upcasts} {event_type} (which no plugin applies) from v{min(steps)} and from v{max(steps)}"
            gaps = ", ".join(f"v{version}" for version in missing)
            wanted = " and ".join(f"from_version={version}" for version in missing)
            raise ConfigurationError(
                f"{chain}, but no upcaster reads {gaps}: an event stored at (or upcast to) {gaps} could not be"
                f" read (UNSUPPORTED_SCHEMA_VERSION); register an upcaster of {event_type} with {wanted}",
                reason="BAD_UPCASTER",
                metadata={
                    "event_type": event_type,
                    "missing": ",".join(str(version) for version in missing),
                    "plugins": ",".join(owners),
                },
            )

    def _check_follower(self, follower: Projection | Reaction[Any]) -> None:
        """A projection or reaction reads events of the loaded plugins'
        aggregate types: one it names must be declared, and a handler for a
        command type, or for an event of an aggregate type it does not
        follow, would never be called."""
        what = "projection" if isinstance(follower, Projection) else "reaction"
        unknown = sorted(follower.aggregate_types - self._aggregates.keys())
        if unknown:
            known = ", ".join(sorted(self._aggregates)) or "none"
            raise ConfigurationError(
                f"{what} {follower.name!r} of plugin {follower.plugin_name!r} follows aggregate type"
                f" {', '.join(unknown)}, which no loaded plugin declares (known: {known}): correct the name"
                " in aggregate_types, or load the plugin that declares it",
                reason="UNKNOWN_AGGREGATE_TYPE",
                metadata={"name": follower.name, "plugins": follower.plugin_name, "aggregate_types": ",".join(unknown)},
            )
        for event_type in sorted(follower.event_types):
            command = self._commands.get(event_type)
            if command is None:
                continue
            raise ConfigurationError(
                f"{what} {follower.name!r} of plugin {follower.plugin_name!r} has a handler for {event_type},"
                f" a command type (of {command.aggregate.name}, plugin {command.aggregate.plugin.name!r}): it"
                " only ever gets events; register the handler for the event the command's handler returns",
                reason="NOT_AN_EVENT",
                metadata={
                    "name": follower.name,
                    "plugins": f"{follower.plugin_name},{command.aggregate.plugin.name}",
                    "event_type": event_type,
                },
            )
        if not follower.aggregate_types:
            return  # follows every aggregate type
        for event_type in sorted(follower.event_types):
            event = self._events.get(event_type)
            if event is None or event.aggregate.name in follower.aggregate_types:
                continue
            raise ConfigurationError(
                f"{what} {follower.name!r} of plugin {follower.plugin_name!r} has a handler for {event_type},"
                f" an event of {event.aggregate.name} (plugin {event.aggregate.plugin.name!r}), but follows"
                f" only {', '.join(sorted(follower.aggregate_types))}: the handler would never be called; add"
                f" {event.aggregate.name} to its aggregate_types, or remove the handler",
                reason="NOT_FOLLOWED",
                metadata={
                    "name": follower.name,
                    "plugins": f"{follower.plugin_name},{event.aggregate.plugin.name}",
                    "event_type": event_type,
                    "aggregate_type": event.aggregate.name,
                },
            )

    def keep_per_tenant(self, scopes: Iterable[str]) -> None:
        """Check ``scopes`` per tenant though no plugin declares them: the
        store holds their claims per tenant (a declaration dropped, its
        plugin uninstalled), and checked globally those claims would be seen
        by no one (``claim_scopes.undeclared_tenant_scopes``). Called at
        start, before anything is served. A scope declared global is not
        taken: that switch is refused (CLAIM_SCOPE_SWITCHED)."""
        kept = frozenset(scopes) - self.global_claim_scopes
        self.per_tenant_claim_scopes = self.per_tenant_claim_scopes | kept

    @property
    def warnings(self) -> list[str]:
        """What is allowed but often a mistake, for ``chronicle plugins`` to
        say: an event type past schema version 1 with no upcaster (fine if no
        event of an older version was ever stored)."""
        found = []
        upcast = self.upcast_types
        for name, event in self._events.items():
            if event.schema_version > 1 and name not in upcast:
                found.append(
                    f"plugin {event.aggregate.plugin.name!r} applies {name} at schema version {event.schema_version}"
                    " and no upcaster reads an older version: a stored event of an older version would fail"
                    " its read (UNSUPPORTED_SCHEMA_VERSION); fine if none was ever stored"
                )
        return found

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


def _check_deadline_names(reaction: Reaction[Any]) -> None:
    """Each deadline name the reaction's functions name in a ``Schedule`` or
    ``Cancel`` (as far as their code says without running them:
    ``deadline_names``) has its ``@on_deadline`` function: a typo stops the
    plugins' load, not the reaction at its first event that meets it."""
    declared = reaction.deadline_handlers
    for named in named_deadlines(reaction):
        if named.name in declared:
            continue
        close = difflib.get_close_matches(named.name, declared, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        known = ", ".join(repr(name) for name in sorted(declared)) or "none"
        raise ConfigurationError(
            f"reaction {reaction.name!r} of plugin {reaction.plugin_name!r}: {named.function} returns"
            f" {named.call}({named.name!r}), but no @on_deadline({named.name!r}) function is declared (declared:"
            f" {known}): {hint}correct the name, or declare its function",
            reason="UNKNOWN_DEADLINE",
            metadata={
                "name": reaction.name,
                "plugins": reaction.plugin_name,
                "function": named.function,
                "deadline": named.name,
            },
        )


def _kind(declared: Projection | Reaction[Any]) -> str:
    """What ``declared`` is, as an error names it."""
    return "projection" if isinstance(declared, Projection) else "reaction"
