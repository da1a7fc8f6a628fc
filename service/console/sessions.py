"""Console sessions: who is logged in, kept on the server.

The browser holds only an opaque session id (a random 256-bit value in an
HttpOnly, SameSite=Strict cookie). The server keeps, per id, the credential
the operator logged in with (an API key or a JWT, never sent back to the
browser) and a CSRF token for the forms. Each request authenticates that
credential again through the server's ``Authenticator``, exactly as an RPC
would: a JWT that expires ends the session, and the principal's roles are
the credential's as the API sees them. Sessions end after ``idle_seconds``
without a request, at logout, and with the process (they live in memory).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from service.errors import ChronicleError, Unauthenticated
from service.principal import ANONYMOUS, Principal
from service.security.credentials import Authenticator

COOKIE = "chronicle_console"


@dataclass(slots=True)
class Session:
    credential: str = ""
    csrf_token: str = ""
    last_seen: float = 0.0
    principal: Principal | None = None
    # What an action did, shown once by the page it went back to (keyed by
    # that page's path): never taken from the address, where any link could
    # put text that never happened.
    notices: dict[str, str] = field(default_factory=dict)
    anonymous: bool = False

    def tell(self, page: str, notice: str) -> None:
        self.notices[page] = notice

    def take_notice(self, page: str) -> str:
        return self.notices.pop(page, "")


class Sessions:
    def __init__(
        self,
        authenticator: Authenticator | None,
        *,
        idle_seconds: float = 3600.0,
        max_sessions: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._authenticator = authenticator
        self._idle = idle_seconds
        self._max = max_sessions
        self._clock = clock
        self._by_id: dict[str, Session] = {}

    def log_in(self, credential: str) -> tuple[str, Principal]:
        """A new session for ``credential`` (raises ``Unauthenticated`` as
        the API would when it does not verify): its id and principal."""
        principal = self._authenticate(credential)
        return self._open(Session(credential, secrets.token_urlsafe(32), self._clock(), principal)), principal

    def open_anonymous(self) -> tuple[str, Session]:
        """A session for a caller without a credential (authentication off):
        it has no one to authenticate, but a CSRF token of its own, so that a
        form of the anonymous console (with ``--anonymous-admin``, a rebuild)
        is as safe from other pages as a logged-in operator's."""
        session = Session("", secrets.token_urlsafe(32), self._clock(), ANONYMOUS, anonymous=True)
        return self._open(session), session

    def _open(self, session: Session) -> str:
        self._expire()
        while len(self._by_id) >= self._max:  # the least recently used goes
            oldest = min(self._by_id, key=lambda key: self._by_id[key].last_seen)
            del self._by_id[oldest]
        session_id = secrets.token_urlsafe(32)
        self._by_id[session_id] = session
        return session_id

    def find(self, session_id: str) -> Session | None:
        """The live session of ``session_id``, its principal established
        anew; None when there is none, it went idle or its credential no
        longer verifies (then it ends)."""
        session = self.still_live(session_id)
        if session is not None:
            session.last_seen = self._clock()
        return session

    def still_live(self, session_id: str) -> Session | None:
        """As ``find``, but not a request of the session's (it stays as idle
        as it was): for a response that streams (the live tail) to ask, as it
        goes, whether the session it was opened under still lives."""
        session = self._by_id.get(session_id) if session_id else None
        if session is None:
            return None
        if self._clock() - session.last_seen > self._idle:
            del self._by_id[session_id]
            return None
        if session.anonymous:
            return session
        try:
            session.principal = self._authenticate(session.credential)
        except ChronicleError:  # the credential no longer verifies (a JWT expired)
            del self._by_id[session_id]
            return None
        return session

    def log_out(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)

    def _authenticate(self, credential: str) -> Principal:
        if self._authenticator is None:
            raise Unauthenticated("authentication is off: there is no one to log in")
        return self._authenticator.authenticate({"authorization": f"Bearer {credential}"}, None)

    def _expire(self) -> None:
        now = self._clock()
        for key in [key for key, session in self._by_id.items() if now - session.last_seen > self._idle]:
            del self._by_id[key]


def same_token(given: str, expected: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())
