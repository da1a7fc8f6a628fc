"""One ping of a database, as health watches it: answered in time, or why not.

The store monitor (``service.api.health``: the server's health) and the
read database's watch (``service.store.postgres.standby``) ask the same
question every interval and must never stop asking: a failure of any kind
(a store's translated error, a timeout, a driver's error nothing expected,
a bug) is an answer, not an exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from service.errors import ChronicleError


async def probe(ping: Callable[[], Awaitable[None]], *, within: float) -> Exception | None:
    """Await ``ping()`` for at most ``within`` seconds: None when it
    answered, else what it failed with (``TimeoutError`` when it did not
    answer in time). Only cancellation is raised."""
    try:
        async with asyncio.timeout(within):
            await ping()
    except Exception as error:
        return error
    return None


def why(error: Exception) -> str:
    """What a failed probe says in a log line: a store's own message, or the
    type of an error nothing translated."""
    if isinstance(error, ChronicleError | TimeoutError):
        return str(error) or type(error).__name__
    return f"{type(error).__name__}: {error}"
