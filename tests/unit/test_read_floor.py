"""ReadFloor: how a live reader tells, from each page alone, that the log
went back under it, also when new writes carried the log's end past its
position before it read again (service/processing/read_floor.py)."""

from __future__ import annotations

from service.processing.read_floor import ReadFloor
from service.store.records import LogPage
from service.store_contract.records import recorded_event


def page(after: int, after_id: str, head: int, head_id: str, *, last: tuple[int, str] | None = None) -> LogPage:
    """A page read after ``after``: the log's end ``head``; cut at ``last``
    (its last event's position and id) when given, else read to the end."""
    if last is None:
        return LogPage((), max(head, after), head=head, head_id=head_id, after=(after, after_id))
    event = recorded_event("a-1", 1, event_id=last[1], position=last[0])
    return LogPage((event,), last[0], more=True, head=head, head_id=head_id, after=(after, after_id))


def test_the_floor_remembers_the_event_at_the_end_it_read_to() -> None:
    floor = ReadFloor()
    floor.advance(page(0, "", 10, "e10"))
    assert (floor.position, floor.event_id) == (10, "e10")
    # A page cut by its limit: read to its last event, whose id it holds.
    floor.advance(page(10, "e10", 50, "e50", last=(20, "e20")))
    assert (floor.position, floor.event_id) == (20, "e20")


def test_the_log_written_past_the_floor_with_another_event_there_went_back() -> None:
    floor = ReadFloor(10, "e10")
    assert not floor.went_back(page(10, "e10", 12, "e12"))  # the same log, written on
    assert floor.went_back(page(10, "other", 12, "e12"))  # went back under 10, written past it since
    assert floor.went_back(page(10, "e10", 8, "e8"))  # went back, not written past it yet


def test_an_event_removed_from_the_floor_is_no_rewind() -> None:
    """An import replacing an aggregate removes its events: the position is
    empty, never handed out again."""
    assert not ReadFloor(10, "e10").went_back(page(10, "", 12, "e12"))


def test_a_read_that_starts_below_the_floor_is_not_checked_by_its_id() -> None:
    """A stalled stream reads again below the floor (what its client had
    not taken): the id it gets is another position's."""
    floor = ReadFloor(10, "e10")
    assert not floor.went_back(page(7, "e7", 12, "e12"))
    floor.advance(page(7, "e7", 12, "e12", last=(9, "e9")))  # below the floor: left as it was
    assert (floor.position, floor.event_id) == (10, "e10")


def test_a_store_that_names_no_ids_is_checked_by_its_end_alone() -> None:
    floor = ReadFloor(10, "")
    assert not floor.went_back(LogPage((), 12, head=12))
    assert floor.went_back(LogPage((), 10, head=8))
    assert not floor.went_back(LogPage((), 10))  # nor an end: nothing to tell by
