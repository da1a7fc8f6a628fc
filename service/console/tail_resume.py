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
complete position before it)."""

from __future__ import annotations

from dataclasses import dataclass

from service.api.codec import MAX_VERSION
from service.errors import InvalidInput

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

    @classmethod
    def starting(cls, after: int, shown: str = "") -> TailResume:
        """The tail asked for with ``?after=AFTER&shown=Q:N`` (``shown``
        empty: nothing partly shown). A ``shown`` that is not two whole
        numbers, Q above ``after`` and N from 1, is refused
        (``INVALID_POSITION``), not ignored: ignoring it would show pieces
        twice."""
        if not shown:
            return cls(after, after, 0)
        position_text, colon, count_text = shown.partition(":")
        position = _number(position_text, minimum=after + 1, maximum=MAX_VERSION)
        count = _number(count_text, minimum=1, maximum=MAX_PIECES)
        if not colon or position is None or count is None:
            raise InvalidInput.for_field(
                "shown",
                f"must be POSITION:COUNT, a position above after ({after}) and a count from 1, not {shown[:40]!r}",
                reason="INVALID_POSITION",
            )
        return cls(after, position, count, count)

    def passes_over(self, position: int, completes: bool) -> bool:
        """Whether the event at ``position`` is one of the pieces shown
        before the stream broke (not to be shown again). ``completes``: it
        is the last of its position."""
        if self._repeats and position == self.shown_at:
            self._repeats -= 1
            if completes:
                self.after = max(self.after, position)
            return True
        if position > self.shown_at:
            # Past the partly shown position: none of its pieces comes again.
            self._repeats = 0
        # Below it (an event between ``after`` and the partly shown
        # position): never shown, and the pieces to pass over are still ahead.
        return False

    def showed(self, position: int, completes: bool) -> None:
        """The event at ``position`` was sent to the page."""
        if position < self.shown_at:
            # Between ``after`` and the partly shown position: that position
            # stays the one partly shown; only a complete one moves ``after``
            # (the pieces of an incomplete one are shown again after a
            # break: one resume point cannot name two partly shown positions).
            if completes:
                self.after = max(self.after, position)
            return
        if position != self.shown_at:
            # An event of a higher position: the one before is complete.
            self.after = max(self.after, self.shown_at)
            self.shown_at, self.shown = position, 0
        self.shown += 1
        if completes:
            self.after = max(self.after, position)

    def covered(self, position: int) -> None:
        """A checkpoint (or the caught-up mark): every event at or before
        ``position`` was sent, the pieces of a split one included."""
        self.after = max(self.after, position)

    def query(self) -> str:
        """The query string the page opens its next stream with."""
        if self.shown_at > self.after:
            return f"after={self.after}&shown={self.shown_at}:{self.shown}"
        return f"after={self.after}"
