"""A guard for multi-tenant deployments: a reaction's commands stay in the
tenant of the event that caused them.

The policy holds a client to its tenant's aggregates (a ``scope =
"tenant"`` role), but a reaction's commands pass no policy: they act for
whoever caused the event, on whatever aggregate the reaction names, and a
reaction that takes an id from an event's payload (an account to debit)
would act on another tenant's aggregate for the tenant that wrote it. A
plugin whose handlers cannot tell which ids its process may touch adds
``TenantGuard`` (``plugin.add_middleware(TenantGuard())``): a reaction's
command acting for a tenant (``CommandCall.tenant``, the tenant of the
aggregate whose event caused it) must name one of that tenant's
aggregates, or it is refused ``CROSS_TENANT``: a ``ValidationError``, so
the reaction is handed the refusal (``on_refused``) and compensates, and a
parked command replayed is refused alike. Clients' commands are the
policy's to judge, and a reaction acting on an event of no tenant is not
held: a principal with a tenant may hold unscoped roles too (what every
tenant shares), and so may a process that starts outside every tenant.

Plugin middleware applies to every command the server runs, whichever
plugin declared it: add the guard where every loaded plugin's reactions
should stay in their tenant.
"""

from __future__ import annotations

from service.errors import ValidationError
from service.plugins.middleware import CommandCall, Middleware
from service.principal import in_tenant

__all__ = ["TenantGuard"]

REACTION = "reaction"  # Principal.method of a reaction's commands (service.principal.reaction_principal)


class TenantGuard(Middleware):
    """Refuses a reaction's command to an aggregate outside the tenant of
    the event that caused it (``CROSS_TENANT``)."""

    name = "tenant guard"

    def before(self, call: CommandCall) -> None:
        if call.principal.method == REACTION and call.tenant and not in_tenant(call.tenant, call.aggregate_id):
            raise ValidationError(
                f"a command caused in tenant {call.tenant!r} may not name {call.aggregate_id!r}, another tenant's"
                " aggregate",
                reason="CROSS_TENANT",
            )
