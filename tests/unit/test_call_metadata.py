"""What the Python client sends with each call (service/client/call_metadata.py)
and which refusals a fresh credential may cure (service/client/retry.py)."""

from __future__ import annotations

import grpc

from service.client.call_metadata import CallMetadata
from service.client.errors import RemoteError
from service.client.retry import STALE_TOKEN_ATTEMPTS, RetryPolicy


def test_a_static_token_is_sent_as_given_and_a_function_is_asked_at_each_call() -> None:
    static = CallMetadata([("x-tenant", "acme")], "chr_key")
    assert static() == (("x-tenant", "acme"), ("authorization", "Bearer chr_key"))
    assert not static.refreshes
    issued = iter(["first", "second"])
    refreshed = CallMetadata([("x-tenant", "acme")], lambda: next(issued))
    assert refreshed.refreshes
    assert refreshed() == (("x-tenant", "acme"), ("authorization", "Bearer first"))
    assert refreshed() == (("x-tenant", "acme"), ("authorization", "Bearer second"))
    assert CallMetadata()() == ()


def unauthenticated(reason: str) -> RemoteError:
    return RemoteError("refused", code=grpc.StatusCode.UNAUTHENTICATED, reason=reason)


def test_a_stale_credential_is_retried_only_when_the_token_is_asked_for_again() -> None:
    fixed, refreshing = RetryPolicy(jitter=0), RetryPolicy(jitter=0, refresh_credentials=True)
    for reason in ("TOKEN_EXPIRED", "INVALID_TOKEN", "UNKNOWN_API_KEY"):
        assert fixed.delay(1, unauthenticated(reason)) is None
        assert refreshing.delay(1, unauthenticated(reason)) == fixed.initial_backoff
        # Bounded all the same, though the policy sets no max_attempts.
        assert refreshing.delay(STALE_TOKEN_ATTEMPTS - 1, unauthenticated(reason)) is not None
        assert refreshing.delay(STALE_TOKEN_ATTEMPTS, unauthenticated(reason)) is None
    for reason in ("NO_CREDENTIALS", "BAD_AUTHORIZATION_METADATA", "CERTIFICATE_EXPIRED"):
        assert refreshing.delay(1, unauthenticated(reason)) is None  # a new token would not help
