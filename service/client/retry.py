"""When a failed call is tried again, and after how long.

Retrying a command is safe because the server executes each command id at
most once: the client keeps the command id across attempts, so an attempt
whose answer was lost (the command did run) comes back as the original
result (``replayed``), and nothing is appended twice. Reads are safe to
retry by nature.

Two kinds of call, two bounds, as gRPC's own retry policy and the event
stores' and brokers' clients have them. A unary call (a command, a batch,
a state) and a read are tried again for ``retry_for`` seconds (30) and no
longer, so that their caller is never held for ever. A stream that follows
the log without end (a subscription; a command stream, which takes
commands as they come) is reopened after every error worth retrying, for
as long as its caller iterates it: a server that restarts, a database that
is away for a while, end it only for a moment. The backoff between
attempts grows to ``max_backoff`` (2 s) and stays there, never shorter
than the server's ``RetryInfo``; each retry is logged, at INFO for the
first ``QUIET_RETRIES`` in a row and at WARNING from then on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from service.client.errors import RemoteError, remote_error, retryable
from service.client.going_away import GOING_REASONS
from service.client.handshake import HandshakeWatch, tls_refusal

log = logging.getLogger(__name__)
T = TypeVar("T")

# UNAUTHENTICATED reasons a fresh credential can cure: a token that expired
# (a stream the server ended at its exp, too), or one signed with a key the
# server rotated out (INVALID_TOKEN with one key, UNKNOWN_SIGNING_KEY with a
# key set: its kid withdrawn, or one the server has not fetched yet, which
# it fetches in the background; a stream the withdrawal ended, too), an API
# key it revoked. Retried only with ``refresh_credentials``.
REFRESHABLE = frozenset({"TOKEN_EXPIRED", "INVALID_TOKEN", "UNKNOWN_SIGNING_KEY", "UNKNOWN_API_KEY"})
# Attempts in a row that a stale credential may fail, when the policy sets
# no ``max_attempts``: a token function that keeps returning a stale token
# will not be cured by asking it again for ever.
STALE_TOKEN_ATTEMPTS = 5
# Retries in a row logged at INFO; the ones after them at WARNING (a server
# or database that has been away for a while).
QUIET_RETRIES = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Retries with exponential backoff: bounded in time for a unary call,
    without a bound for a stream.

    Attempt ``n`` (n ≥ 2) waits ``initial_backoff * multiplier**(n-2)``,
    capped at ``max_backoff``, stretched by up to ``jitter`` (a fraction) so
    that clients refused together do not come back together, and never less
    than the server's ``RetryInfo`` delay (but for a server going away,
    ``SHUTTING_DOWN``: the client reopens on a new connection). ``RESOURCE_EXHAUSTED`` is retried
    only when the server sent a ``RetryInfo`` (a full queue), not when gRPC
    itself refused (a message over the size limit will not shrink).

    ``retry_for``: a unary call (and a read) is not tried again once the
    next attempt would begin more than this many seconds after its first
    began (a read: after it began or last received an event); each attempt
    is bounded by the client's ``attempt_timeout``. None: no bound in time.
    ``max_attempts``: attempts in all at a unary call, and reopenings in a
    row of a stream (with nothing received between them); None (the
    default): no count, so a unary call is bounded by ``retry_for`` and a
    stream (a subscription, a command stream, a group consumer) is reopened
    for as long as it is iterated. Streams do not heed ``retry_for``.

    ``refresh_credentials``: an expired or rotated-out credential
    (UNAUTHENTICATED, ``REFRESHABLE``) is retried too, because each attempt
    asks for the token again (``ChronicleClient.connect`` with a token
    function sets it), up to ``max_attempts`` times in a row, or
    ``STALE_TOKEN_ATTEMPTS`` (5) when it is None. ``renew_after``: a stream
    that had been open this many seconds when it broke counts its attempts
    afresh, so a long-lived stream that servers end now and then (a token's
    expiry, a connection's age, a restart) is reopened every time, even
    with a ``max_attempts``, while one that breaks as soon as it opens
    spends them.

    ``probe_tls``: the client's channel is plaintext (``ChronicleClient.connect``
    without credentials sets it): a connection the server closed at once is
    asked for a TLS handshake, and one completed (the server speaks TLS) is
    ``Unavailable`` TLS_HANDSHAKE_FAILED, not a server away
    (``service.client.handshake``). ``probe_client_certificate``: the
    channel is TLS (``connect`` with credentials sets it): a connection the
    server closed at once is asked whether the server requires a client
    certificate (a handshake without one that it closes without a byte),
    TLS_HANDSHAKE_FAILED too.
    """

    max_attempts: int | None = None
    retry_for: float | None = 30.0
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2
    refresh_credentials: bool = False
    renew_after: float = 10.0
    probe_tls: bool = False
    probe_client_certificate: bool = False

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (None: no count)")
        if self.retry_for is not None and self.retry_for < 0:
            raise ValueError("retry_for must not be negative (None: no bound in time)")
        if min(self.initial_backoff, self.max_backoff, self.jitter) < 0 or self.multiplier < 1:
            raise ValueError("backoffs and jitter must not be negative, the multiplier at least 1")

    def delay(self, attempt: int, error: RemoteError, *, elapsed: float | None = None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` after ``error`` ended
        attempt ``attempt``; None: do not retry. ``elapsed``: seconds since a
        unary call's first attempt began (``retry_for`` bounds it); None for
        a stream, which only ``max_attempts`` bounds."""
        stale = (
            self.refresh_credentials and error.code == grpc.StatusCode.UNAUTHENTICATED and error.reason in REFRESHABLE
        )
        if not retryable(error) and not stale:
            return None
        limit = self.max_attempts if self.max_attempts is not None else STALE_TOKEN_ATTEMPTS if stale else None
        if limit is not None and attempt >= limit:
            return None
        try:
            backoff = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        except OverflowError:  # a stream reopened very many times: long past the cap
            backoff = self.max_backoff if self.initial_backoff > 0 else 0.0
        backoff *= 1 + self.jitter * random.random()
        wait = max(backoff, server_delay(error))
        if elapsed is not None and self.retry_for is not None and elapsed + wait > self.retry_for:
            return None
        return wait


def server_delay(error: RemoteError) -> float:
    """The server's ``RetryInfo`` delay for ``error`` in seconds (0: none),
    as a retry waits it. Not for a server going away (``SHUTTING_DOWN``),
    which asks every caller to wait a second, as a client reopening on the
    same connection should: this client reopens on a new connection
    (going_away.py), which a balancer places on a replica that stays, so a
    subscriber's gap over a replica's drain is its backoff alone."""
    return 0.0 if error.reason in GOING_REASONS else error.retry_delay or 0.0


DEFAULT_RETRY = RetryPolicy()
NO_RETRIES = RetryPolicy(max_attempts=1)


def log_retry(retry: int, message: str, *args: object) -> None:
    """Log a retry (the ``retry``-th in a row): INFO for the first
    ``QUIET_RETRIES``, WARNING after them."""
    log.log(logging.INFO if retry <= QUIET_RETRIES else logging.WARNING, message, *args)


async def call_with_retries(
    policy: RetryPolicy,
    what: str,
    attempt: Callable[[], Awaitable[T]],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Await ``attempt()`` until it succeeds or ``policy`` gives up (after
    ``retry_for`` seconds, or ``max_attempts``); raise the last error as a
    :class:`RemoteError`. ``clock`` and ``sleep``: a test's own."""
    number = 1
    started = clock()
    while True:
        try:
            return await attempt()
        except grpc.aio.AioRpcError as failed:
            cause, error = failed, remote_error(failed)
        refused = await tls_refusal(
            error, what, probe=policy.probe_tls, probe_certificate=policy.probe_client_certificate
        )
        if refused is not None:  # a misconfigured TLS does not cure itself: not retried
            raise refused from cause
        elapsed = clock() - started
        wait = policy.delay(number, error, elapsed=elapsed)
        if wait is None:
            raise error from cause
        log_retry(
            number, "%s: attempt %d failed with %s (%.1fs in); retrying in %.3fs", what, number, error, elapsed, wait
        )
        await sleep(wait)
        number += 1


async def resuming(
    policy: RetryPolicy,
    what: str,
    open_stream: Callable[[], Any],
    *,
    bounded: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncIterator[Any]:
    """The messages of a server stream, reopened after an error ``policy``
    retries. ``open_stream()`` starts a call (a ``grpc.aio`` stream call)
    that begins after the last message the caller took: the caller keeps that
    cursor. Every message received renews the retry budget, so a long stream
    survives any number of separate interruptions. ``bounded``: a read,
    given up ``retry_for`` seconds after it began or last received a
    message, and at once on a misconfigured TLS (``handshake.tls_refusal``);
    otherwise (a subscription) only ``max_attempts`` bounds it, and TLS
    failures that last ``retry_for`` (``handshake.HandshakeWatch``)."""
    number = 1
    alive = clock()  # when the stream began or last received a message
    handshakes = HandshakeWatch(
        what, policy.retry_for, probe=policy.probe_tls, probe_certificate=policy.probe_client_certificate, clock=clock
    )
    while True:
        call = open_stream()
        opened = clock()
        try:
            async for message in call:
                number, alive = 1, clock()
                handshakes.received()
                yield message
            return
        except grpc.aio.AioRpcError as failed:
            cause, error = failed, remote_error(failed)
        finally:
            call.cancel()  # the caller stopped early, or the call failed: free it
        if bounded:
            refused = await tls_refusal(
                error, what, probe=policy.probe_tls, probe_certificate=policy.probe_client_certificate
            )
        else:
            refused = await handshakes.failed(error)
        if refused is not None:
            raise refused from cause
        if clock() - opened >= policy.renew_after:
            number, alive = 1, opened  # it lived: not a retry of the same failure
        wait = policy.delay(number, error, elapsed=clock() - alive if bounded else None)
        if wait is None:
            raise error from cause
        log_retry(number, "%s: stream broke with %s (retry %d); reopening in %.3fs", what, error, number, wait)
        await sleep(wait)
        number += 1
