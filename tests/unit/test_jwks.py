"""A JSON Web Key Set in --jwt-key-file: each key checked as a PEM key is,
its kid in the message; a token's kid picking its key; a token without
kid accepted only when one key fits; no algorithm confusion between an
HMAC secret and a public key of one set."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from service.errors import ConfigurationError, Unauthenticated
from service.security.credentials import JwtVerifier
from service.security.jwks import MAX_KEYS_WITHOUT_KID, load_jwt_keys
from tests.support.jwks import KeyRing
from tests.support.security import ISSUER

SECRET = b"an-hmac-secret-of-32-bytes-or-more!"


def jwks_file(tmp_path: Path, *keys: dict[str, Any]) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": list(keys)}))
    return path


def refusal(path: Path) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as refused:
        load_jwt_keys(path)
    assert str(path) in refused.value.message
    return refused.value


def verifier(path: Path) -> JwtVerifier:
    return JwtVerifier.from_key_file(path, issuer=ISSUER, audience=None)


def reason(check: JwtVerifier, token: str) -> str:
    try:
        check.verify(token)
    except Unauthenticated as refused:
        return refused.reason
    return ""


def oct_jwk(kid: str, secret: bytes = SECRET) -> dict[str, Any]:
    return {"kty": "oct", "kid": kid, "k": base64.urlsafe_b64encode(secret).rstrip(b"=").decode()}


@pytest.fixture
def ring() -> KeyRing:
    keys = KeyRing()
    keys.add("ec")
    keys.add("rsa", kind="RSA")
    return keys


def test_each_token_is_verified_with_the_key_its_kid_names(tmp_path: Path, ring: KeyRing) -> None:
    check = verifier(jwks_file(tmp_path, *ring.jwks()["keys"]))
    assert check.verify(ring.token("alice", kid="ec")).name == "alice"
    assert check.verify(ring.token("bob", kid="rsa")).name == "bob"
    assert reason(check, ring.token("eve", kid="rsa", signed_by="ec")) == "INVALID_TOKEN"


def test_a_kid_the_set_lacks_is_an_unknown_signing_key(tmp_path: Path, ring: KeyRing) -> None:
    check = verifier(jwks_file(tmp_path, ring.jwk("ec")))
    ring.add("elsewhere")
    assert reason(check, ring.token("eve", kid="elsewhere")) == "UNKNOWN_SIGNING_KEY"


def test_a_token_without_kid_is_verified_with_the_one_key_that_fits_its_algorithm(
    tmp_path: Path, ring: KeyRing
) -> None:
    check = verifier(jwks_file(tmp_path, *ring.jwks()["keys"]))
    assert check.verify(ring.token("alice", kid=None, signed_by="ec")).name == "alice"  # ES256: the EC key only
    only_rsa = verifier(jwks_file(tmp_path, ring.jwk("rsa")))  # a set of one key that names a kid
    assert reason(only_rsa, ring.token("eve", kid=None, signed_by="ec")) == "INVALID_TOKEN"


def test_a_token_without_kid_verifies_with_any_of_several_keys_that_fit_its_algorithm(
    tmp_path: Path, ring: KeyRing
) -> None:
    """A rotation under tokens that name no key: old and new in the set."""
    ring.add("ec-2")
    check = verifier(jwks_file(tmp_path, *ring.jwks()["keys"]))
    assert check.verify(ring.token("alice", kid=None, signed_by="ec")).name == "alice"
    assert check.verify(ring.token("bob", kid=None, signed_by="ec-2")).name == "bob"
    ring.add("elsewhere")  # fits ES256, but not in the set
    assert reason(check, ring.token("eve", kid=None, signed_by="elsewhere")) == "INVALID_TOKEN"


def test_the_key_that_verifies_a_token_without_kid_judges_its_claims(tmp_path: Path, ring: KeyRing) -> None:
    """Only a signature that does not verify moves on to the next key: the
    second key's expired token is TOKEN_EXPIRED, not INVALID_TOKEN."""
    ring.add("ec-2")
    check = verifier(jwks_file(tmp_path, *ring.jwks()["keys"]))
    expired = ring.token("alice", kid=None, signed_by="ec-2", exp=int(time.time()) - 3600)
    assert reason(check, expired) == "TOKEN_EXPIRED"
    elsewhere = ring.token("alice", kid=None, signed_by="ec-2", iss="https://elsewhere.example")
    assert reason(check, elsewhere) == "WRONG_ISSUER"


def test_a_token_without_kid_that_too_many_keys_fit_must_name_its_key(tmp_path: Path, ring: KeyRing) -> None:
    for number in range(MAX_KEYS_WITHOUT_KID):  # with "ec": one more than are tried
        ring.add(f"ec-{number}")
    check = verifier(jwks_file(tmp_path, *ring.jwks()["keys"]))
    assert reason(check, ring.token("alice", kid=None, signed_by="ec")) == "KEY_ID_REQUIRED"
    assert check.verify(ring.token("alice", kid="ec-0")).name == "alice"  # naming its key, it verifies
    assert check.verify(ring.token("bob", kid=None, signed_by="rsa")).name == "bob"  # RS256: one key fits


