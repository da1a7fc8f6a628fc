"""A users application written with the Python ``eventsourcing`` library
(PyPI), which never made e-mail addresses unique, and the mappings that
turn its events into the users plugin's: with the claims the plugin's
handlers would have taken (docs/migration.md shows the same), and without."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from domain_plugins.users.domain import EMAIL_SCOPE, normalised_email
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.transfer.eventsourcing import ChronicleClaim, ChronicleEvent, EventsourcingEvent


class User(Aggregate):
    @event("Registered")
    def __init__(self, email: str, name: str) -> None:
        self.email = email
        self.name = name

    @event("EmailChanged")
    def change_email(self, email: str, previous: str) -> None:
        self.email = email


class Users(Application[UUID]):
    name = "Users"  # its table: users_events

    def register(self, email: str, name: str) -> UUID:
        user = User(email, name)
        self.save(user)
        return user.id

    def change_email(self, user_id: UUID, email: str) -> None:
        user: User = self.repository.get(user_id)
        user.change_email(email, user.email)
        self.save(user)


def to_chronicle(event: EventsourcingEvent) -> ChronicleEvent | None:
    """The mapping with claims: registering claims the address, a change
    moves the claim, as the plugin's handlers do."""
    kind = event.topic.rpartition(".")[2]
    if kind == "Registered":
        email = normalised_email(event.state["email"])
        return ChronicleEvent(
            "User",
            users.UserRegistered(email=email, name=event.state["name"]),
            claims=[ChronicleClaim(EMAIL_SCOPE, email)],
        )
    if kind == "EmailChanged":
        email, previous = normalised_email(event.state["email"]), normalised_email(event.state["previous"])
        return ChronicleEvent(
            "User",
            users.EmailChanged(email=email, previous_email=previous),
            claims=[ChronicleClaim(EMAIL_SCOPE, previous, release=True), ChronicleClaim(EMAIL_SCOPE, email)],
        )
    return None


def without_claims(event: EventsourcingEvent) -> ChronicleEvent | None:
    """The mapping as docs/migration.md showed it before claims: events only."""
    mapped = to_chronicle(event)
    return None if mapped is None else ChronicleEvent(mapped.aggregate_type, mapped.message)
