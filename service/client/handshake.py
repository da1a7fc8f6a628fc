"""A misconfigured TLS told from a server that is away.

A call whose TLS is misconfigured (the client's TLS against a plaintext
server, a CA that did not sign the server's certificate, a name the
certificate does not carry) fails every attempt UNAVAILABLE, as a call to a
server that is away does: retried, a unary call would spend its whole
``retry_for`` and a stream would be reopened for ever, without saying why.
gRPC's core names the failure only in the status's details ("failed to
connect to all addresses; last error: UNKNOWN: ipv4:HOST:PORT: Tls handshake
failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: …"), which is what this reads.

Only a handshake that the TLS library on this side refused counts ("Tls
handshake failed"): that does not cure itself, so a unary call or a read
raises ``Unavailable`` with reason ``TLS_HANDSHAKE_FAILED`` at once
(``tls_refusal``). A stream (a subscription, a command stream, a group
consumer), which is reopened for as long as it is iterated because servers
restart, warns once per outage and raises it once TLS failures alone have
lasted the policy's ``retry_for`` (``HandshakeWatch``). A connection the
server closed during the handshake ("Socket closed", "Handshake read
failed": a server at its ``--max-connections``, or stopping, but also a
plaintext client at a TLS server, which cannot be told from those) is
retried as a server that is away. The Node.js client's src/handshake.js is
the same.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable

import grpc

from service.client.errors import RemoteError, Unavailable

log = logging.getLogger(__name__)

TLS_HANDSHAKE_FAILED = "TLS_HANDSHAKE_FAILED"
# gRPC's core, of a handshake its TLS library refused: the address (after a
# scheme such as ipv4:) and the library's words.
_REFUSED = re.compile(r"(?:^|: )(?:(?:ipv4|ipv6|unix):)?(?P<address>[^\s;]+): Tls handshake failed (?P<failure>.*)$")
_HINT = "check the client's credentials: TLS against a plaintext server, or a CA that did not sign its certificate"


def tls_failure(error: RemoteError) -> tuple[str, str] | None:
    """The address and the TLS library's words when ``error`` is a
    handshake that library refused (only a status gRPC itself made, with no
    ErrorInfo, counts: a server that answered got past the handshake);
    None for any other failure."""
    if error.code != grpc.StatusCode.UNAVAILABLE or error.reason != error.code.name:
        return None
    found = _REFUSED.search(error.message)
    if found is None:
        return None
    return found["address"], found["failure"].strip()


def handshake_failed(error: RemoteError, what: str, *, lasted: str = "") -> Unavailable | None:
    """``Unavailable`` TLS_HANDSHAKE_FAILED for ``error`` (the call ``what``),
    naming the address and the TLS error (``metadata``: ``address``,
    ``tls_error``); None when ``error`` is no TLS failure (``tls_failure``).
    Raise it ``from`` the call's own error."""
    failed = tls_failure(error)
    if failed is None:
        return None
    address, failure = failed
    return Unavailable(
        f"{what}: the TLS handshake with {address} failed{lasted}: {failure} ({_HINT})",
        code=grpc.StatusCode.UNAVAILABLE,
        reason=TLS_HANDSHAKE_FAILED,
        metadata={"address": address, "tls_error": failure},
    )


def tls_refusal(error: RemoteError, what: str) -> Unavailable | None:
    """What a unary call or a read that ``error`` ended raises at once
    instead of retrying: TLS_HANDSHAKE_FAILED when its TLS is misconfigured,
    else None."""
    return handshake_failed(error, what)


class HandshakeWatch:
    """Watches one stream's outages for TLS failures: the first of an outage
    (a run of failed attempts with nothing received) is logged as a
    WARNING, whatever the retry count, naming the address and the TLS error;
    once TLS failures alone have lasted ``retry_for`` seconds (the retry
    policy's; None: no bound), ``failed`` returns the TLS_HANDSHAKE_FAILED
    error to raise. ``clock``: a test's own."""

    def __init__(self, what: str, retry_for: float | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._what = what
        self._retry_for = math.inf if retry_for is None else retry_for
        self._clock = clock
        self._since: float | None = None  # when this outage's first TLS failure came

    def received(self) -> None:
        """Something was received: the outage, if any, is over."""
        self._since = None

    def failed(self, error: RemoteError) -> Unavailable | None:
        """An attempt failed with ``error``: warns of a TLS failure; the error
        to raise once TLS failures have lasted ``retry_for``, else None."""
        failed = tls_failure(error)
        if failed is None:
            self._since = None  # another failure: the server may be away, which is waited out
            return None
        now = self._clock()
        if self._since is None:
            self._since = now
            log.warning("%s: the TLS handshake with %s failed: %s (%s); trying again", self._what, *failed, _HINT)
        seconds = now - self._since
        if seconds < self._retry_for:
            return None
        return handshake_failed(error, self._what, lasted=f" for {seconds:.1f} s")
