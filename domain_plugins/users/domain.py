"""The user aggregate: handlers decide (and claim), apply functions record."""

from __future__ import annotations

from collections.abc import Iterable

from domain_plugins.users.protos.users.v1 import users_pb2 as pb
from service.plugins import (
    CommandContext,
    InvalidArgumentError,
    Plugin,
    ValidationError,
)

EMAIL_SCOPE = "users.email"
MAX_EMAIL = 254
MAX_NAME = 200

plugin = Plugin("users", description="Users with a unique e-mail address: the example of uniqueness claims.")
user = plugin.aggregate("User", state=pb.User, already_exists="USER_ALREADY_REGISTERED")


def normalised_email(email: str) -> str:
    """Trimmed and lower-cased: the form that is stored and claimed, so that
    "Ann@Example.com" and "ann@example.com " are one address."""
    email = email.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or not domain or "@" in domain or len(email) > MAX_EMAIL or not email.isprintable():
        raise InvalidArgumentError("not an e-mail address", reason="INVALID_EMAIL", field="email")
    if any(c.isspace() for c in email):
        raise InvalidArgumentError("an e-mail address has no spaces", reason="INVALID_EMAIL", field="email")
    return email


def _valid_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise InvalidArgumentError(f"name must be 1 to {MAX_NAME} characters", reason="INVALID_NAME", field="name")
    return name


@user.command(pb.RegisterUser, creates=True)
def register_user(command: pb.RegisterUser, state: pb.User, context: CommandContext) -> pb.UserRegistered:
    email = normalised_email(command.email)
    name = _valid_name(command.name)
    context.claim(EMAIL_SCOPE, email)
    return pb.UserRegistered(email=email, name=name)


@user.command(pb.ChangeEmail, requires_existing=True)
def change_email(command: pb.ChangeEmail, state: pb.User, context: CommandContext) -> pb.EmailChanged | None:
    if not state.active:
        raise ValidationError(f"user {context.aggregate_id!r} is deactivated", reason="USER_DEACTIVATED")
    email = normalised_email(command.email)
    if email == state.email:
        return None  # already so: nothing changes, nothing is claimed
    context.release(EMAIL_SCOPE, state.email)
    context.claim(EMAIL_SCOPE, email)
    return pb.EmailChanged(email=email, previous_email=state.email)


@user.command(pb.DeactivateUser, requires_existing=True)
def deactivate_user(command: pb.DeactivateUser, state: pb.User, context: CommandContext) -> pb.UserDeactivated | None:
    if not state.active:
        return None
    context.release(EMAIL_SCOPE, state.email)
    return pb.UserDeactivated()


@user.claims
def held_claims(state: pb.User) -> Iterable[tuple[str, str]]:
    """What the handlers above leave a user holding: its address while it
    is active (registering claims it, a change moves it, deactivating
    releases it). An import of users without claim records takes these."""
    return [(EMAIL_SCOPE, state.email)] if state.active and state.email else []


@user.apply(pb.UserRegistered)
def _registered(state: pb.User, event: pb.UserRegistered) -> None:
    state.email = event.email
    state.name = event.name
    state.active = True


@user.apply(pb.EmailChanged)
def _email_changed(state: pb.User, event: pb.EmailChanged) -> None:
    state.email = event.email


@user.apply(pb.UserDeactivated)
def _deactivated(state: pb.User, event: pb.UserDeactivated) -> None:
    state.active = False
