"""JSON Web Key Sets: the keys that verify bearer JWTs when an identity
provider signs with several and rotates them (``--jwt-key-file`` holding
``{"keys": [...]}``, or the set fetched from ``--jwt-jwks-url``,
``service.security.jwks_url``).

Each key is read by PyJWT (``PyJWK``), then passes the checks a PEM key
passes (``jwt_keys.checked_public_key``), its ``kid`` in the message:

| the key (JWK) | what happens |
|---|---|
| ``kty`` RSA, EC, OKP, public | accepted with the algorithms of its kind; an ``alg`` narrows them to that one |
| ``kty`` oct (an HMAC secret), in a file | accepted for HS256/384/512 (or its ``alg``), at least 32 bytes |
| ``kty`` oct from a URL | refused: a secret published at a URL is no secret |
| ``use`` other than ``sig``, ``key_ops`` without ``verify`` | left out: not a signing key |
| a private part (``d``) | refused: the server only verifies |
| an ``alg`` that does not fit the key, a weak key, no ``kid`` in a set of several, a ``kid`` twice | refused |

PyJWKSet is not used for the set itself: it skips a key it cannot read
without saying which or why, and the operator needs to be told.

A token's keys (``JwtKeys.for_token``): the key its ``kid`` names; a ``kid``
the set lacks is UNAUTHENTICATED ``UNKNOWN_SIGNING_KEY``. A token without
``kid`` is verified with the set's only key, or, in a set of several, with
the keys whose algorithms include the token's ``alg``, tried in the set's
order until one's signature verifies (none fits: ``UNKNOWN_SIGNING_KEY``;
more than ``MAX_KEYS_WITHOUT_KID`` fit: ``KEY_ID_REQUIRED``). That is what
lets a set rotate under tokens that name no key (the docs' own minting
makes such tokens): while the old and the new key are both in the set,
either's tokens verify. A key without ``kid`` (a PEM key, a set of one)
takes every token. Each key is used with its own algorithms only, so an
HMAC secret and a public key in one set cannot be confused: a token naming
the public key's ``kid`` with HS256 is refused, and a kid-less HS256 token
is tried against the HMAC secrets only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from service.errors import ConfigurationError, Unauthenticated
from service.security.jwt_keys import (
    MIN_HMAC_SECRET_BYTES,
    SYMMETRIC_ALGORITHMS,
    JwtKey,
    checked_public_key,
    load_jwt_key,
)

log = logging.getLogger(__name__)

# The most keys a token without ``kid`` is tried against. A rotation needs
# two (the old key and the new); each key tried costs a signature check
# (~0.25 ms for ES256), which a forged token makes the server pay for every
# candidate, so the count stays small. Above it the token must name its key.
MAX_KEYS_WITHOUT_KID = 4

# The algorithm PyJWK is asked to read each kind of key with: only its
# ``from_jwk`` is used, which reads the key whatever the hash.
_READ_AS = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA", "oct": "HS256"}
# JWK members that only a private (or secret) key has (RFC 7518 6.2.2, 6.3.2, RFC 8037).
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi")


class JwtKeys:
    """The keys tokens may be signed with, and which one a token names."""

    __slots__ = ("_by_kid", "keys")

    def __init__(self, keys: Sequence[JwtKey]) -> None:
        self.keys = tuple(keys)
        self._by_kid = {key.kid: key for key in self.keys if key.kid}

    @property
    def symmetric(self) -> bool:
        """One key is an HMAC secret: whoever reads the file can mint tokens."""
        return any(key.symmetric for key in self.keys)

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._by_kid)

    def for_token(self, header: Mapping[str, Any]) -> tuple[JwtKey, ...]:
        """The keys a token with this (unverified) ``header`` may be
        verified with, in the order to try them: one, but for a token
        without ``kid`` that several keys fit (at most ``MAX_KEYS_WITHOUT_KID``)."""
        kid = header.get("kid")
        if len(self.keys) == 1 and not self.keys[0].kid:
            return self.keys  # a key that names no kid: the only one
        if kid is not None:
            key = self._by_kid.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise Unauthenticated(
                    "the token names a signing key (kid) the server does not know", reason="UNKNOWN_SIGNING_KEY"
                )
            return (key,)
        if len(self.keys) == 1:
            return self.keys
        fitting = self.fitting(header.get("alg"))
        if not fitting:
            raise Unauthenticated(
                "the token names no signing key (kid) and no key of the server fits its algorithm",
                reason="UNKNOWN_SIGNING_KEY",
            )
        if len(fitting) > MAX_KEYS_WITHOUT_KID:
            raise Unauthenticated(
                # How many keys fit is not said: a set of HMAC secrets is no one's business.
                f"the token names no signing key (kid) and more than {MAX_KEYS_WITHOUT_KID} of the server's keys"
                " fit its algorithm, the most a token without kid is tried against: its issuer must name the key"
                " (kid)",
                reason="KEY_ID_REQUIRED",
            )
        return fitting

    def fitting(self, alg: object) -> tuple[JwtKey, ...]:
        """The keys that verify tokens signed with ``alg``, in the set's order."""
        return tuple(key for key in self.keys if alg in key.algorithms)

    def shared_algorithms(self) -> dict[tuple[str, ...], tuple[str, ...]]:
        """The kids of keys that fit one algorithm between them (a token
        without kid is tried against each), and the algorithms they share."""
        shared: dict[tuple[str, ...], list[str]] = {}
        for alg in dict.fromkeys(alg for key in self.keys for alg in key.algorithms):
            kids = tuple(key.kid for key in self.fitting(alg))
            if len(kids) > 1:
                shared.setdefault(kids, []).append(alg)
        return {kids: tuple(algs) for kids, algs in shared.items()}


