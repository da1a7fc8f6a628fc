"""The signing keys an identity provider publishes at a URL
(``--jwt-jwks-url``, its ``/.well-known/jwks.json``), kept current while the
server runs.

- **At start** the set is fetched once; if that fails, or gives no usable
  key, the server does not start (``JWKS_UNAVAILABLE``): a replica that
  started without keys would report SERVING and refuse every JWT. A wrong
  URL or CA is said at once; the replicas already running keep their keys
  through an outage of the provider.
- **Every** ``refresh_seconds`` it is fetched again, and when a token names a
  ``kid`` the set lacks (the provider rotated and signs with a new key): at
  most once per ``unknown_kid_seconds``, so a flood of tokens with made-up
  kids costs the provider one request per period, not one per token. The
  token that found the kid missing is refused (``UNKNOWN_SIGNING_KEY``; the
  verification is synchronous); the calls after the fetch are verified with
  the new set. Providers publish a key before they sign with it, so the
  periodic fetch normally has it first.
- **A failed fetch** (the provider down, a timeout, a set that is not JSON
  or has no usable key, an answer over ``max_bytes``) keeps the last good
  set, logs a warning and counts in ``stats`` (an answer too large apart:
  ``too_large``); a key of the set that cannot be used is left out and
  logged, the others used.
- A new set replaces the old one in one assignment: a call verifies with
  one set or the other, never a mix. ``on_change`` callbacks run after it
  (the authenticator forgets tokens it verified, open streams are checked).

The HTTP request (``service.security.jwks_fetch``: no redirects followed,
the answer capped at ``max_bytes``, the whole fetch within
``timeout_seconds``) runs in a thread: the event loop never waits for the
provider. HTTPS only (http:// to 127.0.0.1 or localhost, for tests), its
certificate checked against the system's CAs or ``ca_file``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from service.errors import ConfigurationError, Unauthenticated
from service.security.jwks import JwtKeys, read_jwks
from service.security.jwks_fetch import MAX_JWKS_BYTES, JwksTooLarge, fetch_jwks_document
from service.security.jwt_keys import JwtKey
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_jwks_url(url: str) -> str:
    """What is wrong with ``url`` as a JWKS URL ("" if nothing): a set of
    keys fetched in the clear could be swapped by anyone on the path."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return ""
    if parts.scheme == "http" and parts.hostname in LOCAL_HOSTS:
        return ""
    return "must be an https:// URL (http:// only to 127.0.0.1 or localhost)"


@dataclass(slots=True)
class JwksStats:
    """What the fetches did, for the metrics (read at scrape time)."""

    fetched: int = 0
    failed: int = 0  # not counting too_large
    too_large: int = 0  # answers over the cap, refused unread
    keys: int = 0
    last_fetched: float = 0.0  # seconds since the epoch of the last good fetch


