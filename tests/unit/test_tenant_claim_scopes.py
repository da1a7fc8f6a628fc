"""Claims scopes declared per tenant (service.claim_scopes): the
declaration and its conflicts, how a claim is stored, the Scenario's
lookups, and how a tenant's key of a scope is said in messages."""

from __future__ import annotations

import pytest

from domain_plugins.users.protos.users.v1 import users_pb2 as pb
from service.claim_scopes import declared_scope, scope_tenant, stored_claims, stored_scope, tenant_scope
from service.errors import ClaimWithoutTenant, ConfigurationError, NotUnique
from service.plugins import CommandContext, Plugin
from service.plugins.registry import Registry
from service.store.encryption import claims_key_id
from service.store.key_names import humanized, key_owner
from service.store.master_keys import TENANT_OWNED_MARK, owner_tenant
from service.store.records import ClaimChange
from service.testing import Scenario, ScenarioFailed

EMAIL = "members.email"


def members(name: str = "members", *, per_tenant: bool = True) -> Plugin:
    plugin = Plugin(name)
    scope = plugin.claims_scope(EMAIL, per_tenant=per_tenant)
    member = plugin.aggregate(f"Member.{name}", state=pb.User)
    if name != "members":
        return plugin

    @member.command(pb.RegisterUser, creates=True)
    def register(command: pb.RegisterUser, state: pb.User, context: CommandContext) -> pb.UserRegistered:
        context.claim(scope, command.email)
        return pb.UserRegistered(email=command.email)

    @member.apply(pb.UserRegistered)
    def _registered(state: pb.User, event: pb.UserRegistered) -> None:
        state.email = event.email

    return plugin


def test_a_per_tenant_scope_is_stored_under_the_tenant_and_the_master_keys_read_it_back() -> None:
    per_tenant = frozenset({EMAIL})
    stored = stored_scope(EMAIL, "acme:m-1", per_tenant)
    assert stored == tenant_scope(EMAIL, "acme") == EMAIL + TENANT_OWNED_MARK + "acme"
    assert (declared_scope(stored), scope_tenant(stored)) == (EMAIL, "acme")
    assert owner_tenant(claims_key_id(stored)) == "acme"  # so acme's master key wraps its key of the scope
    assert stored_scope("users.email", "acme:m-1", per_tenant) == "users.email"  # a global scope: unchanged
    assert stored_claims([ClaimChange(EMAIL, "a", True)], "globex:m", per_tenant) == (
        ClaimChange(tenant_scope(EMAIL, "globex"), "a", True),
    )
    for no_tenant in ("m-1", ":m-1", "a b:m-1"):
        with pytest.raises(ClaimWithoutTenant) as refused:
            stored_scope(EMAIL, no_tenant, per_tenant)
        assert (refused.value.reason, refused.value.metadata) == (
            "CLAIM_WITHOUT_TENANT",
            {"scope": EMAIL, "aggregate_id": no_tenant},
        )


def test_not_unique_names_the_declared_scope_and_the_tenant() -> None:
    lost = NotUnique(tenant_scope(EMAIL, "acme"))
    assert (lost.metadata, lost.message) == (
        {"scope": EMAIL, "tenant": "acme"},
        "the value is already taken in 'members.email' of tenant 'acme'",
    )
    assert NotUnique("users.email").metadata == {"scope": "users.email"}  # a global scope's: as before


def test_plugins_may_share_a_scope_but_not_disagree_on_it() -> None:
    assert Registry([members(), members("others")]).per_tenant_claim_scopes == {EMAIL}
    assert Registry([members(per_tenant=False)]).per_tenant_claim_scopes == frozenset()
    with pytest.raises(ConfigurationError) as both:
        Registry([members(), members("others", per_tenant=False)])
    assert both.value.reason == "DUPLICATE_REGISTRATION"
    assert "declared per tenant by plugin 'members' and global by plugin 'others'" in both.value.message
    plugin = Plugin("twice")
    plugin.claims_scope(EMAIL, per_tenant=True)
    with pytest.raises(ValueError, match="declared twice"):
        plugin.claims_scope(EMAIL)
    with pytest.raises(ValueError, match="printable"):
        plugin.claims_scope("bad\x1escope")


def test_a_scenario_claims_per_tenant_and_looks_up_by_tenant() -> None:
    scenario = Scenario(members(), aggregate_id="acme:m-1").given_claim(EMAIL, "ann@x", owner="globex:m-9")
    scenario.when(pb.RegisterUser(email="ann@x")).then(pb.UserRegistered(email="ann@x"))  # another tenant's
    assert scenario.owner_of(EMAIL, "ann@x", tenant="acme") == "acme:m-1"
    assert scenario.owner_of(EMAIL, "ann@x", tenant="globex") == "globex:m-9"
    with pytest.raises(ScenarioFailed, match="per tenant"):
        scenario.owner_of(EMAIL, "ann@x")

    taken = Scenario(members(), aggregate_id="acme:m-2").given_claim(EMAIL, "ann@x", owner="acme:m-1")
    error = taken.when(pb.RegisterUser(email="ann@x")).then_fails(NotUnique, reason="NOT_UNIQUE")
    assert error.metadata == {"scope": EMAIL, "tenant": "acme"}

    alone = Scenario(members(), aggregate_id="m-1").when(pb.RegisterUser(email="ann@x"))
    alone.then_fails(ClaimWithoutTenant, reason="CLAIM_WITHOUT_TENANT")


def test_a_tenants_key_of_a_scope_is_said_as_whose_it_is() -> None:
    key_id = claims_key_id(tenant_scope("users.email", "acme"))
    whose = "the uniqueness claims of tenant 'acme' in scope 'users.email'"
    assert key_owner(key_id) == whose
    assert humanized(f"the data key of {key_id!r} is wrapped") == f"the data key of {whose} is wrapped"
    assert humanized(f"the data key of {key_id}, wrapped") == f"the data key of {whose}, wrapped"


def test_claims_derived_on_import_are_the_tenants_in_a_per_tenant_scope() -> None:
    from service.transfer.claims import _held

    member = members().aggregates[0]
    member.claims(lambda state: [(EMAIL, state.email), ("users.email", state.email)])
    held = _held("acme:m-1", member, pb.User(email="ann@x"), frozenset({EMAIL}))
    assert [(c.scope, c.value) for c in held] == [(tenant_scope(EMAIL, "acme"), "ann@x"), ("users.email", "ann@x")]
    with pytest.raises(ClaimWithoutTenant):
        _held("m-1", member, pb.User(email="ann@x"), frozenset({EMAIL}))


def test_a_scope_the_store_holds_per_tenant_is_kept_per_tenant_but_not_one_declared_global() -> None:
    registry = Registry([members(per_tenant=False)])  # EMAIL declared global
    registry.keep_per_tenant(["retired.email", EMAIL])
    assert registry.per_tenant_claim_scopes == {"retired.email"}
    assert stored_scope("retired.email", "acme:m-1", registry.per_tenant_claim_scopes) == tenant_scope(
        "retired.email", "acme"
    )
    assert stored_scope(EMAIL, "acme:m-1", registry.per_tenant_claim_scopes) == EMAIL
