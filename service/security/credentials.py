"""Authentication: turning what a caller presents into a ``Principal``.

Three kinds of credential, tried in this order:

1. ``authorization: Bearer <JWT>`` — a signed JSON Web Token verified with
   PyJWT against the configured key, issuer, (optional) audience and
   algorithms; ``exp`` is required, ``none`` is never accepted, the subject is
   the principal and a ``roles`` claim (list of strings) adds roles.
2. ``authorization: Bearer <API key>`` — looked up by its SHA-256 in the
   API-key file. Keys are random secrets of at least 128 bits that the
   server generates (``chronicle apikey``), not passwords a person chooses,
   so a fast hash loses nothing: a slow hash (scrypt, argon2) exists to make
   guessing low-entropy passwords expensive, which is moot at 2^128, and
   would cost milliseconds of CPU on every call. The file never holds a key.
3. A client certificate verified by the TLS handshake against the
   configured client CA (mutual TLS): its subject, as an RFC 4514 string such
   as ``CN=batch,O=Acme``, is the principal.

A bearer token wins over a client certificate: the certificate then only
proves which machine connects.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import tomllib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from cryptography import x509

from service.errors import ConfigurationError, Unauthenticated
from service.principal import REACTION_PREFIX, Principal, reserved
from service.security.jwt_keys import PublicKey, load_jwt_key


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    """A fresh key: 256 random bits, URL-safe, prefixed so leaks are greppable."""
    return "chr_" + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    principal: str
    roles: frozenset[str]


class ApiKeys:
    """The API-key file (TOML), one table per key::

    [[keys]]
    principal = "alice"
    sha256 = "9f86d0…"        # hex SHA-256 of the key
    roles = ["teller"]        # optional
    """

    def __init__(self, entries: Mapping[str, ApiKeyEntry]) -> None:
        self._by_hash = dict(entries)

    @classmethod
    def load(cls, path: str | Path) -> ApiKeys:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigurationError(f"cannot read API-key file {path}: {error}", reason="BAD_API_KEYS") from error
        entries: dict[str, ApiKeyEntry] = {}
        for number, item in enumerate(data.get("keys", []), start=1):
            digest = str(item.get("sha256", "")).lower()
            principal = item.get("principal")
            roles = item.get("roles", [])
            if (
                len(digest) != 64
                or any(c not in "0123456789abcdef" for c in digest)
                or not isinstance(principal, str)
                or not principal
                or not isinstance(roles, list)
                or set(item) - {"principal", "sha256", "roles"}
            ):
                raise ConfigurationError(
                    f"{path}: key {number} needs principal, a 64-hex-digit sha256 and optional roles",
                    reason="BAD_API_KEYS",
                )
            if reserved(principal):
                raise ConfigurationError(
                    f"{path}: key {number}'s principal {principal!r} starts with {REACTION_PREFIX!r}, which is"
                    " kept for reactions",
                    reason="BAD_API_KEYS",
                )
            entries[digest] = ApiKeyEntry(principal, frozenset(str(r) for r in roles))
        return cls(entries)

    def verify(self, token: str) -> Principal:
        entry = self._by_hash.get(hash_api_key(token))
        if entry is None:
            raise Unauthenticated("the bearer token is not a known API key", reason="UNKNOWN_API_KEY")
        return Principal(entry.principal, "api-key", entry.roles)


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtVerifier:
    key: PublicKey | bytes = field(repr=False)  # bytes: an HMAC secret, never in logs
    issuer: str
    algorithms: tuple[str, ...]
    audience: str | None = None
    leeway_seconds: float = 30.0

    @classmethod
    def from_key_file(
        cls,
        path: str | Path,
        *,
        issuer: str,
        audience: str | None,
        algorithms: Sequence[str] = (),
        leeway_seconds: float = 30.0,
    ) -> JwtVerifier:
        """A PEM public key or an HMAC secret, checked and parsed once
        (``service.security.jwt_keys``). Only algorithms of the key's kind
        are accepted, which rules out algorithm confusion."""
        if not issuer:
            raise ConfigurationError("a JWT key needs --jwt-issuer", reason="BAD_JWT_KEY")
        loaded = load_jwt_key(path)
        chosen = tuple(algorithms) or loaded.algorithms
        if not set(chosen) <= set(loaded.algorithms):
            raise ConfigurationError(
                f"JWT algorithms {sorted(set(chosen) - set(loaded.algorithms))} do not fit the key in {path}",
                reason="BAD_JWT_KEY",
            )
        return cls(key=loaded.key, issuer=issuer, algorithms=chosen, audience=audience, leeway_seconds=leeway_seconds)

    @property
    def symmetric(self) -> bool:
        """The key is an HMAC secret: whoever reads it can mint tokens."""
        return isinstance(self.key, bytes)

    def verify(self, token: str) -> Principal:
        return self.verify_until(token)[0]

    def verify_until(self, token: str) -> tuple[Principal, float]:
        """The token's principal and its expiry (seconds since the epoch; it
        is accepted until ``leeway_seconds`` after that)."""
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=list(self.algorithms),
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway_seconds,
                options={"require": ["exp", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired", reason="TOKEN_EXPIRED") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the token was issued by someone else", reason="WRONG_ISSUER") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the token is meant for another audience", reason="WRONG_AUDIENCE") from None
        except jwt.InvalidTokenError as error:
            raise Unauthenticated(f"the token does not verify: {error}", reason="INVALID_TOKEN") from None
        except jwt.PyJWTError:
            # Not a fault of the token's claims (the key refused the token's
            # algorithm, say): nothing of the library's text reaches the caller.
            raise Unauthenticated("the token does not verify", reason="INVALID_TOKEN") from None
        roles = claims.get("roles", [])
        if not isinstance(roles, list):
            raise Unauthenticated("the token's roles claim must be a list", reason="INVALID_TOKEN")
        return Principal(str(claims["sub"]), "jwt", frozenset(str(r) for r in roles)), float(claims["exp"])


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


def _certificate_principal(pem: bytes) -> tuple[Principal, float]:
    """A client certificate's subject, and when the certificate expires."""
    certificate = x509.load_pem_x509_certificate(pem)
    return Principal(certificate.subject.rfc4514_string(), "mtls"), certificate.not_valid_after_utc.timestamp()