def test_a_token_without_kid_is_tried_only_against_the_keys_its_algorithm_fits(tmp_path: Path, ring: KeyRing) -> None:
    """No algorithm confusion through trying: an HS256 token made with an
    RSA public key's bytes, naming no key, is tried against the HMAC
    secrets only (and a key narrowed to PS256 takes no RS256 token)."""
    check = verifier(jwks_file(tmp_path, ring.jwk("rsa"), oct_jwk("hs"), oct_jwk("hs-2", SECRET[::-1])))
    now = int(time.time())
    claims = {"sub": "eve", "iss": ISSUER, "exp": now + 60}
    public_pem = ring.public_key("rsa").public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert reason(check, _hs256({"alg": "HS256", "typ": "JWT"}, claims, public_pem)) == "INVALID_TOKEN"
    assert check.verify(jwt.encode({**claims, "sub": "ann"}, SECRET[::-1], algorithm="HS256")).name == "ann"
    ring.add("rsa-2", kind="RSA")
    narrowed = verifier(jwks_file(tmp_path, ring.jwk("rsa", alg="PS256"), ring.jwk("rsa-2", alg="PS256")))
    assert reason(narrowed, ring.token("eve", kid=None, signed_by="rsa")) == "UNKNOWN_SIGNING_KEY"  # RS256


def test_several_keys_of_one_algorithm_are_warned_of(
    tmp_path: Path, ring: KeyRing, caplog: pytest.LogCaptureFixture
) -> None:
    load_jwt_keys(jwks_file(tmp_path, *ring.jwks()["keys"]))
    assert "fit" not in caplog.text  # one EC key, one RSA key: nothing shared
    ring.add("ec-2")
    load_jwt_keys(jwks_file(tmp_path, *ring.jwks()["keys"]))
    assert "keys 'ec', 'ec-2' all fit ES256: a token without kid is verified against each in turn" in caplog.text
    assert [record.levelname for record in caplog.records] == ["WARNING"]


def test_an_alg_narrows_a_key_to_that_algorithm(tmp_path: Path, ring: KeyRing) -> None:
    check = verifier(jwks_file(tmp_path, ring.jwk("rsa", alg="PS256")))
    assert reason(check, ring.token("eve", kid="rsa")) == "INVALID_TOKEN"  # RS256, not PS256


def test_an_alg_that_does_not_fit_the_key_is_refused(tmp_path: Path, ring: KeyRing) -> None:
    refused = refusal(jwks_file(tmp_path, ring.jwk("rsa", alg="HS256")))
    assert "key 'rsa' says alg 'HS256', which does not fit it" in refused.message


def test_encryption_keys_are_left_out(tmp_path: Path, ring: KeyRing) -> None:
    keys = load_jwt_keys(jwks_file(tmp_path, ring.jwk("ec"), ring.jwk("rsa", use="enc", alg="RSA-OAEP")))
    assert keys.kids == {"ec"}
    only_enc = refusal(jwks_file(tmp_path, ring.jwk("rsa", use="enc")))
    assert "holds no signing key" in only_enc.message


def test_a_private_key_is_refused_naming_its_kid(tmp_path: Path) -> None:
    private = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True)
    refused = refusal(jwks_file(tmp_path, {**private, "kid": "leaked"}))
    assert "key 'leaked' holds a private key" in refused.message


def test_a_weak_rsa_key_is_refused_naming_its_kid(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    refused = refusal(jwks_file(tmp_path, {**RSAAlgorithm.to_jwk(weak, as_dict=True), "kid": "old"}))
    assert refused.reason == "WEAK_KEY"
    assert "key 'old' holds a 1024-bit RSA key" in refused.message


def test_a_short_hmac_secret_is_refused_naming_its_kid(tmp_path: Path) -> None:
    refused = refusal(jwks_file(tmp_path, oct_jwk("hs", b"short")))
    assert refused.reason == "WEAK_KEY"
    assert "key 'hs' is an HMAC secret of 5 bytes" in refused.message


def test_in_a_set_of_several_each_key_needs_its_own_kid(tmp_path: Path, ring: KeyRing) -> None:
    nameless = {name: value for name, value in ring.jwk("rsa").items() if name != "kid"}
    assert "key 2 has no kid" in refusal(jwks_file(tmp_path, ring.jwk("ec"), nameless)).message
    twice = {**ring.jwk("rsa"), "kid": "ec"}
    assert "key 'ec' has the kid of a key before it" in refusal(jwks_file(tmp_path, ring.jwk("ec"), twice)).message


def test_one_json_web_key_outside_a_set_is_a_set_of_one(tmp_path: Path, ring: KeyRing) -> None:
    path = tmp_path / "jwk.json"
    path.write_text(json.dumps({name: value for name, value in ring.jwk("ec").items() if name != "kid"}))
    check = verifier(path)
    assert check.verify(ring.token("alice", kid="any", signed_by="ec")).name == "alice"


def test_an_hmac_secret_and_a_public_key_in_one_set_cannot_be_confused(tmp_path: Path, ring: KeyRing) -> None:
    """The classic confusion: a token "signed" with HS256 using the RSA public
    key's bytes as the secret, naming the RSA key. Each key is used with its
    own algorithms only, so it is refused; a real HS256 token verifies."""
    check = verifier(jwks_file(tmp_path, ring.jwk("rsa"), oct_jwk("hs")))
    assert check.symmetric
    now = int(time.time())
    claims = {"sub": "eve", "iss": ISSUER, "exp": now + 60}
    public_pem = ring.public_key("rsa").public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = _hs256({"alg": "HS256", "typ": "JWT", "kid": "rsa"}, claims, public_pem)  # PyJWT refuses to make it
    assert reason(check, forged) == "INVALID_TOKEN"
    genuine = jwt.encode({**claims, "sub": "ann"}, SECRET, algorithm="HS256", headers={"kid": "hs"})
    assert check.verify(genuine).name == "ann"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"
