"""API keys stored as the documented digest, and the authenticator's memory
of verified JWTs: never past their expiry, never for a token that failed."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest

from service.errors import Unauthenticated
from service.principal import Principal
from service.security.credentials import ApiKeys, Authenticator, JwtVerifier, hash_api_key
from tests.support.security import Authority

# SHA-256 of "abc", the FIPS 180-2 test vector: the key file holds the hex
# SHA-256 of the key's UTF-8 bytes (docs/security.md), so an operator's
# `sha256sum` makes an entry as well as `chronicle apikey` does.
ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_an_api_key_is_stored_as_the_hex_sha256_of_its_bytes() -> None:
    assert hash_api_key("abc") == ABC_SHA256


def test_a_key_file_entry_written_by_hand_authenticates_its_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(f'[[keys]]\nprincipal = "alice"\nsha256 = "{ABC_SHA256.upper()}"\nroles = ["teller"]\n')
    keys = ApiKeys.load(path)
    assert keys.verify("abc") == Principal("alice", "api-key", frozenset({"teller"}))
    with pytest.raises(Unauthenticated):
        keys.verify("abd")


TOKEN = {"authorization": "Bearer eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl"}


class CountingVerifier:
    """Stands in for a JwtVerifier: a token for alice that expires at 100."""

    leeway_seconds = 30.0

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


def test_a_token_is_accepted_until_its_exp_and_the_leeway_cached_or_not() -> None:
    verifier, now = CountingVerifier(), [0.0]
    auth = authenticator(verifier, now)
    assert auth.authenticate_until(TOKEN, None) == (Principal("alice", "jwt"), 130.0)
    assert auth.authenticate_until(TOKEN, None) == (Principal("alice", "jwt"), 130.0)
    assert verifier.calls == 1  # the second from the cache, with the same end


def test_an_api_key_holds_until_revoked_and_a_certificate_until_it_expires(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(f'[[keys]]\nprincipal = "bob"\nsha256 = "{hash_api_key("chr_secret")}"\n')
    keys = Authenticator(api_keys=ApiKeys.load(path), mtls=True)
    assert keys.authenticate_until({"authorization": "Bearer chr_secret"}, None) == (Principal("bob", "api-key"), None)

    issued = Authority().issue("carol", valid_until=datetime.timedelta(hours=2))
    principal, until = keys.authenticate_until({}, issued.certificate)
    assert principal == Principal("CN=carol,O=Chronicle Tests", "mtls")
    assert until is not None
    assert abs(until - (time.time() + 7200)) < 60