class Authenticator:
    """Establishes the principal of each RPC from its metadata and TLS peer.

    A verified JWT is remembered until it expires (at most ``cache_size``
    tokens), so a client sending the same token on every call pays for the
    signature check once (~0.25 ms for ES256 here) instead of on each call.
    Only tokens that verified are remembered, and never past their ``exp``.
    """

    def __init__(
        self,
        *,
        api_keys: ApiKeys | None = None,
        jwt_verifier: JwtVerifier | None = None,
        mtls: bool = False,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if api_keys is None and jwt_verifier is None and not mtls:
            raise ConfigurationError(
                "authentication is on but no API-key file, JWT key or client CA is configured", reason="BAD_SETTING"
            )
        self._api_keys = api_keys
        self._jwt = jwt_verifier
        self._mtls = mtls
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock

    def use_api_keys(self, api_keys: ApiKeys) -> None:
        """From the next call on, these keys (the file was read again)."""
        self._api_keys = api_keys

    def use_jwt_verifier(self, verifier: JwtVerifier) -> None:
        """From the next call on, this key. Tokens verified with the one
        before are forgotten: a key rotated because it leaked must not go on
        admitting what it signed."""
        self._jwt = verifier
        self._verified.clear()

    def _from_jwt(self, verifier: JwtVerifier, token: str) -> tuple[Principal, float]:
        hit = self._verified.get(token)
        if hit is not None and self._clock() < hit[1]:
            self._verified.move_to_end(token)
            return hit[0], hit[1] + verifier.leeway_seconds
        principal, expires = verifier.verify_until(token)
        self._verified[token] = (principal, expires)
        self._verified.move_to_end(token)
        while len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return principal, expires + verifier.leeway_seconds

    def authenticate(self, metadata: Mapping[str, str], peer_certificate: bytes | None) -> Principal:
        return self.authenticate_until(metadata, peer_certificate)[0]

    def authenticate_until(
        self, metadata: Mapping[str, str], peer_certificate: bytes | None
    ) -> tuple[Principal, float | None]:
        """The caller, and until when (seconds since the epoch) its credential
        is accepted: a JWT's ``exp`` and the leeway, a client certificate's
        end of validity; None for an API key, which holds until it is
        revoked. A stream opened with the credential ends then
        (``service.api.live_streams``)."""
        principal, until = self._credential(metadata, peer_certificate)
        if reserved(principal.name):
            raise Unauthenticated(
                f"the credential names {principal.name!r}: principals starting with {REACTION_PREFIX!r} are kept"
                " for the server's reactions",
                reason="RESERVED_PRINCIPAL",
            )
        return principal, until

    def _credential(
        self, metadata: Mapping[str, str], peer_certificate: bytes | None
    ) -> tuple[Principal, float | None]:
        header = metadata.get("authorization")
        if header is not None:
            scheme, _, token = header.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated(
                    "the authorization metadata must be 'Bearer <token>'", reason="BAD_AUTHORIZATION_METADATA"
                )
            if self._jwt is not None and _looks_like_jwt(token):
                return self._from_jwt(self._jwt, token)
            if self._api_keys is not None:
                return self._api_keys.verify(token), None
            raise Unauthenticated("the bearer token is not a valid JWT", reason="INVALID_TOKEN")
        if self._mtls and peer_certificate is not None:
            return _certificate_principal(peer_certificate)
        raise Unauthenticated("credentials are required: send 'authorization: Bearer <token>'", reason="NO_CREDENTIALS")
