"""The authenticator's memory of verified JWTs: never past their expiry,
never for a token that failed."""

from __future__ import annotations

import pytest

from service.errors import Unauthenticated
from service.security.credentials import Authenticator, JwtVerifier
from service.security.principal import Principal

TOKEN = {"authorization": "Bearer eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl"}


class CountingVerifier:
    """Stands in for a JwtVerifier: a token for alice that expires at 100."""

    def __init__(self, *, fails: bool = False) -> None:
        self.calls = 0
        self._fails = fails

    def verify_until(self, token: str) -> tuple[Principal, float]:
        self.calls += 1
        if self._fails:
            raise Unauthenticated("bad", reason="INVALID_TOKEN")
        return Principal("alice", "jwt"), 100.0


def authenticator(verifier: CountingVerifier, now: list[float]) -> Authenticator:
    fake: JwtVerifier = verifier  # type: ignore[assignment]
    return Authenticator(jwt_verifier=fake, clock=lambda: now[0])


def test_a_verified_token_is_checked_once_until_it_expires() -> None:
    verifier, now = CountingVerifier(), [0.0]
    auth = authenticator(verifier, now)
    assert auth.authenticate(TOKEN, None).name == "alice"
    assert auth.authenticate(TOKEN, None).name == "alice"
    assert verifier.calls == 1
    now[0] = 100.0  # expired: verified again (where PyJWT would refuse it)
    auth.authenticate(TOKEN, None)
    assert verifier.calls == 2


def test_a_token_that_fails_is_not_remembered() -> None:
    verifier = CountingVerifier(fails=True)
    auth = authenticator(verifier, [0.0])
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            auth.authenticate(TOKEN, None)
    assert verifier.calls == 2
