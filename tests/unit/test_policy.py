"""The policy file and the decisions made from it."""

from __future__ import annotations

import tomllib

import pytest

from service.errors import ConfigurationError, PermissionDenied
from service.principal import ANONYMOUS, Principal
from service.security.policy import Authorizer, Policy, principals_without_credential, roles_without_consume
from tests.support.security import POLICY

AUTHORIZER = Authorizer(Policy.parse(tomllib.loads(POLICY)))


def who(name: str, *roles: str) -> Principal:
    return Principal(name, "jwt", frozenset(roles))


def test_a_role_grants_the_command_types_it_lists() -> None:
    AUTHORIZER.check_submit(who("alice"), "bank.v1.Deposit", "acc-1")
    with pytest.raises(PermissionDenied) as denied:
        AUTHORIZER.check_submit(who("alice"), "box.v1.CreateBox", "box-1")
    assert denied.value.reason == "SUBMIT_DENIED"


def test_roles_carried_by_the_credential_add_to_the_policys() -> None:
    AUTHORIZER.check_submit(who("alice", "boxer"), "box.v1.CreateBox", "box-1")


def test_a_wildcard_grants_every_type() -> None:
    assert AUTHORIZER.may_read(who("root"), "Anything")


def test_unknown_principals_are_denied_everything() -> None:
    stranger = who("stranger")
    assert not AUTHORIZER.may_read(stranger, "Account")
    assert not AUTHORIZER.may_subscribe(stranger, "Account")
    with pytest.raises(PermissionDenied):
        AUTHORIZER.check_admin(stranger, "query the audit log")


def test_subscribing_is_granted_separately_from_reading() -> None:
    assert AUTHORIZER.may_subscribe(who("alice"), "Account")
    assert not AUTHORIZER.may_subscribe(who("bob"), "Box")
    assert AUTHORIZER.may_read(who("bob"), "Box")


def test_a_principal_acts_as_itself_or_as_nobody_in_particular() -> None:
    AUTHORIZER.check_user(who("alice"), "alice")
    AUTHORIZER.check_user(who("alice"), "")
    with pytest.raises(PermissionDenied) as denied:
        AUTHORIZER.check_user(who("alice"), "carol")
    assert denied.value.reason == "IMPERSONATION_DENIED"
    AUTHORIZER.check_user(who("gateway"), "carol")


def test_with_authentication_off_everything_but_administration_is_allowed() -> None:
    anonymous = Authorizer.anonymous()
    anonymous.check_submit(ANONYMOUS, "bank.v1.Deposit", "acc-1")
    anonymous.check_user(ANONYMOUS, "carol")
    anonymous.check_read(ANONYMOUS, "Account")
    assert anonymous.may_subscribe(ANONYMOUS, "Account")
    assert not anonymous.enforcing
    with pytest.raises(PermissionDenied) as denied:
        anonymous.check_admin(ANONYMOUS, "forget aggregates")
    assert denied.value.reason == "ANONYMOUS_ADMIN_DENIED"
    assert "--anonymous-admin" in denied.value.message
    assert not anonymous.grant(ANONYMOUS).admin


def test_anonymous_callers_administer_only_when_the_operator_opted_in() -> None:
    Authorizer.anonymous(admin=True).check_admin(ANONYMOUS, "forget aggregates")


