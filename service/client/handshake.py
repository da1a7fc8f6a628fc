"""A misconfigured TLS told from a server that is away.

A call whose TLS is misconfigured (the client's TLS against a plaintext
server, a CA that did not sign the server's certificate, a name the
certificate does not carry) fails every attempt UNAVAILABLE, as a call to a
server that is away does: retried, a unary call would spend its whole
``retry_for`` and a stream would be reopened for ever, without saying why.
gRPC's core names the failure only in the status's details ("failed to
connect to all addresses; last error: UNKNOWN: ipv4:HOST:PORT: Tls handshake
failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: …"), which is what this reads.

A plaintext client at a TLS server gets no TLS error at all: the server
closes the connection, and gRPC says only "Socket closed", as of a
plaintext server that closed it at its ``--max-connections``. A plaintext
client (``RetryPolicy.probe_tls``, which ``ChronicleClient.connect`` sets
when given no credentials) then asks the address for a TLS handshake
(``speaks_tls``): a TLS server completes one, a plaintext server never
does, whatever its load.

A TLS client without the client certificate a mutual TLS server requires
(or with one it does not take) gets no TLS error either: in TLS 1.3 the
client's side of the handshake ends before the server has checked the
client's certificate, and the server then closes the connection ("Socket
closed" again). A TLS client (``RetryPolicy.probe_client_certificate``,
which ``connect`` sets when given credentials) then makes a handshake of
its own, with no client certificate (the one in the client's credentials
cannot be read back) (``closes_after_handshake``): a server that takes
clients without one sends HTTP/2's settings at once, one that requires a
certificate closes the connection without a byte, and one at its
``--max-connections`` closed it before the handshake.

A handshake that the TLS library on this side refused ("Tls handshake
failed"), a plaintext client's TLS server, or a TLS client's server that
requires a certificate, does not cure itself, so a
unary call or a read raises ``Unavailable`` with reason
``TLS_HANDSHAKE_FAILED`` at once (``tls_refusal``). A stream (a
subscription, a command stream, a group consumer), which is reopened for
as long as it is iterated because servers restart, warns once per outage
and raises it once TLS failures alone have lasted the policy's
``retry_for`` (``HandshakeWatch``). Any other closed connection ("Handshake
read failed" of a TLS client, "Socket closed" of a plaintext one whose
server does not speak TLS: a server at its ``--max-connections``, or
stopping) is retried as a server that is away. The Node.js client's
src/handshake.js is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import ssl
import time
from collections.abc import Callable
from urllib.parse import unquote

import grpc

from service.client.errors import RemoteError, Unavailable

log = logging.getLogger(__name__)

TLS_HANDSHAKE_FAILED = "TLS_HANDSHAKE_FAILED"
# gRPC's core, of a handshake its TLS library refused: the address (after a
# scheme such as ipv4:) and the library's words.
_REFUSED = re.compile(r"(?:^|: )(?:(?:ipv4|ipv6|unix):)?(?P<address>[^\s;]+): Tls handshake failed (?P<failure>.*)$")
# gRPC's core, of a plaintext connection the server closed before HTTP/2 began.
_CLOSED_AT_ONCE = re.compile(r"(?:^|: )(?:(?:ipv4|ipv6):)?(?P<address>[^\s;]+): Socket closed$")
_HINT = "check the client's credentials: TLS against a plaintext server, or a CA that did not sign its certificate"
# The failure named when a plaintext client's server speaks TLS, and what to do.
PLAINTEXT_AT_TLS = "the server speaks TLS and this client plaintext"
_PLAINTEXT_HINT = "give the client credentials: grpc.ssl_channel_credentials(ca)"
# The failure named when a TLS client's server closes the connection after
# the handshake, and what to do: the client's credentials are opaque, so
# whether it gave a certificate (one the server does not trust) is unknown.
CLIENT_CERTIFICATE_REQUIRED = (
    "the server requires a client certificate and took none from this client (none given, or one it does not trust)"
)
_CERTIFICATE_HINT = (
    "give the client its certificate, signed by a CA the server takes clients of:"
    " grpc.ssl_channel_credentials(ca, private_key, certificate_chain)"
)
_HINTS = {PLAINTEXT_AT_TLS: _PLAINTEXT_HINT, CLIENT_CERTIFICATE_REQUIRED: _CERTIFICATE_HINT}
# How long the TLS probe of a plaintext client waits for a handshake (and a
# TLS client's for the handshake, then for the server's first byte).
PROBE_SECONDS = 2.0


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


async def speaks_tls(address: str) -> bool:
    """Whether ``address`` (``host:port``, ``[v6]:port``) completes a TLS
    handshake within ``PROBE_SECONDS``: the server speaks TLS. Nothing is sent
    but the handshake, and its certificate is not checked: the question is
    only whether it speaks TLS."""
    host, _, port = unquote(address).rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit():
        return False
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            _, writer = await asyncio.open_connection(host, int(port), ssl=_probe_context(), server_hostname=host)
    except (OSError, TimeoutError):  # ssl.SSLError is an OSError: not TLS
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _probe_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a probe: nothing is trusted to it, nothing sent
    context.set_alpn_protocols(["h2"])
    return context


async def closes_after_handshake(address: str) -> bool:
    """Whether ``address`` completes a TLS handshake made without a client
    certificate and then closes the connection without sending a byte
    (within ``PROBE_SECONDS`` each): it requires a client certificate. A
    server that takes the client sends HTTP/2's settings at once; one at
    its connection limit closes the connection before the handshake.
    Nothing is sent but the handshake."""
    host, _, port = unquote(address).rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit():
        return False
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            reader, writer = await asyncio.open_connection(host, int(port), ssl=_probe_context(), server_hostname=host)
    except (OSError, TimeoutError):  # not completed: no answer about certificates
        return False
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            first = await reader.read(1)
    except TimeoutError:
        return False  # silent: no sign of a refusal
    except OSError:  # the server's alert (ssl.SSLError), or the connection reset
        first = b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return first == b""


async def certificate_required(error: RemoteError) -> tuple[str, str] | None:
    """For a TLS client: the address and ``CLIENT_CERTIFICATE_REQUIRED``
    when ``error`` is gRPC's own UNAVAILABLE of a connection closed at once
    ("Socket closed") and the address closes one after a handshake without
    a client certificate (``closes_after_handshake``); None otherwise."""
    if error.code != grpc.StatusCode.UNAVAILABLE or error.reason != error.code.name:
        return None
    found = _CLOSED_AT_ONCE.search(error.message)
    if found is None or not await closes_after_handshake(found["address"]):
        return None
    return found["address"], CLIENT_CERTIFICATE_REQUIRED


async def plaintext_at_tls(error: RemoteError) -> tuple[str, str] | None:
    """For a plaintext client: the address and ``PLAINTEXT_AT_TLS`` when
    ``error`` is gRPC's own UNAVAILABLE of a connection closed at once
    ("Socket closed") and the address speaks TLS (``speaks_tls``); None
    otherwise (a server at its connection limit, say, which a retry may get
    past)."""
    if error.code != grpc.StatusCode.UNAVAILABLE or error.reason != error.code.name:
        return None
    found = _CLOSED_AT_ONCE.search(error.message)
    if found is None or not await speaks_tls(found["address"]):
        return None
    return found["address"], PLAINTEXT_AT_TLS


async def _failure(error: RemoteError, probe: bool, probe_certificate: bool) -> tuple[str, str] | None:
    """``tls_failure``, or for a plaintext client (``probe``) ``plaintext_at_tls``,
    or for a TLS client (``probe_certificate``) ``certificate_required``."""
    if found := tls_failure(error):
        return found
    if probe:
        return await plaintext_at_tls(error)
    return await certificate_required(error) if probe_certificate else None


def handshake_failed(error: RemoteError, what: str, failed: tuple[str, str], *, lasted: str = "") -> Unavailable:
    """``Unavailable`` TLS_HANDSHAKE_FAILED for ``error`` (the call ``what``),
    naming the address and the TLS error (``failed``; ``metadata``:
    ``address``, ``tls_error``). Raise it ``from`` the call's own error."""
    address, failure = failed
    hint = _HINTS.get(failure, _HINT)
    return Unavailable(
        f"{what}: the TLS handshake with {address} failed{lasted}: {failure} ({hint})",
        code=grpc.StatusCode.UNAVAILABLE,
        reason=TLS_HANDSHAKE_FAILED,
        metadata={"address": address, "tls_error": failure},
    )