def warn_of_shared_algorithms(keys: JwtKeys, source: str) -> None:
    """Log, at WARNING, each algorithm that several keys of the set fit: a
    token without kid is tried against each (a rotation under way), or,
    past ``MAX_KEYS_WITHOUT_KID``, refused."""
    for kids, algorithms in keys.shared_algorithms().items():
        named = ", ".join(repr(kid) for kid in kids)
        fits = "/".join(algorithms)
        if len(kids) > MAX_KEYS_WITHOUT_KID:
            log.warning(
                "%s: keys %s all fit %s, more than the %d a token without kid is tried against: such tokens are"
                " refused (KEY_ID_REQUIRED); have their issuer name its key (kid)",
                source,
                named,
                fits,
                MAX_KEYS_WITHOUT_KID,
            )
        else:
            log.warning(
                "%s: keys %s all fit %s: a token without kid is verified against each in turn (a rotation under"
                " way?); have the issuer name its key (kid), and remove the old key once its tokens have expired",
                source,
                named,
                fits,
            )


@dataclass(frozen=True, slots=True)
class KeysRead:
    """What a JSON Web Key Set gave: the keys accepted, and a refusal for
    each key that is not (the file refuses the whole set for the first;
    a set fetched from a URL goes on with the others)."""

    keys: JwtKeys
    refused: tuple[ConfigurationError, ...]


def read_jwks(document: object, source: str, *, secrets_allowed: bool) -> KeysRead:
    """The keys of a JWKS ``document`` (parsed JSON: ``{"keys": [...]}``,
    or one JWK), ``source`` naming where it came from in messages. Raises
    ConfigurationError when it is no key set at all."""
    if isinstance(document, dict) and "keys" in document:
        members = document["keys"]
    elif isinstance(document, dict) and "kty" in document:
        members = [document]  # one JSON Web Key, not in a set
    else:
        members = None
    if not isinstance(members, list):
        raise ConfigurationError(
            f'{source}: is not a JSON Web Key Set ({{"keys": [...]}}) nor a JSON Web Key',
            reason="BAD_JWT_KEY",
            metadata={"source": source},
        )
    keys: list[JwtKey] = []
    refused: list[ConfigurationError] = []
    for number, member in enumerate(members, start=1):
        try:
            key = _read_key(member, number, source, secrets_allowed=secrets_allowed, in_set=len(members) > 1)
        except ConfigurationError as error:
            refused.append(error)
            continue
        if key is None:
            continue
        if key.kid and any(key.kid == other.kid for other in keys):
            refused.append(_refusal(source, number, key.kid, "has the kid of a key before it: each key needs its own"))
            continue
        keys.append(key)
    return KeysRead(JwtKeys(keys), tuple(refused))


