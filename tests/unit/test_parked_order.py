"""The order ListParkedCommands lists a reaction's parked commands in, and
where its page tokens go on: by the order they were parked in
(``ParkedCommand.sequence``), those parked before sequences existed first;
a token made before sequences goes on among those."""

from __future__ import annotations

import pytest

from chronicle.v1 import reaction_service_pb2 as reaction_pb
from service.api.page_tokens import fingerprint, make_token
from service.api.reaction_service import _after
from service.errors import InvalidInput
from service.processing.reaction_documents import parked_order

LISTING = fingerprint("parked commands", "r")


def _parked(command_id: str, position: int, sequence: int = 0) -> reaction_pb.ParkedCommand:
    return reaction_pb.ParkedCommand(command_id=command_id, position=position, parked_at_us=position, sequence=sequence)


def test_commands_are_listed_in_the_order_parked_whatever_their_events_position() -> None:
    entries = [
        _parked("new-deadline", 3, sequence=2),  # parked last, at an early scheduling event's position
        _parked("new", 9, sequence=1),
        _parked("legacy-late", 8),
        _parked("legacy-early", 5),
    ]
    listed = [entry.command_id for entry in sorted(entries, key=parked_order)]
    assert listed == ["legacy-early", "legacy-late", "new", "new-deadline"]


def test_a_token_goes_on_after_its_command_and_one_made_before_sequences_among_the_legacy_ones() -> None:
    token = make_token(LISTING, s=1, p=9, t=9, c="new")
    assert _after(token, LISTING) == (1, 9, 9, "new")
    older = make_token(LISTING, p=5, t=5, c="legacy-early")  # no "s": made by a version before sequences
    after = _after(older, LISTING)
    assert after == (0, 5, 5, "legacy-early")
    entries = [_parked("legacy-late", 8), _parked("new", 9, sequence=1), _parked("legacy-early", 5)]
    assert [entry.command_id for entry in entries if parked_order(entry) > after] == ["legacy-late", "new"]
    for bad in (True, -1, "1", 2**64):
        with pytest.raises(InvalidInput) as caught:
            _after(make_token(LISTING, s=bad, p=9, t=9, c="new"), LISTING)
        assert caught.value.reason == "INVALID_PAGE_TOKEN"
