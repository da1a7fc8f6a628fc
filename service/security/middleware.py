"""The authorization steps of the command pipeline: the policy's (its
decisions are the ``Authorizer``'s, ``service.security.policy``) and the
plugins' own rule on who sends a command (``sent_by_reactions``)."""

from __future__ import annotations

from service.plugins.middleware import CommandCall, Middleware
from service.plugins.registry import Registry
from service.security.policy import Authorizer


class AuthorizationMiddleware(Middleware):
    """Refuses a command its principal may not submit, or one that names
    another user than the principal without an impersonation grant."""

    name = "authorization"

    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    def before(self, call: CommandCall) -> None:
        self._authorizer.check_submit(call.principal, call.command_type, call.aggregate_id)
        self._authorizer.check_user(call.principal, call.user_id)


class ReactionOnlyCommands(Middleware):
    """Refuses a command a plugin lets only reactions send
    (``command(..., sent_by_reactions=...)``) from anyone else: any client,
    whatever its grants, and authentication on or off; a reaction not named.

    In the clients' pipeline and the reactions' alike (the policy's step is
    in the first only), inside the audit middleware: a refusal is audited as
    the policy's are."""

    name = "reaction-only commands"

    def __init__(self, registry: Registry) -> None:
        self._internal = {spec.name: spec for spec in registry.commands if spec.internal}

    def wants(self, hook: str) -> bool:
        # No plugin declares one: not a call per command for nothing.
        return hook == "before" and bool(self._internal)

    def before(self, call: CommandCall) -> None:
        spec = self._internal.get(call.command_type)
        if spec is not None:
            spec.check_sender(call.principal.name)
