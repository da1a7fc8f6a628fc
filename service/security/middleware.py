"""The authorization step of the command pipeline. The decisions themselves
are the ``Authorizer``'s (``service.security.policy``)."""

from __future__ import annotations

from service.plugins.middleware import CommandCall, Middleware
from service.security.policy import Authorizer


class AuthorizationMiddleware(Middleware):
    """Refuses a command its principal may not submit, or one that names
    another user than the principal without an impersonation grant."""

    name = "authorization"

    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    def before(self, call: CommandCall) -> None:
        self._authorizer.check_submit(call.principal, call.command_type)
        self._authorizer.check_user(call.principal, call.user_id)