def load_jwt_keys(path: str | Path) -> JwtKeys:
    """The ``--jwt-key-file``: a JSON Web Key Set (or one JWK), every key
    of which must be usable; otherwise a PEM public key or an HMAC secret
    (``jwt_keys.load_jwt_key``)."""
    try:
        data = Path(path).read_bytes().strip()
    except OSError:
        data = b""  # load_jwt_key says why it cannot be read
    if not data.startswith((b"{", b"[")):
        return JwtKeys([load_jwt_key(path)])
    source = f"JWT key file {path}"
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigurationError(
            f"{source}: holds JSON that cannot be read ({error})", reason="BAD_JWT_KEY", metadata={"file": str(path)}
        ) from None
    read = read_jwks(document, source, secrets_allowed=True)
    if read.refused:
        raise read.refused[0]
    if not read.keys.keys:
        raise ConfigurationError(
            f"{source}: holds no signing key (each is an encryption key, use other than sig, or there are none)",
            reason="BAD_JWT_KEY",
            metadata={"file": str(path)},
        )
    warn_of_shared_algorithms(read.keys, source)
    return read.keys


def _refusal(source: str, number: int, kid: str, what: str, reason: str = "BAD_JWT_KEY") -> ConfigurationError:
    name = f"key {kid!r}" if kid else f"key {number}"
    return ConfigurationError(f"{source}: {name} {what}", reason=reason, metadata={"source": source, "kid": kid})


def _read_key(member: object, number: int, source: str, *, secrets_allowed: bool, in_set: bool) -> JwtKey | None:
    """One JWK as a key, None for one that signs nothing (an encryption key)."""
    if not isinstance(member, dict):
        raise _refusal(source, number, "", "is not a JSON object")
    kid = member.get("kid", "")
    if not isinstance(kid, str):
        raise _refusal(source, number, "", "has a kid that is not a string")
    use, operations = member.get("use"), member.get("key_ops")
    if (use is not None and use != "sig") or (isinstance(operations, list) and "verify" not in operations):
        return None
    if in_set and not kid:
        raise _refusal(source, number, kid, "has no kid: in a set of several keys each needs one, which tokens name")
    kty = member.get("kty")
    if kty not in _READ_AS:
        raise _refusal(source, number, kid, f"is of kty {kty!r}: use RSA, EC, OKP (or oct for an HMAC secret)")
    if kty == "oct":
        key = _secret(member, number, source, kid, secrets_allowed=secrets_allowed)
    else:
        if any(name in member for name in _PRIVATE_MEMBERS):
            raise _refusal(
                source,
                number,
                kid,
                "holds a private key: the server only verifies tokens, so give it the public key only"
                " and keep the private key where tokens are issued",
            )
        try:
            public = jwt.PyJWK(member, _READ_AS[kty]).key
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as error:
            raise _refusal(source, number, kid, f"is not a JSON Web Key that can be read ({error})") from None
        key = checked_public_key(public, lambda what, reason: _refusal(source, number, kid, what, reason), kid)
    alg = member.get("alg")
    if alg is None:
        return key
    if alg not in key.algorithms:
        fits = ", ".join(key.algorithms)
        raise _refusal(source, number, kid, f"says alg {alg!r}, which does not fit it: one of {fits}")
    return JwtKey(key.key, (alg,), kid)


def _secret(member: dict[str, Any], number: int, source: str, kid: str, *, secrets_allowed: bool) -> JwtKey:
    if not secrets_allowed:
        raise _refusal(source, number, kid, "is an HMAC secret (kty oct): a secret published at a URL is no secret")
    try:
        secret = jwt.PyJWK(member, "HS256").key
    except (jwt.PyJWTError, ValueError, KeyError, TypeError) as error:
        raise _refusal(source, number, kid, f"is not a JSON Web Key that can be read ({error})") from None
    if not isinstance(secret, bytes) or len(secret) < MIN_HMAC_SECRET_BYTES:
        raise _refusal(
            source,
            number,
            kid,
            f"is an HMAC secret of {len(secret)} bytes, too short to resist guessing: use at least"
            f" {MIN_HMAC_SECRET_BYTES} random bytes",
            "WEAK_KEY",
        )
    return JwtKey(secret, SYMMETRIC_ALGORITHMS, kid)
