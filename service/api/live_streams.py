"""Streams live only as long as the credentials and grants they opened with.

A call is authenticated when it opens. A unary call ends within its
deadline, but a stream (``Subscribe``, ``Consume``, ``SubmitStream``, an
export) lives as long as its client wants: without this, one opened with a
JWT went on past the token's ``exp``, and one opened with an API key after
the key was revoked. So the gate registers every authenticated stream here,
and a stream ends:

- when its credential stops being accepted: a JWT at its ``exp`` plus the
  leeway, a client certificate at the end of its validity. UNAUTHENTICATED
  with the reason a new call with the same credential would get
  (``TOKEN_EXPIRED``, ``CERTIFICATE_EXPIRED``);
- when the key or policy files are read again (``--auth-reload-seconds``)
  and its credential no longer authenticates (a revoked API key, a JWT
  signed with a rotated-out key): UNAUTHENTICATED with the reason of that
  refusal (``UNKNOWN_API_KEY``, ``INVALID_TOKEN``);
- when, then, its credential stands for another principal or roles, or the
  principal's grants changed: UNAVAILABLE ``CREDENTIALS_CHANGED``, which
  clients retry, so the stream is opened again under what is now in force
  (and refused if that no longer allows it).

Ending costs nothing per message: a timer per stream whose credential
expires, and a pass over the open streams when a file changed. A stream is
ended by cancelling its task; the gate turns that cancellation into the
status (``RpcGate``), as it does for a client that cancels. Never while a
message is being sent, though: a write cancelled half-way leaves its send
operation pending in gRPC's core, which then refuses the status
(``GRPC_CALL_ERROR_TOO_MANY_OPERATIONS``), and the client would wait for
it for ever. A stream ended during a write is ended when that write
completes (the gate's writer looks), so nothing more is sent after the
message already on its way, and the status follows it: at once, or, for a
client that is not reading, as soon as it takes that message in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from service.errors import ChronicleError, CredentialsChanged, Unauthenticated
from service.principal import Principal
from service.security.credentials import Authenticator

log = logging.getLogger(__name__)

TOKEN_EXPIRED = "TOKEN_EXPIRED"
CERTIFICATE_EXPIRED = "CERTIFICATE_EXPIRED"
# The reason a new call gets once a credential of this kind has expired.
_EXPIRED = {
    "jwt": ("the token this stream was opened with has expired", TOKEN_EXPIRED),
    "mtls": ("the client certificate this stream was opened with has expired", CERTIFICATE_EXPIRED),
}


@dataclass(eq=False, slots=True)
class LiveStream:
    """One open stream: what it was opened with, and why it was ended
    (None while it runs)."""

    task: asyncio.Task[object]
    principal: Principal
    grant: object
    metadata: Mapping[str, str]
    certificate: bytes | None
    ended: ChronicleError | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    # True while the gate awaits ``context.write`` for this stream.
    writing: bool = False


class LiveStreams:
    """The authenticated streams open now. ``grant_of`` gives what the
    policy grants a principal (compared before and after a reload)."""

    def __init__(
        self,
        authenticator: Authenticator,
        grant_of: Callable[[Principal], object],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._authenticator = authenticator
        self._grant_of = grant_of
        self._clock = clock
        self._open: set[LiveStream] = set()

    def __len__(self) -> int:
        return len(self._open)

    def open(
        self,
        principal: Principal,
        valid_until: float | None,
        metadata: Mapping[str, str],
        certificate: bytes | None,
    ) -> LiveStream:
        """Register the calling task's stream, opened by ``principal`` with
        a credential accepted until ``valid_until`` (None: until revoked)."""
        task = asyncio.current_task()
        assert task is not None, "a stream runs in a task"
        stream = LiveStream(task, principal, self._grant_of(principal), metadata, certificate)
        self._open.add(stream)
        if valid_until is not None:
            message, reason = _EXPIRED.get(principal.method, ("the stream's credentials have expired", "EXPIRED"))
            stream.timer = asyncio.get_running_loop().call_later(
                max(0.0, valid_until - self._clock()), self._end, stream, Unauthenticated(message, reason=reason)
            )
        return stream

    def close(self, stream: LiveStream) -> None:
        self._open.discard(stream)
        if stream.timer is not None:
            stream.timer.cancel()

    def recheck(self) -> int:
        """After the key or policy files were read again: end each stream
        whose credential no longer authenticates, now stands for someone
        else, or whose principal's grants changed. Returns how many ended."""
        ended = 0
        for stream in list(self._open):
            error = self._still_valid(stream)
            if error is not None:
                self._end(stream, error)
                ended += 1
        if ended:
            log.info("ended %d open streams whose credentials or grants changed", ended)
        return ended

    def _still_valid(self, stream: LiveStream) -> ChronicleError | None:
        try:
            principal = self._authenticator.authenticate(stream.metadata, stream.certificate)
        except Unauthenticated as refused:
            return refused
        except ValueError:  # the certificate no longer parses: cannot happen, but never keep it open
            return Unauthenticated("the client certificate is unusable", reason="BAD_CERTIFICATE")
        if principal != stream.principal:
            return CredentialsChanged(
                "the credentials this stream was opened with now stand for other roles; open it again"
            )
        if self._grant_of(principal) != stream.grant:
            return CredentialsChanged("the grants this stream was opened with changed; open it again")
        return None

    def _end(self, stream: LiveStream, error: ChronicleError) -> None:
        if stream not in self._open or stream.ended is not None:
            return
        self.close(stream)
        stream.ended = error
        if not stream.writing:  # else the writer ends it once its message is sent
            stream.task.cancel()
