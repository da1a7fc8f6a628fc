"""The users' rules, and what they claim."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message

from domain_plugins.users import EMAIL_SCOPE, plugin
from domain_plugins.users import user as user_type
from domain_plugins.users.domain import held_claims
from domain_plugins.users.protos.users.v1 import users_pb2 as pb
from service.plugins import AlreadyExistsError, InvalidArgumentError, NotFoundError, NotUnique, ValidationError
from service.testing import Scenario

REGISTERED = pb.UserRegistered(email="ann@example.com", name="Ann")


def user(aggregate_id: str = "user-1") -> Scenario:
    return Scenario(plugin, aggregate_id=aggregate_id)


def test_register_claims_the_normalised_email() -> None:
    scenario = user().when(pb.RegisterUser(email=" Ann@Example.COM ", name=" Ann "))
    scenario.then(pb.UserRegistered(email="ann@example.com", name="Ann"))
    assert scenario.owner_of(EMAIL_SCOPE, "ann@example.com") == "user-1"


def test_registering_with_an_email_another_user_holds_is_not_unique() -> None:
    scenario = user().given_claim(EMAIL_SCOPE, "ann@example.com", owner="user-2")
    error = scenario.when(pb.RegisterUser(email="ann@example.com", name="Ann")).then_fails(
        NotUnique, reason="NOT_UNIQUE"
    )
    assert error.metadata == {"scope": EMAIL_SCOPE}
    assert scenario.owner_of(EMAIL_SCOPE, "ann@example.com") == "user-2"


def test_registering_twice_is_refused_and_claims_nothing() -> None:
    scenario = user().given(REGISTERED).when(pb.RegisterUser(email="other@example.com", name="Ann"))
    scenario.then_fails(AlreadyExistsError, reason="USER_ALREADY_REGISTERED")
    assert scenario.owner_of(EMAIL_SCOPE, "other@example.com") is None


@pytest.mark.parametrize("email", ["", "ann", "@example.com", "ann@", "a@b@c", "an n@example.com", "a" * 250 + "@x.io"])
def test_an_invalid_email_is_refused(email: str) -> None:
    user().when(pb.RegisterUser(email=email, name="Ann")).then_fails(InvalidArgumentError, reason="INVALID_EMAIL")


def test_a_name_is_required() -> None:
    user().when(pb.RegisterUser(email="ann@example.com", name=" ")).then_fails(
        InvalidArgumentError, reason="INVALID_NAME"
    )


def test_change_email_claims_the_new_and_releases_the_old() -> None:
    scenario = user().given(REGISTERED).when(pb.ChangeEmail(email="ANN@new.example"))
    scenario.then(pb.EmailChanged(email="ann@new.example", previous_email="ann@example.com"))
    assert scenario.owner_of(EMAIL_SCOPE, "ann@new.example") == "user-1"
    assert scenario.owner_of(EMAIL_SCOPE, "ann@example.com") is None


def test_changing_to_the_same_email_changes_nothing() -> None:
    user().given(REGISTERED).when(pb.ChangeEmail(email="Ann@example.com")).then()


def test_changing_to_an_email_another_user_holds_keeps_the_old_one() -> None:
    scenario = user().given(REGISTERED).given_claim(EMAIL_SCOPE, "bob@example.com", owner="user-2")
    # The given events claim nothing themselves: claim the old address as registering did.
    scenario.given_claim(EMAIL_SCOPE, "ann@example.com", owner="user-1")
    scenario.when(pb.ChangeEmail(email="bob@example.com")).then_fails(NotUnique, reason="NOT_UNIQUE")
    assert scenario.owner_of(EMAIL_SCOPE, "ann@example.com") == "user-1"
    assert scenario.owner_of(EMAIL_SCOPE, "bob@example.com") == "user-2"


def test_change_email_of_a_missing_user_is_not_found() -> None:
    user().when(pb.ChangeEmail(email="ann@example.com")).then_fails(NotFoundError, reason="USER_NOT_FOUND")


def test_a_deactivated_user_cannot_change_email() -> None:
    scenario = user().given(REGISTERED, pb.UserDeactivated()).when(pb.ChangeEmail(email="x@example.com"))
    scenario.then_fails(ValidationError, reason="USER_DEACTIVATED")


def test_deactivate_releases_the_email() -> None:
    scenario = user().given(REGISTERED).given_claim(EMAIL_SCOPE, "ann@example.com", owner="user-1")
    scenario.when(pb.DeactivateUser()).then(pb.UserDeactivated())
    assert scenario.owner_of(EMAIL_SCOPE, "ann@example.com") is None


def test_deactivating_twice_changes_nothing() -> None:
    user().given(REGISTERED, pb.UserDeactivated()).when(pb.DeactivateUser()).then()


def test_deactivate_a_missing_user_is_not_found() -> None:
    user().when(pb.DeactivateUser()).then_fails(NotFoundError, reason="USER_NOT_FOUND")


def _state_after(*events: Message) -> pb.User:
    state = pb.User()
    for event in events:
        user_type.events[event.DESCRIPTOR.full_name].apply(state, event)
    return state


@pytest.mark.parametrize(
    ("given", "command", "values"),
    [
        ((), pb.RegisterUser(email="Ann@example.com", name="Ann"), ["ann@example.com"]),
        ((REGISTERED,), pb.ChangeEmail(email="ann@new.example"), ["ann@new.example"]),
        ((REGISTERED,), pb.DeactivateUser(), []),
    ],
)
def test_the_declared_claims_are_what_the_handlers_leave_a_user_holding(
    given: tuple[Message, ...], command: Message, values: list[str]
) -> None:
    """``held_claims`` (what an import derives for users that came without
    claim records) says from the state what the handlers claim."""
    scenario = user().given(*given)
    if given:
        scenario.given_claim(EMAIL_SCOPE, REGISTERED.email, owner="user-1")  # as registering claimed it
    state = _state_after(*given, *scenario.when(command).appended())
    assert list(held_claims(state)) == [(EMAIL_SCOPE, value) for value in values]
    for value in ("ann@example.com", "ann@new.example"):
        assert (scenario.owner_of(EMAIL_SCOPE, value) == "user-1") == (value in values)
