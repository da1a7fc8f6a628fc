"""What an action on all of a list confirms: how many items there were and
a digest of their ids, carried by the confirmation's form. The action takes
the list again and goes on only if it is the one confirmed (``Changed``
otherwise), so an operator confirms what will be done, not what was there
when the page was drawn. A group's parked events and a reaction's parked
commands confirm alike (``groups``, ``parked``)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from service.errors import ChronicleError


class StoppedPartway(Exception):
    """An action on every confirmed item, each its own call, that failed
    after some were done: ``error``, and what was done before it (``done``,
    exact counts), for the page to say both. Those done stay done."""

    def __init__(self, error: ChronicleError, done: str) -> None:
        super().__init__(f"{done} ({error})")
        self.error = error
        self.done = done


class Changed(Exception):
    """The list is no longer the one the operator confirmed: nothing was
    done; the confirmation is shown again with the new count."""

    def __init__(self, confirmed: int, now: int) -> None:
        super().__init__(f"{confirmed} confirmed, {now} now")
        self.confirmed = confirmed
        self.now = now


def digest_of(ids: Sequence[str]) -> str:
    """Which items these are, in 32 hex digits (their ids, sorted)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:32]


def confirmation_fields(ids: Sequence[str]) -> dict[str, str]:
    """The form fields that name exactly these items: their count and digest."""
    return {"count": str(len(ids)), "digest": digest_of(ids)}


def check_confirmed(ids: Sequence[str], form: dict[str, str]) -> None:
    """Raise ``Changed`` unless ``ids`` are the items ``form`` confirmed."""
    if digest_of(ids) != form.get("digest", "") or str(len(ids)) != form.get("count", ""):
        confirmed = form.get("count", "")
        raise Changed(int(confirmed) if confirmed.isdigit() and len(confirmed) < 10 else 0, len(ids))
