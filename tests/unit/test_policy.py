"""The policy file and the decisions made from it."""

from __future__ import annotations

import tomllib

import pytest

from service.errors import ConfigurationError, PermissionDenied
from service.principal import ANONYMOUS, Principal
from service.security.policy import Authorizer, Policy, roles_without_consume
from tests.support.security import POLICY

AUTHORIZER = Authorizer(Policy.parse(tomllib.loads(POLICY)))


def who(name: str, *roles: str) -> Principal:
    return Principal(name, "jwt", frozenset(roles))


def test_a_role_grants_the_command_types_it_lists() -> None:
    AUTHORIZER.check_submit(who("alice"), "bank.v1.Deposit")
    with pytest.raises(PermissionDenied) as denied:
        AUTHORIZER.check_submit(who("alice"), "box.v1.CreateBox")
    assert denied.value.reason == "SUBMIT_DENIED"


def test_roles_carried_by_the_credential_add_to_the_policys() -> None:
    AUTHORIZER.check_submit(who("alice", "boxer"), "box.v1.CreateBox")


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
    anonymous.check_submit(ANONYMOUS, "bank.v1.Deposit")
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
