"""The tenant guard docs/plugins.md shows ("A reaction acts for the user
who caused it"): a principal ``TENANT-name`` commands only aggregates
``TENANT:...``, and a reaction's debit is held to the tenant of the user
whose command caused it. ``naive`` is the guard that lets every reaction
command through, as a first attempt does: with it, a tenant's transfer
drains another tenant's account."""

from __future__ import annotations

from service.plugins import CommandCall, Middleware, Plugin, ValidationError

REACTION_PREFIX = "reaction:"  # the principal a reaction's commands run as: reaction:<name>
OPERATORS = frozenset({"ops"})
# What a reaction may do to an account only for its own tenant: take money out of it.
# Credits, refunds and the transfer's own steps may go to any tenant's aggregates.
DEBITS = frozenset({"bank.v1.Withdraw"})


class TenantGuard(Middleware):
    name = "tenant-guard"

    def before(self, call: CommandCall) -> None:
        if call.principal.name.startswith(REACTION_PREFIX):
            if call.command_type not in DEBITS:
                return
            # The event's user: the principal of the command that caused it
            # (or whom that principal could impersonate, a policy grant).
            acting = call.user_id
        else:
            acting = call.principal.name
        if acting in OPERATORS:
            return
        tenant = acting.partition("-")[0]
        if not call.aggregate_id.startswith(f"{tenant}:"):
            raise ValidationError("the aggregate belongs to another tenant", reason="TENANT_DENIED")


class NaiveTenantGuard(Middleware):
    name = "naive-tenant-guard"

    def before(self, call: CommandCall) -> None:
        name = call.principal.name
        if name.startswith(REACTION_PREFIX) or name in OPERATORS:
            return  # a reaction "is the server": but it acts for whoever caused it
        if not call.aggregate_id.startswith(name.partition("-")[0] + ":"):
            raise ValidationError("the aggregate belongs to another tenant", reason="TENANT_DENIED")


guarded = Plugin("tenancy")
guarded.add_middleware(TenantGuard())
naive = Plugin("naive-tenancy")
naive.add_middleware(NaiveTenantGuard())