@pytest.mark.parametrize(
    "text",
    [
        "[roles.x]\nsubmitt = ['a']",  # a typo
        "[roles.x]\nadmin = 'yes'",
        "[roles.x]\nsubmit = 'bank.v1.Deposit'",
        "[principals.alice]\nroles = ['undefined']",
        "[users.alice]\nroles = []",
        "[roles.x]\nconsume = ['acme billing']",  # no group name nor pattern: a space
        "[roles.x]\nconsume = ['acme-?']",  # only '*' is a wildcard
    ],
)
def test_a_policy_with_mistakes_is_refused_at_start_up(text: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        Policy.parse(tomllib.loads(text))
    assert refused.value.reason == "BAD_POLICY"


def test_the_consume_grant_names_groups_by_name_or_star_pattern_and_admins_consume_all() -> None:
    policy = Policy.parse(
        tomllib.loads(
            "[roles.acme]\nsubscribe = ['Account']\nconsume = ['acme-*', 'shared.audit']\n"
            "[roles.legacy]\nsubscribe = ['Account']\n[roles.ops]\nadmin = true\nsubscribe = ['*']\n"
        )
    )
    authorizer = Authorizer(policy)
    acme, legacy, ops = who("a", "acme"), who("l", "legacy"), who("o", "ops")
    assert [authorizer.may_consume_group(acme, g) for g in ("acme-billing", "shared.audit", "globex-billing")] == [
        True,
        True,
        False,
    ]
    assert not authorizer.may_consume_group(acme, "shared-audit")  # '.' is no wildcard
    assert not authorizer.may_consume_group(legacy, "acme-billing")  # no consume key: no group
    assert authorizer.may_consume_group(ops, "anything")
    with pytest.raises(PermissionDenied) as refused:
        authorizer.check_consume_group(acme, "globex-billing")
    assert (refused.value.reason, refused.value.metadata["group"]) == ("CONSUME_DENIED", "globex-billing")
    assert roles_without_consume(policy) == ["legacy"]  # said at start-up
    assert Authorizer.anonymous().may_consume_group(ANONYMOUS, "any")  # authentication off: every group


# -- tenants (docs/security.md#tenants) ---------------------------------------

TENANT_POLICY = """
[roles.banker]
scope = "tenant"
submit = ["bank.v1.Deposit"]
read = ["Account"]
subscribe = ["Account"]

[roles.catalog]
read = ["Box"]

[principals."acme-app"]
roles = ["banker", "catalog"]
tenant = "acme"
"""

TENANTS = Authorizer(Policy.parse(tomllib.loads(TENANT_POLICY)))


def test_a_tenant_scoped_role_grants_on_its_tenants_aggregates_only() -> None:
    acme = who("acme-app")
    TENANTS.check_submit(acme, "bank.v1.Deposit", "acme:acc-1")
    for other in ("globex:acc-1", "acc-1", "acmex:acc-1", "acme"):
        with pytest.raises(PermissionDenied) as denied:
            TENANTS.check_submit(acme, "bank.v1.Deposit", other)
        assert denied.value.reason == "SUBMIT_DENIED"
    assert TENANTS.may_read_id(acme, "Account", "acme:acc-1")
    assert not TENANTS.may_read_id(acme, "Account", "globex:acc-1")
    # Checks that know no aggregate id see the unscoped roles alone.
    assert not TENANTS.may_read(acme, "Account")
    assert TENANTS.may_read(acme, "Box")


def test_a_tenant_scoped_role_grants_nothing_without_a_tenant_or_with_two() -> None:
    untenanted = Principal("bob", "jwt", frozenset({"banker"}))
    assert not TENANTS.may_submit_to(untenanted, "bank.v1.Deposit", "acme:acc-1")
    assert not TENANTS.may_submit_to(untenanted, "bank.v1.Deposit", ":acc-1")
    # The credential's tenant counts; one that contradicts the policy's, none.
    assert TENANTS.may_submit_to(Principal("bob", "jwt", frozenset({"banker"}), "acme"), "bank.v1.Deposit", "acme:a")
    contradicting = Principal("acme-app", "jwt", frozenset(), "globex")
    assert not TENANTS.may_submit_to(contradicting, "bank.v1.Deposit", "acme:a")
    assert not TENANTS.may_submit_to(contradicting, "bank.v1.Deposit", "globex:a")


def test_a_tenant_scoped_subscription_is_narrowed_to_the_tenants_ids() -> None:
    acme = who("acme-app")
    assert TENANTS.subscription_scope(acme, frozenset(), ["Account", "Box"]) == (frozenset({"Account"}), "acme:")
    with pytest.raises(PermissionDenied) as denied:
        TENANTS.subscription_scope(acme, frozenset({"Account"}), ["Account"], "globex:acc-1")
    assert denied.value.reason == "SUBSCRIBE_DENIED"
    assert TENANTS.may_subscribe_in_tenant(acme, "acme:", frozenset({"Account"}))
    assert not TENANTS.may_subscribe_in_tenant(acme, "globex:", frozenset({"Account"}))
    assert not TENANTS.may_subscribe_in_tenant(acme, "acme:", frozenset())  # every type takes "*"


@pytest.mark.parametrize(
    ("policy", "words"),
    [
        ('[roles.r]\nscope = "tenants"', "scope must be 'tenant'"),
        ('[roles.r]\nscope = "tenant"\nadmin = true', "cannot grant admin"),
        ("[roles.r]\ntenant_admin = true", "tenant_admin needs scope = 'tenant' beside it"),
        ('[roles.r]\nscope = "tenant"\ntenant_admin = "yes"', "tenant_admin must be true or false"),
        ('[roles.r]\n[principals."p"]\nroles = ["r"]\ntenant = "a:b"', "must not contain ':'"),
        ('[roles.r]\n[principals."p"]\nroles = ["r"]\ntenant = ""', "must not be empty"),
        ('[roles.r]\n[principals."p"]\nroles = ["r"]\ntenant = "a b"', "without spaces"),
        ('[roles.r]\n[principals."p"]\nroles = ["r"]\ntenant = 7', "must be a string"),
        ('[roles.r]\n[principals."p"]\nroles = ["r"]\ntenants = "a"', "takes only 'roles', 'tenant' and 'credential'"),
    ],
)
def test_a_bad_tenant_setting_stops_the_policy(policy: str, words: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        Policy.parse(tomllib.loads(policy))
    assert refused.value.reason == "BAD_POLICY"
    assert words in str(refused.value)


def test_a_principal_holding_a_tenant_role_without_a_tenant_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    Policy.parse(tomllib.loads('[roles.r]\nscope = "tenant"\n[principals."p"]\nroles = ["r"]'))
    assert "principals.p holds tenant-scoped roles ['r']" in caplog.text


def test_a_tenant_scoped_consume_grant_names_its_own_tenants_groups_alone() -> None:
    """A tenant-scoped role's ``consume`` counts by name (the refusal that
    tells nothing of the group) and then only for a group of the
    principal's own tenant: not another tenant's, not one of every tenant,
    even where an unscoped role grants the subscribe a group of every
    tenant takes."""
    policy = Authorizer(
        Policy.parse(
            tomllib.loads(
                '[roles.teller]\nscope = "tenant"\nsubscribe = ["Account"]\nconsume = ["*"]\n'
                '[roles.auditor]\nsubscribe = ["Account"]\n'
                '[principals."acme-app"]\nroles = ["teller", "auditor"]\ntenant = "acme"\n'
            )
        )
    )
    acme = who("acme-app")
    assert policy.may_consume_group(acme, "billing")  # by name: any, as the scoped grant says
    assert policy.may_consume_group_of(acme, "billing", "acme:")
    assert not policy.may_consume_group_of(acme, "billing", "globex:")
    assert not policy.may_consume_group_of(acme, "billing", None)  # a group of every tenant
    untenanted = Principal("bob", "jwt", frozenset({"teller"}))
    assert not policy.may_consume_group(untenanted, "billing")


TENANT_ADMINS = Authorizer(
    Policy.parse(
        tomllib.loads(
            '[roles.support]\nscope = "tenant"\ntenant_admin = true\n'
            '[roles.banker]\nscope = "tenant"\nread = ["*"]\n'
            "[roles.operator]\nadmin = true\n"
            '[principals."acme-support"]\nroles = ["support"]\ntenant = "acme"\n'
            '[principals."acme-app"]\nroles = ["banker"]\ntenant = "acme"\n'
            '[principals."root"]\nroles = ["operator", "support"]\ntenant = "acme"\n'
        )
    )
)


def test_tenant_admin_administers_the_principals_own_tenant_and_admin_every_tenant() -> None:
    assert TENANT_ADMINS.administered_tenant(who("acme-support"), "list aggregates") == "acme"
    assert TENANT_ADMINS.administered_tenant(who("root"), "list aggregates") is None  # admin wins: every tenant
    assert TENANT_ADMINS.tenant_administered(who("root")) == ""
    # Its credential naming another tenant than the policy: no tenant, so no administration.
    for refused in [who("acme-app"), Principal("acme-support", "jwt", tenant="globex"), who("stranger")]:
        with pytest.raises(PermissionDenied) as denied:
            TENANT_ADMINS.administered_tenant(refused, "list aggregates")
        assert denied.value.reason == "ADMIN_DENIED"


def test_tenant_admin_without_a_tenant_grants_nothing_and_never_every_tenants_administration() -> None:
    untenanted = Principal("bob", "api-key", frozenset({"support"}))
    with pytest.raises(PermissionDenied) as denied:
        TENANT_ADMINS.administered_tenant(untenanted, "forget aggregates")
    assert (denied.value.reason, "tenant" in denied.value.metadata) == ("ADMIN_DENIED", False)
    with pytest.raises(PermissionDenied) as denied:
        TENANT_ADMINS.check_admin(who("acme-support"), "rewrap keys")
    assert (denied.value.reason, denied.value.metadata["tenant"]) == ("ADMIN_DENIED", "acme")
    assert "tenant_admin grant administers tenant 'acme' only" in denied.value.message
    assert not TENANT_ADMINS.may_consume_group(who("acme-support"), "billing")  # not admin's every group


CREDENTIALED = Policy.parse(
    tomllib.loads(
        """
[roles.operator]
read = ["*"]
admin = true

[roles.tenant-reader]
scope = "tenant"
read = ["Account"]

[principals."CN=batch,O=Acme"]
roles = ["operator"]
credential = "mtls"

[principals."acme-app"]
roles = ["tenant-reader"]
tenant = "acme"
credential = "api-key"

[principals."alice"]
roles = ["operator"]
"""
    )
)


def test_a_principal_entry_with_a_credential_is_for_that_credential_alone() -> None:
    authorizer = Authorizer(CREDENTIALED)
    assert authorizer.grant(Principal("CN=batch,O=Acme", "mtls")).admin
    impostor = Principal("CN=batch,O=Acme", "jwt")  # a token whose sub is the certificate's name
    assert not authorizer.grant(impostor).admin
    assert not authorizer.may_read(impostor, "Account")


def test_a_principal_entrys_tenant_is_for_its_credential_alone() -> None:
    authorizer = Authorizer(CREDENTIALED)
    assert authorizer.may_read_id(Principal("acme-app", "api-key"), "Account", "acme:acc-1")
    assert authorizer.tenant_of(Principal("acme-app", "jwt")) == ""
    assert not authorizer.may_read_id(Principal("acme-app", "jwt", frozenset({"tenant-reader"})), "Account", "acme:a")


def test_a_principal_entry_without_a_credential_stands_for_every_credential_and_is_listed() -> None:
    authorizer = Authorizer(CREDENTIALED)
    assert authorizer.grant(Principal("alice", "jwt")).admin
    assert authorizer.grant(Principal("alice", "api-key")).admin
    assert principals_without_credential(CREDENTIALED) == ["alice"]


@pytest.mark.parametrize("credential", ['"password"', '"MTLS"', "1", '["jwt"]'])
def test_an_unknown_credential_stops_the_policy(credential: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        Policy.parse(tomllib.loads(f"[principals.p]\nroles = []\ncredential = {credential}\n"))
    assert refused.value.reason == "BAD_POLICY"
    assert "principals.p.credential must be one of ['mtls', 'jwt', 'api-key']" in str(refused.value)
