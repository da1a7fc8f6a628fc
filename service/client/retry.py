"""When a failed call is tried again, and after how long.

Retrying a command is safe because the server executes each command id at
most once: the client keeps the command id across attempts, so an attempt
whose answer was lost (the command did run) comes back as the original
result (``replayed``), and nothing is appended twice. Reads are safe to
retry by nature.
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

from service.client.errors import RemoteError, remote_error

log = logging.getLogger(__name__)
T = TypeVar("T")

# Codes after which the same call may succeed: conflicts, a full queue, a
# server or store that is away, and a lost answer. CANCELLED here is never
# the caller's own doing (grpc.aio raises asyncio.CancelledError for that):
# a server that stops cancels the calls it received but had not started.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)
# UNAUTHENTICATED reasons a fresh credential can cure: a token that expired
# (a stream the server ended at its exp, too), or one signed with a key the
# server rotated out. Retried only with ``refresh_credentials``.
REFRESHABLE = frozenset({"TOKEN_EXPIRED", "INVALID_TOKEN", "UNKNOWN_API_KEY"})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Bounded retries with exponential backoff.

    Attempt ``n`` (n ≥ 2) waits ``initial_backoff * multiplier**(n-2)``,
    capped at ``max_backoff``, stretched by up to ``jitter`` (a fraction) so
    that clients refused together do not come back together, and never less
    than the server's ``RetryInfo`` delay. ``RESOURCE_EXHAUSTED`` is retried
    only when the server sent a ``RetryInfo`` (a full queue), not when gRPC
    itself refused (a message over the size limit will not shrink).
    ``refresh_credentials``: an expired or rotated-out credential
    (UNAUTHENTICATED, ``REFRESHABLE``) is retried too, because each attempt
    asks for the token again (``ChronicleClient.connect`` with a token
    function sets it). ``renew_after``: a stream that had been open this
    many seconds when it broke counts its attempts afresh, so a long-lived
    stream that servers end now and then (a token's expiry, a connection's
    age, a restart) is reopened every time, even while it has nothing to
    receive, and one that breaks as soon as it opens still gives up.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2
    refresh_credentials: bool = False
    renew_after: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.initial_backoff, self.max_backoff, self.jitter) < 0 or self.multiplier < 1:
            raise ValueError("backoffs and jitter must not be negative, the multiplier at least 1")

    def delay(self, attempt: int, error: RemoteError) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` after ``error`` ended
        attempt ``attempt``; None: do not retry."""
        if attempt >= self.max_attempts:
            return None
        if error.code not in RETRYABLE and not (
            self.refresh_credentials and error.code == grpc.StatusCode.UNAUTHENTICATED and error.reason in REFRESHABLE
        ):
            return None
        if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_delay is None:
            return None
        backoff = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        backoff *= 1 + self.jitter * random.random()
        return max(backoff, error.retry_delay or 0.0)


DEFAULT_RETRY = RetryPolicy()
NO_RETRIES = RetryPolicy(max_attempts=1)


async def call_with_retries(policy: RetryPolicy, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """Await ``attempt()`` until it succeeds or ``policy`` gives up; raise the
    last error as a :class:`RemoteError`."""
    number = 1
    while True:
        try:
            return await attempt()
        except grpc.aio.AioRpcError as failed:
            cause, error = failed, remote_error(failed)
        wait = policy.delay(number, error)
        if wait is None:
            raise error from cause
        log.info("%s: attempt %d failed with %s; retrying in %.3fs", what, number, error, wait)
        await asyncio.sleep(wait)
        number += 1


async def resuming(policy: RetryPolicy, what: str, open_stream: Callable[[], Any]) -> AsyncIterator[Any]:
    """The messages of a server stream, reopened after an error ``policy``
    retries. ``open_stream()`` starts a call (a ``grpc.aio`` stream call)
    that begins after the last message the caller took: the caller keeps that
    cursor. Every message received renews the retry budget, so a long stream
    survives any number of separate interruptions."""
    number = 1
    while True:
        call = open_stream()
        opened = time.monotonic()
        try:
            async for message in call:
                number = 1
                yield message
            return
        except grpc.aio.AioRpcError as failed:
            cause, error = failed, remote_error(failed)
        finally:
            call.cancel()  # the caller stopped early, or the call failed: free it
        if time.monotonic() - opened >= policy.renew_after:
            number = 1  # it lived: not a retry of the same failure
        wait = policy.delay(number, error)
        if wait is None:
            raise error from cause
        log.info("%s: stream broke with %s; reopening in %.3fs", what, error, wait)
        await asyncio.sleep(wait)
        number += 1
