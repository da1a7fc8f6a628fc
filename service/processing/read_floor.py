"""How far a live reader of the log read, to tell when the log went back
under it (restored from an older copy, failed over to a standby that lost
its last commits: the positions after the new end are handed out again, to
other events).

Two signs, both from the page just read (no read of its own):

* the log's end is below the floor: the log went back and was not written
  past it yet;
* the page's read started at the floor and the log holds another event
  there than the one that was there when the floor was read: the log went
  back and new writes carried it past the floor before this read (the end
  alone cannot show that).

A position that holds no event any more is no sign: an import that replaces
an aggregate removes its events and leaves their positions empty, never
handed out again; only a rewind puts another event at a position.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.store.records import LogPage


@dataclass(slots=True)
class ReadFloor:
    """The highest position read from the store, and the id of the event
    stored there when it was read ("": not known, or none stored there)."""

    position: int = 0
    event_id: str = ""

    def went_back(self, page: LogPage) -> bool:
        """Whether ``page`` shows the log went back under the floor."""
        if page.head is None:  # the store does not say: nothing to tell by
            return False
        if page.head < self.position:
            return True
        if page.after is None or not self.event_id:
            return False
        start, stored = page.after
        return start == self.position and stored != "" and stored != self.event_id

    def advance(self, page: LogPage) -> None:
        """Up to what ``page`` read (its last event when it was cut, else the
        log's end), remembering the event stored there."""
        if page.head is None:
            return
        reached = min(page.scanned_to, page.head)
        if reached < self.position:
            return  # read again below the floor (a stalled stream's rest)
        stored = _stored_at(page, reached)
        if reached > self.position or stored:
            self.position, self.event_id = reached, stored


def _stored_at(page: LogPage, position: int) -> str:
    """The id of the event stored at ``position`` as of ``page``'s read, when
    the page says ("" otherwise): its end's, its start's, or its last event's."""
    if page.head_id is not None and position == page.head:
        return page.head_id
    if page.events and page.events[-1].position == position:
        return page.events[-1].event_id
    if page.after is not None and page.after[0] == position:
        return page.after[1]
    return ""
