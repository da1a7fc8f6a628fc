"""The unary calls of one of the server's services, each retried as
``RetryPolicy`` says, with the client's deadline per attempt and its
metadata (the bearer token asked for at each attempt): what ``groups``,
``reactions``, ``projections`` and ``admin`` of ``ChronicleClient`` share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Generic, TypeVar

from service.client.call_deadline import CallDeadline
from service.client.call_metadata import CallMetadata
from service.client.retry import RetryPolicy, call_with_retries

S = TypeVar("S")


class UnaryCalls(Generic[S]):
    def __init__(
        self,
        stub: S,
        *,
        retry: RetryPolicy,
        attempt_timeout: float | None,
        call_metadata: Sequence[tuple[str, str]] | CallMetadata,
    ) -> None:
        self._stub = stub
        self._retry = retry
        self._timeout = attempt_timeout
        self._metadata = CallMetadata.of(call_metadata)

    async def _call(
        self,
        what: str,
        method: Callable[..., Any],
        request: Any,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded: call_deadline)
        *,
        deadline: CallDeadline | None = None,
    ) -> Any:
        """``method(request)``, retried; ``what`` names it in the retries'
        logs. ``timeout``: seconds for the whole call (``CallDeadline``);
        ``deadline``: one already running (a listing's, over its pages)."""
        if deadline is None:
            deadline = CallDeadline(timeout, self._timeout)

        async def attempt() -> Any:
            return await method(request, timeout=deadline.attempt_timeout(), metadata=self._metadata())

        return await deadline.run(what, call_with_retries(self._retry, what, attempt))

    async def _pages(
        self,
        what: str,
        method: Callable[..., Any],
        request_for: Callable[[str], Any],
        timeout: float | None = None,  # noqa: ASYNC109 (the whole listing: call_deadline)
    ) -> AsyncIterator[Any]:
        """The pages of a listing by page token: ``request_for(token)`` sent
        (each page retried as ``_call`` retries), each answer yielded, until
        one carries no ``next_page_token``. ``timeout``: seconds for the
        whole listing from its first page to its last (the time the caller
        takes between pages included, as the Node client's does), then
        ``DeadlineExceeded``."""
        deadline = CallDeadline(timeout, self._timeout)
        token = ""
        while True:
            page = await self._call(what, method, request_for(token), deadline=deadline)
            yield page
            token = page.next_page_token
            if not token:
                return
