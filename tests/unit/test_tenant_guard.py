"""service.plugins.TenantGuard: a reaction's command stays in the tenant of
the event that caused it; clients' commands are the policy's to judge."""

from __future__ import annotations

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import CommandCall, TenantGuard, ValidationError
from service.principal import Principal, reaction_principal

GUARD = TenantGuard()
REACTION = reaction_principal("bank.transfers")


def call(aggregate_id: str, tenant: str, principal: Principal = REACTION) -> CommandCall:
    return CommandCall(
        command_id="c-1",
        command_type="bank.v1.Withdraw",
        aggregate_id=aggregate_id,
        aggregate_type="Account",
        message=bank.Withdraw(amount=1),
        principal=principal,
        tenant=tenant,
    )


def test_a_reactions_command_to_another_tenants_aggregate_is_refused() -> None:
    with pytest.raises(ValidationError) as refused:
        GUARD.before(call("acme:acc-1", "globex"))
    assert refused.value.reason == "CROSS_TENANT"


@pytest.mark.parametrize("aggregate_id", ["acc-1", "globexx:acc-1", "globex"])
def test_a_reactions_command_outside_its_tenant_is_refused_whatever_the_id_looks_like(aggregate_id: str) -> None:
    with pytest.raises(ValidationError):
        GUARD.before(call(aggregate_id, "globex"))


def test_a_reactions_command_within_its_tenant_passes() -> None:
    GUARD.before(call("globex:acc-1", "globex"))


def test_a_reaction_acting_on_an_event_of_no_tenant_is_not_held() -> None:
    GUARD.before(call("acme:acc-1", ""))


def test_a_clients_command_is_the_policys_to_judge() -> None:
    """A principal with a tenant may hold unscoped roles (what every tenant
    shares): the policy decided, the guard does not second-guess it."""
    GUARD.before(call("catalogue-1", "acme", Principal("acme-app", "api-key", tenant="acme")))
