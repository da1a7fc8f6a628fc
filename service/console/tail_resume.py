"""Where the console's live tail resumes after its stream breaks.

An upcaster may split one stored event into several, all at the stored
event's position (``SubscribeResponse.completes_position``). A tail that
resumed after the position of the last event it showed would skip the rest
of a split event whose first piece it showed; one that resumed before it
would show that piece twice. So, as ``chronicle tail`` and the Python
client do, the resume point moves only past complete positions, and the
pieces of the next position already shown are passed over: the stream
names the resume point with each message (its SSE ``id``, a query string
the page opens the next stream with), ``after=P`` or, while a position Q is
partly shown, ``after=P&shown=Q:N`` (N of Q's events shown, P the last
complete position before it).

With ``event=ID``, the id of an event the tail showed at P (any piece's of
a split one; a checkpoint's): the stream resumes as the clients do, with
``SubscribeRequest.after_event_id``, so a log that went back under P (a
restore, a failover) since the stream broke is refused (LOG_REWOUND) and
not passed over: new events written at the reused positions after P would
never be shown."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from service.api.codec import MAX_VERSION
from service.errors import InvalidInput
from service.values import canonical_uuid

# More pieces than one stored event is ever split into; a bound, not a guess.
MAX_PIECES = 1_000_000


def _number(text: str, *, minimum: int, maximum: int) -> int | None:
    if not (text.isascii() and text.isdigit() and len(text) <= 19) or not minimum <= int(text) <= maximum:
        return None
    return int(text)


@dataclass(slots=True)
class TailResume:
    """The resume point of one live tail: every event at or before
    ``after`` was shown; ``shown`` events of position ``shown_at`` (above
    ``after``: a split event partly shown) too."""

    after: int
    shown_at: int = 0
    shown: int = 0
    _repeats: int = 0  # pieces of ``shown_at`` the new stream sends again, to pass over
    after_id: str = ""  # the id of an event at ``after`` ("": not known, or none: unchecked)
    shown_id: str = ""  # the id of the last event shown at ``shown_at``

    @classmethod
    def starting(cls, after: int, shown: str = "", event_id: str = "") -> TailResume:
        """The tail asked for with ``?after=AFTER&event=ID&shown=Q:N``
        (``shown`` empty: nothing partly shown; ``event`` empty: the
        resume is not checked). A ``shown`` that is not two whole numbers,
        Q above ``after`` and N from 1, is refused (``INVALID_POSITION``),
        not ignored: ignoring it would show pieces twice; an ``event``
        that is no UUID is refused ``INVALID_EVENT_ID``, not taken for a
        log that went back."""
        if event_id and canonical_uuid(event_id) is None:
            raise InvalidInput.for_field(
                "event", f"must be an event id (a UUID), not {event_id[:40]!r}", reason="INVALID_EVENT_ID"
            )
        if not shown:
            return cls(after, after, 0, after_id=event_id, shown_id=event_id)
        position_text, colon, count_text = shown.partition(":")
        position = _number(position_text, minimum=after + 1, maximum=MAX_VERSION)
        count = _number(count_text, minimum=1, maximum=MAX_PIECES)
        if not colon or position is None or count is None:
            raise InvalidInput.for_field(
                "shown",
                f"must be POSITION:COUNT, a position above after ({after}) and a count from 1, not {shown[:40]!r}",
                reason="INVALID_POSITION",
            )
        return cls(after, position, count, count, after_id=event_id)

    def passes_over(self, position: int, completes: bool, event_id: str = "") -> bool:
        """Whether the event at ``position`` (``event_id``) is one of the
        pieces shown before the stream broke (not to be shown again).
        ``completes``: it is the last of its position."""
        if self._repeats and position == self.shown_at:
            self._repeats -= 1
            self.shown_id = event_id
            if completes:
                self._past(position, event_id)
            return True
        if position > self.shown_at:
            # Past the partly shown position: none of its pieces comes again.
            self._repeats = 0
        # Below it (an event between ``after`` and the partly shown
        # position): never shown, and the pieces to pass over are still ahead.
        return False

    def showed(self, position: int, completes: bool, event_id: str = "") -> None:
        """The event at ``position`` (``event_id``) was sent to the page."""
        if position < self.shown_at:
            # Between ``after`` and the partly shown position: that position
            # stays the one partly shown; only a complete one moves ``after``
            # (the pieces of an incomplete one are shown again after a
            # break: one resume point cannot name two partly shown positions).
            if completes:
                self._past(position, event_id)
            return
        if position != self.shown_at:
            # An event of a higher position: the one before is complete.
            self._past(self.shown_at, self.shown_id)
            self.shown_at, self.shown = position, 0
        self.shown += 1
        self.shown_id = event_id
        if completes:
            self._past(position, event_id)

    def covered(self, position: int, event_id: str = "") -> None:
        """A checkpoint (or the caught-up mark) at ``position``, of the event
        ``event_id`` stored there: every event at or before ``position`` was
        sent, the pieces of a split one included."""
        self._past(position, event_id)

    def _past(self, position: int, event_id: str) -> None:
        """Every event at or before ``position`` was shown; ``event_id``: one there."""
        if position > self.after:
            self.after, self.after_id = position, event_id

    def query(self) -> str:
        """The query string the page opens its next stream with."""
        query = f"after={self.after}"
        if self.after and self.after_id:
            query += f"&event={quote(self.after_id, safe='')}"
        if self.shown_at > self.after:
            query += f"&shown={self.shown_at}:{self.shown}"
        return query
