"""One key that verifies bearer JWTs (``--jwt-key-file``), checked at start-up.

The file holds a PEM public key, an HMAC secret, or a JSON Web Key Set
(``service.security.jwks``, whose keys pass the same checks):

| the file holds | algorithms accepted |
|---|---|
| RSA public key, at least 2048 bits | RS256, RS384, RS512, PS256, PS384, PS512 |
| EC public key on P-256, P-384, P-521 | ES256, ES384, ES512 respectively |
| Ed25519 or Ed448 public key | EdDSA |
| anything else: an HMAC secret of at least 32 bytes | HS256, HS384, HS512 |

Anything that fits none of these is refused when the server starts, with a
message that says what the file holds and what it should: a private key (the server only verifies: a private key
in its files lets whoever reads them mint tokens), a certificate, an SSH
key, a key of another type or curve, an RSA key under 2048 bits, a secret
short enough to guess. Only the algorithms of the key's own kind are
accepted, which rules out algorithm confusion (a token "signed" with HMAC
under the public key, or ``none``). The key is parsed once, here, not on
every call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from service.errors import ConfigurationError

MIN_HMAC_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
SYMMETRIC_ALGORITHMS = ("HS256", "HS384", "HS512")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


@dataclass(frozen=True, slots=True)
class JwtKey:
    """A verified key and the algorithms that fit it; ``kid``: its key id in
    a JSON Web Key Set ("" for a PEM key or a secret, which names none)."""

    key: PublicKey | bytes = field(repr=False)  # bytes: an HMAC secret, never in logs
    algorithms: tuple[str, ...]
    kid: str = ""

    @property
    def symmetric(self) -> bool:
        """An HMAC secret: whoever reads it can mint tokens."""
        return isinstance(self.key, bytes)


def _refuse(path: str | Path, what: str, *, reason: str = "BAD_JWT_KEY") -> ConfigurationError:
    return ConfigurationError(f"JWT key file {path}: {what}", reason=reason, metadata={"file": str(path)})


def load_jwt_key(path: str | Path) -> JwtKey:
    try:
        data = Path(path).read_bytes().strip()
    except OSError as error:
        raise _refuse(path, f"cannot be read ({error.strerror})") from None
    if data.startswith(b"-----BEGIN"):
        return _public_key(path, data)
    if data.startswith((b"{", b"[")):
        # Read by service.security.jwks (load_jwt_keys) before it gets here;
        # never taken for an HMAC secret.
        raise _refuse(path, "holds JSON, which is read as a JSON Web Key Set, not as one PEM key or secret")
    if data.startswith((b"ssh-", b"ecdsa-sha2-")):
        raise _refuse(path, "holds an SSH public key: give it as PEM (ssh-keygen -e -m PKCS8 -f KEY.pub > key.pem)")
    if len(data) < MIN_HMAC_SECRET_BYTES:
        raise _refuse(
            path,
            f"holds no PEM key, so it is an HMAC secret, and at {len(data)} bytes it is too short to resist"
            f" guessing: use at least {MIN_HMAC_SECRET_BYTES} random bytes"
            " (e.g. openssl rand -base64 48), or a PEM public key",
            reason="WEAK_KEY",
        )
    return JwtKey(data, SYMMETRIC_ALGORITHMS)


def _public_key(path: str | Path, pem: bytes) -> JwtKey:
    if b"PRIVATE KEY-----" in pem:
        raise _refuse(
            path,
            "holds a private key: the server only verifies tokens, so give it the public key"
            " (openssl pkey -in KEY -pubout) and keep the private key where tokens are issued",
        )
    if b"CERTIFICATE-----" in pem:
        raise _refuse(path, "holds a certificate: give its public key (openssl x509 -in CERT -pubkey -noout)")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise _refuse(path, "is not a PEM public key that can be read") from None
    return checked_public_key(key, lambda what, reason: _refuse(path, what, reason=reason))


Refusal = Callable[[str, str], ConfigurationError]


def checked_public_key(key: object, refuse: Refusal, kid: str = "") -> JwtKey:
    """A public ``key`` with the JWT algorithms that fit it, or ``refuse(what
    is wrong, reason)`` raised: an RSA key under 2048 bits, a curve or a key type that
    signs no JWT. The one check a PEM key and a JSON Web Key both pass."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise refuse(f"holds a {key.key_size}-bit RSA key: at least {MIN_RSA_BITS} bits are needed", "WEAK_KEY")
        return JwtKey(key, RSA_ALGORITHMS, kid)
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise refuse(
                f"holds an EC key on {key.curve.name}, which signs no JWT algorithm: use P-256, P-384 or P-521",
                "BAD_JWT_KEY",
            )
        return JwtKey(key, (algorithm,), kid)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return JwtKey(key, ("EdDSA",), kid)
    raise refuse(
        f"holds a key of type {type(key).__name__.removeprefix('_').removesuffix('PublicKey')}, which signs no JWT:"
        " use RSA, EC or EdDSA",
        "BAD_JWT_KEY",
    )