async def tls_refusal(
    error: RemoteError, what: str, *, probe: bool = False, probe_certificate: bool = False
) -> Unavailable | None:
    """What a unary call or a read that ``error`` ended raises at once
    instead of retrying: TLS_HANDSHAKE_FAILED when its TLS is misconfigured
    (``probe``: the client is plaintext, ``plaintext_at_tls``;
    ``probe_certificate``: it is TLS, ``certificate_required``), else None."""
    failed = await _failure(error, probe, probe_certificate)
    return None if failed is None else handshake_failed(error, what, failed)


class HandshakeWatch:
    """Watches one stream's outages for TLS failures: the first of an outage
    (a run of failed attempts with nothing received) is logged as a
    WARNING, whatever the retry count, naming the address and the TLS error;
    once TLS failures alone have lasted ``retry_for`` seconds (the retry
    policy's; None: no bound), ``failed`` returns the TLS_HANDSHAKE_FAILED
    error to raise. ``clock``: a test's own."""

    def __init__(
        self,
        what: str,
        retry_for: float | None,
        *,
        probe: bool = False,
        probe_certificate: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._what = what
        self._probe = probe  # a plaintext client: a connection closed at once is asked whether it speaks TLS
        self._probe_certificate = probe_certificate  # a TLS client: … whether it requires a client certificate
        self._retry_for = math.inf if retry_for is None else retry_for
        self._clock = clock
        self._since: float | None = None  # when this outage's first TLS failure came

    def received(self) -> None:
        """Something was received: the outage, if any, is over."""
        self._since = None

    async def failed(self, error: RemoteError) -> Unavailable | None:
        """An attempt failed with ``error``: warns of a TLS failure; the error
        to raise once TLS failures have lasted ``retry_for``, else None."""
        failed = await _failure(error, self._probe, self._probe_certificate)
        if failed is None:
            self._since = None  # another failure: the server may be away, which is waited out
            return None
        now = self._clock()
        if self._since is None:
            self._since = now
            hint = _HINTS.get(failed[1], _HINT)
            log.warning("%s: the TLS handshake with %s failed: %s (%s); trying again", self._what, *failed, hint)
        seconds = now - self._since
        if seconds < self._retry_for:
            return None
        return handshake_failed(error, self._what, failed, lasted=f" for {seconds:.1f} s")
