"""The JWT key file: which keys are accepted with which algorithms, and
which are refused at start-up with a message that says what is wrong."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from jwt.algorithms import ECAlgorithm

from service.errors import ConfigurationError, Unauthenticated
from service.security.credentials import JwtVerifier
from service.security.jwt_keys import RSA_ALGORITHMS, SYMMETRIC_ALGORITHMS, load_jwt_key
from tests.support.security import Authority

PUBLIC = (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(*PUBLIC)


def key_file(tmp_path: Path, content: bytes | str) -> Path:
    path = tmp_path / "jwt.key"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def refusal(path: Path) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as refused:
        load_jwt_key(path)
    assert str(path) in refused.value.message
    return refused.value


@pytest.mark.parametrize(
    ("curve", "algorithm"), [(ec.SECP256R1(), "ES256"), (ec.SECP384R1(), "ES384"), (ec.SECP521R1(), "ES512")]
)
def test_an_ec_key_accepts_the_one_algorithm_of_its_curve(
    tmp_path: Path, curve: ec.EllipticCurve, algorithm: str
) -> None:
    loaded = load_jwt_key(key_file(tmp_path, public_pem(ec.generate_private_key(curve))))
    assert loaded.algorithms == (algorithm,)


def test_rsa_and_eddsa_keys_accept_their_algorithms(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert load_jwt_key(key_file(tmp_path, public_pem(rsa_key))).algorithms == RSA_ALGORITHMS
    edwards = ed25519.Ed25519PrivateKey.generate()
    assert load_jwt_key(key_file(tmp_path, public_pem(edwards))).algorithms == ("EdDSA",)


def test_a_long_enough_hmac_secret_accepts_hmac_algorithms(tmp_path: Path) -> None:
    assert load_jwt_key(key_file(tmp_path, "s" * 32 + "\n")).algorithms == SYMMETRIC_ALGORITHMS


def test_a_short_hmac_secret_is_refused(tmp_path: Path) -> None:
    refused = refusal(key_file(tmp_path, "s" * 31))
    assert refused.reason == "WEAK_KEY"
    assert "31 bytes" in refused.message and "at least 32" in refused.message


def test_json_is_never_taken_for_an_hmac_secret(tmp_path: Path) -> None:
    """A JSON Web Key Set is read by ``jwks.load_jwt_keys`` (tests/unit/test_jwks.py)."""
    jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key())
    refused = refusal(key_file(tmp_path, jwk))
    assert refused.reason == "BAD_JWT_KEY"
    assert "JSON Web Key Set" in refused.message


def test_a_private_key_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert "holds a private key" in refusal(key_file(tmp_path, pem)).message


def test_a_certificate_is_refused_with_the_way_to_its_public_key(tmp_path: Path) -> None:
    assert "openssl x509" in refusal(key_file(tmp_path, Authority().certificate)).message


def test_an_ssh_key_is_refused_with_the_way_to_pem(tmp_path: Path) -> None:
    ssh = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    assert "ssh-keygen -e -m PKCS8" in refusal(key_file(tmp_path, ssh)).message


def test_a_small_rsa_key_is_refused(tmp_path: Path) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    refused = refusal(key_file(tmp_path, public_pem(small)))
    assert (refused.reason, "1024-bit RSA" in refused.message) == ("WEAK_KEY", True)


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (ec.generate_private_key(ec.SECP256K1()).public_key().public_bytes(*PUBLIC), "on secp256k1"),
        (x25519.X25519PrivateKey.generate().public_key().public_bytes(*PUBLIC), "of type X25519, which signs no"),
        (b"-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n", "not a PEM public key"),
    ],
    ids=["secp256k1", "x25519", "garbage"],
)
def test_keys_that_cannot_verify_jwts_are_refused(tmp_path: Path, content: bytes, complaint: str) -> None:
    assert complaint in refusal(key_file(tmp_path, content)).message


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    assert "cannot be read" in refusal(tmp_path / "absent.pem").message


def test_a_token_of_another_key_type_is_unauthenticated_not_a_crash(tmp_path: Path) -> None:
    """PyJWT raises InvalidKeyError, no InvalidTokenError, when a token's
    algorithm does not fit the key; the caller gets INVALID_TOKEN."""
    verifier = JwtVerifier.from_key_file(
        key_file(tmp_path, public_pem(ec.generate_private_key(ec.SECP256R1()))), issuer="i", audience=None
    )
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({"sub": "eve", "iss": "i", "exp": int(time.time()) + 60}, signer, algorithm="RS256")
    with pytest.raises(Unauthenticated) as refused:
        verifier.verify(token)
    assert refused.value.reason == "INVALID_TOKEN"


def test_an_hmac_secret_verifies_and_stays_out_of_the_verifiers_repr(tmp_path: Path) -> None:
    secret = "a-secret-of-32-bytes-or-more-000"
    verifier = JwtVerifier.from_key_file(key_file(tmp_path, secret), issuer="i", audience=None)
    token = jwt.encode({"sub": "ann", "iss": "i", "exp": int(time.time()) + 60}, secret, algorithm="HS256")
    assert verifier.verify(token).name == "ann"
    assert verifier.symmetric
    assert secret not in repr(verifier)
