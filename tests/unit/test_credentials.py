"""API keys stored as the documented digest, the authenticator's memory of
verified JWTs (never past their expiry, never for a token that failed), and
credentials that name no one refused: an empty, padded or unprintable JWT
subject, API-key principal or certificate subject, and JWT times that are
not JSON numbers."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from service.errors import ConfigurationError, Unauthenticated
from service.principal import Principal
from service.security.credentials import ApiKeys, Authenticator, JwtVerifier, hash_api_key
from tests.support.security import Authority, JwtIssuer, write

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


# -- a credential must name someone ------------------------------------------------------

UNNAMED = ["", " ", "root ", " root", "ro\x00ot", "root\n", "ro\u202eot", "x" * 201]


@pytest.fixture
def jwt_issuer() -> JwtIssuer:
    return JwtIssuer()


def verifier_of(issuer: JwtIssuer, tmp_path: Path) -> JwtVerifier:
    key_file = write(tmp_path / "jwt.pem", issuer.public_key)
    return JwtVerifier.from_key_file(key_file, issuer=issuer.issuer, audience=None)


@pytest.mark.parametrize("subject", UNNAMED)
def test_a_jwt_whose_subject_names_no_one_is_an_invalid_token(
    jwt_issuer: JwtIssuer, tmp_path: Path, subject: str
) -> None:
    with pytest.raises(Unauthenticated) as refused:
        verifier_of(jwt_issuer, tmp_path).verify(jwt_issuer.token(subject, roles=["operator"]))
    assert refused.value.reason == "INVALID_TOKEN"
    assert "subject (sub) must" in str(refused.value)


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["9999999999", "0", True])
def test_a_jwt_time_that_is_not_a_json_number_is_an_invalid_token(
    jwt_issuer: JwtIssuer, tmp_path: Path, claim: str, value: object
) -> None:
    now = int(time.time())
    claims = {"sub": "root", "iss": jwt_issuer.issuer, "exp": now + 300, "iat": now, "nbf": now, claim: value}
    with pytest.raises(Unauthenticated) as refused:
        verifier_of(jwt_issuer, tmp_path).verify(jwt_issuer.sign(claims))
    assert refused.value.reason == "INVALID_TOKEN"


def test_jwt_times_that_are_numbers_still_verify(jwt_issuer: JwtIssuer, tmp_path: Path) -> None:
    now = time.time()
    claims = {"sub": "root", "iss": jwt_issuer.issuer, "exp": now + 300.5, "iat": int(now), "nbf": now - 1.5}
    assert verifier_of(jwt_issuer, tmp_path).verify(jwt_issuer.sign(claims)) == Principal("root", "jwt")


@pytest.mark.parametrize("principal", UNNAMED)
def test_an_api_key_file_naming_no_one_is_refused(tmp_path: Path, principal: str) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(f'[[keys]]\nprincipal = {json.dumps(principal)}\nsha256 = "{ABC_SHA256}"\n')
    with pytest.raises(ConfigurationError) as refused:
        ApiKeys.load(path)
    assert refused.value.reason == "BAD_API_KEYS"
    assert "key 1's principal must" in str(refused.value)


def test_a_certificate_with_an_empty_subject_is_named_by_its_one_uri() -> None:
    spiffe = "spiffe://acme.example/ns/prod/sa/batch"
    issued = Authority().issue("", subject=x509.Name([]), uris=[spiffe])
    principal = Authenticator(mtls=True).authenticate({}, issued.certificate)
    assert principal == Principal(spiffe, "mtls")


@pytest.mark.parametrize(
    "uris", [[], ["spiffe://acme.example/a", "spiffe://acme.example/b"], ["spiffe://acme.example/a "]]
)
def test_a_certificate_without_a_subject_or_a_single_uri_names_no_one(uris: list[str]) -> None:
    issued = Authority().issue("", subject=x509.Name([]), uris=uris)
    with pytest.raises(Unauthenticated) as refused:
        Authenticator(mtls=True).authenticate({}, issued.certificate)
    assert refused.value.reason == "BAD_CERTIFICATE_SUBJECT"


def test_a_certificate_whose_subject_has_a_control_character_names_no_one() -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "batch\nCN=root")])
    issued = Authority().issue("", subject=subject)
    with pytest.raises(Unauthenticated) as refused:
        Authenticator(mtls=True).authenticate({}, issued.certificate)
    assert refused.value.reason == "BAD_CERTIFICATE_SUBJECT"


# -- tenants (docs/security.md#tenants) ---------------------------------------


def test_a_key_file_entry_may_name_its_principals_tenant(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(f'[[keys]]\nprincipal = "acme-app"\nsha256 = "{ABC_SHA256}"\ntenant = "acme"\n')
    assert ApiKeys.load(path).verify("abc") == Principal("acme-app", "api-key", frozenset(), "acme")


@pytest.mark.parametrize("tenant", ['""', '"ac:me"', '"ac me"', '"a\\u0007"', "7", '"' + "a" * 65 + '"'])
def test_a_key_file_entry_with_a_bad_tenant_does_not_load(tmp_path: Path, tenant: str) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(f'[[keys]]\nprincipal = "acme-app"\nsha256 = "{ABC_SHA256}"\ntenant = {tenant}\n')
    with pytest.raises(ConfigurationError) as refused:
        ApiKeys.load(path)
    assert refused.value.reason == "BAD_API_KEYS"
    assert "tenant" in str(refused.value)


def _tenant_verifier(tmp_path: Path, issuer: JwtIssuer, claim: str) -> JwtVerifier:
    key = write(tmp_path / "jwt.pem", issuer.public_key)
    return JwtVerifier.from_key_file(key, issuer=issuer.issuer, audience=None, tenant_claim=claim)


def test_the_configured_jwt_claim_names_the_tenant_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    issuer = JwtIssuer()
    verifier = _tenant_verifier(tmp_path, issuer, "org")
    assert verifier.verify(issuer.token("alice", org="acme")).tenant == "acme"
    assert verifier.verify(issuer.token("alice")).tenant == ""  # no claim: no tenant
    for bad in ("ac:me", "", ["acme"], "a" * 65):
        with pytest.raises(Unauthenticated) as refused:
            verifier.verify(issuer.token("alice", org=bad))
        assert refused.value.reason == "INVALID_TOKEN"
    # Without --jwt-tenant-claim no claim names one, whatever it is called.
    assert _tenant_verifier(tmp_path, issuer, "").verify(issuer.token("alice", tenant="acme")).tenant == ""
