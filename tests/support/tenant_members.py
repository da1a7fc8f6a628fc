"""Members registered with an address unique in ``members.email``, the scope
declared global or per tenant: the plugin of the tests of switching a
claims scope (tests/integration/test_claim_scope_switch.py), named to a
``chronicle import --database-url`` as ``tests.support.tenant_members:per_tenant``."""

from __future__ import annotations

from domain_plugins.users.protos.users.v1 import users_pb2 as pb
from service.plugins import CommandContext, Plugin

EMAIL = "members.email"


def members(*, per_tenant: bool, declares_claims: bool = True) -> Plugin:
    """The plugin, its scope ``per_tenant`` or global, and (``declares_claims``)
    the claims its members' state holds declared, which an import derives."""
    plugin = Plugin("members")
    scope = plugin.claims_scope(EMAIL, per_tenant=per_tenant)
    member = plugin.aggregate("Member", state=pb.User)

    @member.command(pb.RegisterUser, creates=True)
    def register(command: pb.RegisterUser, state: pb.User, context: CommandContext) -> pb.UserRegistered:
        context.claim(scope, command.email)
        return pb.UserRegistered(email=command.email, name=command.name)

    @member.apply(pb.UserRegistered)
    def _registered(state: pb.User, event: pb.UserRegistered) -> None:
        state.email = event.email

    if declares_claims:

        @member.claims
        def _held(state: pb.User) -> list[tuple[str, str]]:
            return [(scope, state.email)]

    return plugin


per_tenant = members(per_tenant=True)
