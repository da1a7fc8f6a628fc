"""What the client sends with every call: fixed metadata, and the bearer
token, asked for again at each call when it is a function.

A short-lived JWT must be replaced before it expires, and the server ends
a stream opened with one at its ``exp`` (UNAUTHENTICATED, TOKEN_EXPIRED).
Given a function, the client asks it for the token at every call and every
reopened stream, and retries the calls a stale token failed
(``RetryPolicy.refresh_credentials``): a subscription or a command stream
then goes on across token lifetimes, resumed where it was. The function is
called on the event loop for each call, so it should return a token it
holds (refreshed by the application ahead of expiry), not fetch one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Metadata = tuple[tuple[str, str], ...]
TokenSource = str | Callable[[], str]


class CallMetadata:
    def __init__(self, fixed: Sequence[tuple[str, str]] = (), token: TokenSource | None = None) -> None:
        self._fixed: Metadata = tuple(fixed)
        self._token = token if callable(token) else None
        self._static: Metadata = (
            (*self._fixed, ("authorization", f"Bearer {token}")) if isinstance(token, str) else self._fixed
        )

    @classmethod
    def of(cls, metadata: Sequence[tuple[str, str]] | CallMetadata) -> CallMetadata:
        return metadata if isinstance(metadata, CallMetadata) else cls(metadata)

    @property
    def refreshes(self) -> bool:
        """The token is asked for at each call (it may change)."""
        return self._token is not None

    def __call__(self) -> Metadata:
        if self._token is None:
            return self._static
        return (*self._fixed, ("authorization", f"Bearer {self._token()}"))
