"""The names a policy grants, checked against the plugins the server loads.

``read`` and ``subscribe`` name aggregate types, ``submit`` command types.
An entry that names the wrong kind (``read = ["bank.v1.AccountOpened"]``,
an event type: grants are per aggregate type) grants nothing and is always
a mistake: it is refused (``BAD_POLICY``, naming the role, the key and the
entry, and what to write instead). An entry no loaded plugin declares at
all may be a typo (``"Acount"``) or a retired plugin's type, which may
rightly still be granted (``"*"`` and named types reach the events its
aggregates left in the log): it loads, with a WARNING naming it and the
closest declared name. An API key whose role the policy does not define
grants nothing either, and is refused as a policy principal naming one is.

Kept apart from ``policy.py``: the policy is parsed without the plugins
(the CLI reads it alone); these checks run where both are loaded, at
start-up and at each reload.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from service.errors import ConfigurationError
from service.plugins.registry import Registry
from service.security.credentials import ApiKeys
from service.security.policy import ANY, Policy


def check_names(policy: Policy, registry: Registry, *, source: str) -> list[str]:
    """Raise BAD_POLICY for an entry of the wrong kind; the warnings for
    entries no loaded plugin declares."""
    aggregates = sorted(a.name for a in registry.aggregates)
    commands = sorted(c.name for c in registry.commands)
    warnings: list[str] = []
    for role, grant in sorted(policy.roles.items()):
        for key, names in (("read", grant.read), ("subscribe", grant.subscribe)):
            for name in sorted(names - {ANY}):
                kind_of = _kind(registry, name, aggregate_types=False)
                if kind_of:
                    raise _wrong_kind(source, role, key, name, kind_of, "aggregate types")
                if name not in aggregates:
                    warnings.append(_undeclared(source, role, key, name, "an aggregate type", aggregates))
        for name in sorted(grant.submit - {ANY}):
            if registry.command(name) is not None:
                continue
            kind_of = _kind(registry, name, aggregate_types=True)
            if kind_of:
                raise _wrong_kind(source, role, "submit", name, kind_of, "command types")
            warnings.append(_undeclared(source, role, "submit", name, "a command type", commands))
    return warnings


def check_key_roles(api_keys: ApiKeys, policy: Policy, *, keys_source: str, policy_source: str) -> None:
    """BAD_POLICY naming the first API key whose role the policy does not
    define (a policy principal naming one is refused alike)."""
    for principal, roles in api_keys.principals_roles():
        missing = sorted(roles - policy.roles.keys())
        if missing:
            raise ConfigurationError(
                f"{keys_source}: the key of principal {principal!r} holds roles {missing} that {policy_source}"
                " does not define: it would grant nothing; define them, or correct the key's roles",
                reason="BAD_POLICY",
                metadata={"principal": principal, "roles": ",".join(missing)},
            )


def _kind(registry: Registry, name: str, *, aggregate_types: bool) -> str:
    """What ``name`` is, if it is a declared type of another kind than the
    key takes: "the event type of Account aggregates", ..."""
    event = registry.event(name)
    if event is not None:
        return f"an event type (of {event.aggregate.name} aggregates)"
    command = registry.command(name)
    if command is not None:
        return f"a command type (of {command.aggregate.name} aggregates)"
    if aggregate_types and registry.aggregate(name) is not None:
        return "an aggregate type"
    return ""


def _wrong_kind(source: str, role: str, key: str, name: str, kind_of: str, takes: str) -> ConfigurationError:
    return ConfigurationError(
        f"{source}: roles.{role}.{key} names {name!r}, {kind_of}; {key} takes {takes}: as written it grants nothing",
        reason="BAD_POLICY",
        metadata={"role": role, "key": key, "entry": name},
    )


def _undeclared(source: str, role: str, key: str, name: str, kind: str, declared: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(declared), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return (
        f"{source}: roles.{role}.{key} names {name!r}, which no loaded plugin declares as {kind}: a retired"
        f" plugin's keeps its grant, a typo grants nothing{hint}"
    )
