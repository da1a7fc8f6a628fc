"""A unary call's own deadline, retries included (``timeout=``).

``asyncio.timeout`` around a ``submit`` cancels it and raises a bare
``TimeoutError``: the command id the client made up is lost with it, though
the command may well have run (its answer was on the way). A call given
``timeout`` instead ends with the client's ``DeadlineExceeded``, which
carries ``command_ids``: sent again with the same ids, the commands run at
most once and answer what was done. Each attempt's gRPC deadline is cut to
what is left, so the server gives up on it too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import grpc

from service.client.errors import DeadlineExceeded

T = TypeVar("T")


class CallDeadline:
    """``timeout`` seconds from now for a whole call (None: no bound but
    the retry policy's); ``attempt_timeout`` bounds each attempt."""

    def __init__(self, timeout: float | None, attempt_timeout: float | None) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive (None: no bound but the retries'), got {timeout}")
        self._timeout = timeout
        self._attempt_timeout = attempt_timeout
        self._loop = asyncio.get_running_loop()
        self._ends = None if timeout is None else self._loop.time() + timeout

    def attempt_timeout(self) -> float | None:
        """The next attempt's gRPC deadline: the client's, cut to what is left."""
        if self._ends is None:
            return self._attempt_timeout
        left = max(self._ends - self._loop.time(), 0.001)
        return left if self._attempt_timeout is None else min(self._attempt_timeout, left)

    async def run(self, what: str, call: Awaitable[T]) -> T:
        """``call``, or ``DeadlineExceeded`` once the deadline passed
        (between attempts too)."""
        if self._ends is None:
            return await call
        try:
            async with asyncio.timeout_at(self._ends):
                return await call
        except TimeoutError:
            raise DeadlineExceeded(
                f"{what}: no answer within {self._timeout:g}s (timeout); its outcome is unknown",
                code=grpc.StatusCode.DEADLINE_EXCEEDED,
                reason="DEADLINE_EXCEEDED",
                metadata={"timeout": f"{self._timeout:g}"},
            ) from None