class RemoteJwks:
    """The keys at ``url``; a ``SigningKeys`` for ``JwtVerifier``."""

    def __init__(
        self,
        url: str,
        *,
        ca_file: str = "",
        refresh_seconds: float = 300.0,
        unknown_kid_seconds: float = 30.0,
        timeout_seconds: float = 10.0,
        max_bytes: int = MAX_JWKS_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        problem = check_jwks_url(url)
        if problem:
            raise ConfigurationError(f"--jwt-jwks-url {url} {problem}", reason="BAD_SETTING")
        context = ssl.create_default_context(cafile=ca_file or None)
        self.url = url
        self._ssl_context = context
        self._timeout_seconds = timeout_seconds
        self._max_bytes = max_bytes
        self._refresh_seconds = refresh_seconds
        self._unknown_kid_seconds = unknown_kid_seconds
        self._clock = clock
        self.keys = JwtKeys([])
        self.stats = JwksStats()
        self.on_change: list[Callable[[], object]] = []
        self._fetching: asyncio.Task[bool] | None = None
        self._last_unknown_kid_fetch: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def symmetric(self) -> bool:
        return False  # a secret from a URL is refused

    def for_token(self, header: Mapping[str, Any]) -> tuple[JwtKey, ...]:
        try:
            return self.keys.for_token(header)
        except Unauthenticated as refused:
            if refused.reason == "UNKNOWN_SIGNING_KEY" and header.get("kid") is not None:
                self._fetch_for_unknown_kid()
            raise

    async def fetch_first(self) -> None:
        """The fetch at start-up: ConfigurationError if it gives no key."""
        if not await self.refresh():
            raise ConfigurationError(
                f"the JSON Web Key Set at {self.url} could not be fetched, or holds no usable signing key (see the"
                " log): the server would refuse every JWT",
                reason="JWKS_UNAVAILABLE",
                metadata={"url": self.url},
            )

    def start(self) -> None:
        """The periodic refresh, in a task of its own."""
        self._task = asyncio.create_task(self._run(), name="jwks-refresh")

    async def stop(self) -> None:
        await cancel_and_wait(self._task, "the JWKS refresh", log)
        await cancel_and_wait(self._fetching, "a JWKS fetch", log)

    async def refresh(self) -> bool:
        """Fetch the set again (joining a fetch under way); whether a good
        set is now in use."""
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.create_task(self._fetch(), name="jwks-fetch")
        return await asyncio.shield(self._fetching)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_seconds)
            try:
                await self.refresh()
            except Exception:
                # A bug here must not end the refresh: rotation would silently stop.
                log.exception("fetching the JSON Web Key Set at %s failed", self.url)

    def _fetch_for_unknown_kid(self) -> None:
        now = self._clock()
        if self._last_unknown_kid_fetch is not None and now - self._last_unknown_kid_fetch < self._unknown_kid_seconds:
            return
        self._last_unknown_kid_fetch = now
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # not on the server's loop (a command-line tool): no refresh to start
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.create_task(self._fetch(), name="jwks-fetch")

    async def _fetch(self) -> bool:
        try:
            # The thread ends by the timeout too (the deadline is checked
            # between chunks); this bound is the server's, whatever the socket does.
            async with asyncio.timeout(self._timeout_seconds):
                document = await asyncio.to_thread(
                    fetch_jwks_document,
                    self.url,
                    ssl_context=self._ssl_context,
                    timeout_seconds=self._timeout_seconds,
                    max_bytes=self._max_bytes,
                    headers={"User-Agent": "chronicle"},
                )
        except JwksTooLarge as error:
            self.stats.too_large += 1
            return self._failed(f"{error}", counted=True)
        except TimeoutError as error:
            return self._failed(f"TimeoutError: {error or f'no whole answer within {self._timeout_seconds:g} s'}")
        except (ValueError, OSError) as error:
            # ValueError: an answer that is not a JSON object.
            return self._failed(f"{type(error).__name__}: {error}")
        try:
            read = read_jwks(document, f"JWKS {self.url}", secrets_allowed=False)
        except ConfigurationError as error:
            return self._failed(error.message)
        for refused in read.refused:
            log.warning("%s (%s); the set's other keys are used", refused.message, refused.reason)
        if not read.keys.keys:
            return self._failed("it holds no usable signing key")
        before = self.keys.kids
        self.keys = read.keys
        self.stats.fetched += 1
        self.stats.keys = len(read.keys.keys)
        self.stats.last_fetched = time.time()
        if read.keys.kids != before:
            log.info("JWKS %s fetched: keys %s", self.url, ", ".join(sorted(read.keys.kids)) or "(one, no kid)")
            for callback in self.on_change:
                try:
                    callback()
                except Exception:
                    log.exception("acting on the JWKS fetched again failed")
        return True

    def _failed(self, why: str, *, counted: bool = False) -> bool:
        if not counted:
            self.stats.failed += 1
        log.warning(
            "fetching the JSON Web Key Set at %s failed (%s); %s",
            self.url,
            why,
            # At start there are none: the server then does not start (JWKS_UNAVAILABLE).
            f"the keys fetched before stay in use ({len(self.keys.keys)})"
            if self.keys.keys
            else "no set was fetched before, so there are no keys to keep using",
        )
        return False
