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
   as ``CN=batch,O=Acme``, is the principal; a certificate with an empty
   subject (a SPIFFE X.509-SVID) is named by its one URI name instead.

Whatever names the principal must name someone (``principal_problem``):
the audit records it and the policy grants by it, and an empty name was
shown as "an anonymous caller" while it held the token's roles.

A bearer token wins over a client certificate: the certificate then only
proves which machine connects.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
import tomllib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography import x509

from service.errors import ConfigurationError, Unauthenticated
from service.principal import REACTION_PREFIX, Principal, reserved, tenant_problem
from service.security.jwks import load_jwt_keys
from service.security.jwt_keys import JwtKey
from service.values import id_problem

# The JWT claims that are times: RFC 7519 makes them JSON numbers. PyJWT
# reads them with int(), which takes the string "9999999999" too.
_TIME_CLAIMS = ("exp", "nbf", "iat")


def principal_problem(name: str) -> str:
    """What is wrong with ``name`` as a principal, "" if nothing: the rule
    identifiers follow (``values.id_problem``: not empty, not only spaces, at
    most 200 characters, printable) and no space at either end, which would
    make two principals that read alike in the audit and the policy."""
    problem = id_problem(name)
    if not problem and name != name.strip():
        problem = "must not begin or end with whitespace"
    return problem


def _is_number(value: object) -> bool:
    # bool is an int to Python, not a number to JSON.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    """A fresh key: 256 random bits, URL-safe, prefixed so leaks are greppable."""
    return "chr_" + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    principal: str
    roles: frozenset[str]
    tenant: str = ""


class ApiKeys:
    """The API-key file (TOML), one table per key::

    [[keys]]
    principal = "alice"
    sha256 = "9f86d0…"        # hex SHA-256 of the key
    roles = ["teller"]        # optional
    tenant = "acme"           # optional: the tenant its tenant-scoped roles act in
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
                or not isinstance(roles, list)
                or set(item) - {"principal", "sha256", "roles", "tenant"}
            ):
                raise ConfigurationError(
                    f"{path}: key {number} needs principal, a 64-hex-digit sha256 and optional roles and tenant",
                    reason="BAD_API_KEYS",
                )
            if principal_problem(principal):
                raise ConfigurationError(
                    f"{path}: key {number}'s principal {principal_problem(principal)}", reason="BAD_API_KEYS"
                )
            if reserved(principal):
                raise ConfigurationError(
                    f"{path}: key {number}'s principal {principal!r} starts with {REACTION_PREFIX!r}, which is"
                    " kept for reactions",
                    reason="BAD_API_KEYS",
                )
            tenant = item.get("tenant", "")
            problem = tenant_problem(tenant) if isinstance(tenant, str) else "must be a string"
            if "tenant" in item and problem:
                raise ConfigurationError(f"{path}: key {number}'s tenant {problem}", reason="BAD_API_KEYS")
            entries[digest] = ApiKeyEntry(principal, frozenset(str(r) for r in roles), tenant)
        return cls(entries)

    def principals_roles(self) -> list[tuple[str, frozenset[str]]]:
        """Each key's principal and roles, in the file's order."""
        return [(entry.principal, entry.roles) for entry in self._by_hash.values()]

    def verify(self, token: str) -> Principal:
        entry = self._by_hash.get(hash_api_key(token))
        if entry is None:
            raise Unauthenticated("the bearer token is not a known API key", reason="UNKNOWN_API_KEY")
        return Principal(entry.principal, "api-key", entry.roles, entry.tenant)


class SigningKeys(Protocol):
    """Where a token's verification key comes from: a key file's keys
    (``jwks.JwtKeys``) or a JWKS URL's, refreshed (``jwks_url.RemoteJwks``)."""

    @property
    def symmetric(self) -> bool: ...

    def for_token(self, header: Mapping[str, Any]) -> Sequence[JwtKey]:
        """The keys to try, in order: one, or, for a token without kid that
        several keys fit, each of them (a few: ``jwks.MAX_KEYS_WITHOUT_KID``)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtVerifier:
    keys: SigningKeys = field(repr=False)  # may hold an HMAC secret: never in logs
    issuer: str
    audience: str | None = None
    leeway_seconds: float = 30.0
    # The claim that names the principal's tenant (--jwt-tenant-claim); "":
    # tokens name none. A token without the claim has no tenant.
    tenant_claim: str = ""

    @classmethod
    def from_key_file(
        cls,
        path: str | Path,
        *,
        issuer: str,
        audience: str | None,
        leeway_seconds: float = 30.0,
        tenant_claim: str = "",
    ) -> JwtVerifier:
        """A PEM public key, an HMAC secret or a JSON Web Key Set, checked and
        parsed once (``service.security.jwt_keys``, ``service.security.jwks``).
        Each key accepts only the algorithms of its kind, which rules out
        algorithm confusion."""
        if not issuer:
            raise ConfigurationError("a JWT key needs --jwt-issuer", reason="BAD_JWT_KEY")
        return cls(
            keys=load_jwt_keys(path),
            issuer=issuer,
            audience=audience,
            leeway_seconds=leeway_seconds,
            tenant_claim=tenant_claim,
        )

    @property
    def symmetric(self) -> bool:
        """A key is an HMAC secret: whoever reads it can mint tokens."""
        return self.keys.symmetric

    def verify(self, token: str) -> Principal:
        return self.verify_until(token)[0]

    def verify_until(self, token: str) -> tuple[Principal, float]:
        """The token's principal and its expiry (seconds since the epoch; it
        is accepted until ``leeway_seconds`` after that)."""
        _check_times(token)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the token's header cannot be read", reason="INVALID_TOKEN") from None
        claims = self._verified_claims(token, self.keys.for_token(header))
        problem = principal_problem(claims["sub"])  # PyJWT checked it is a string
        if problem:
            raise Unauthenticated(f"the token's subject (sub) {problem}", reason="INVALID_TOKEN")
        roles = claims.get("roles", [])
        if not isinstance(roles, list):
            raise Unauthenticated("the token's roles claim must be a list", reason="INVALID_TOKEN")
        tenant = claims.get(self.tenant_claim, "") if self.tenant_claim else ""
        problem = tenant_problem(tenant) if isinstance(tenant, str) else "must be a string"
        if self.tenant_claim in claims and problem:
            raise Unauthenticated(f"the token's tenant claim ({self.tenant_claim}) {problem}", reason="INVALID_TOKEN")
        principal = Principal(claims["sub"], "jwt", frozenset(str(r) for r in roles), tenant)
        return principal, float(claims["exp"])

    def _verified_claims(self, token: str, keys: Sequence[JwtKey]) -> dict[str, Any]:
        """The claims of ``token``, whose signature one of ``keys`` verifies
        (tried in turn, each with its own algorithms only) and whose times,
        issuer and audience hold. PyJWT checks the signature before the
        claims, so a claim refused is the verifying key's verdict: it is
        final, and only a signature that does not verify moves on to the
        next key. No key verifying is one refusal, whatever their number:
        the answer says nothing of which keys were tried."""
        for key in keys:
            try:
                return self._decode(token, key)
            except jwt.InvalidSignatureError:
                continue
        raise Unauthenticated("the token does not verify: Signature verification failed", reason="INVALID_TOKEN")

    def _decode(self, token: str, key: JwtKey) -> dict[str, Any]:
        """The claims ``key`` verifies; a signature it does not verify is
        PyJWT's InvalidSignatureError, left for the caller to try the next."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=list(key.algorithms),
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway_seconds,
                options={"require": ["exp", "iss", "sub"]},
            )
        except jwt.InvalidSignatureError:
            raise
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
        return claims


def _check_times(token: str) -> None:
    """Refuses a token whose ``exp``, ``nbf`` or ``iat`` is not a JSON number,
    before PyJWT judges its times (it would call the string "0" expired, and
    take "9999999999" for a time). Its claims are only read here, not
    trusted: one that is not even JSON is left for the verification to refuse."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return
    for claim in _TIME_CLAIMS:
        if claim in claims and not _is_number(claims[claim]):
            raise Unauthenticated(f"the token's {claim} claim must be a number", reason="INVALID_TOKEN")


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


def _certificate_principal(pem: bytes) -> tuple[Principal, float]:
    """A client certificate's principal, and when the certificate expires.

    The principal is its subject, in RFC 4514's spelling. A certificate
    whose subject is empty (RFC 5280 allows it when a subjectAltName names
    the holder; SPIFFE's X.509-SVIDs are such, named by one URI) is named by
    its URI, if it has exactly one: the policy names it as it names any
    principal, ``[principals."spiffe://acme.example/batch"]``. DNS names and
    addresses name hosts, any of which may hold the certificate: they name
    no principal. Otherwise it is refused, ``BAD_CERTIFICATE_SUBJECT``."""
    certificate = x509.load_pem_x509_certificate(pem)
    name = certificate.subject.rfc4514_string()
    if not name:
        name = _single_uri(certificate)
    problem = principal_problem(name)
    if problem:
        raise Unauthenticated(
            "the client certificate names no principal: its subject is empty and it has no single URI name"
            if not name
            else f"the client certificate's subject {problem}",
            reason="BAD_CERTIFICATE_SUBJECT",
        )
    return Principal(name, "mtls"), certificate.not_valid_after_utc.timestamp()


def _single_uri(certificate: x509.Certificate) -> str:
    """The certificate's one URI subjectAltName; "" if it has none or several."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if len(uris) == 1 else ""


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
        self.forget_verified()

    def forget_verified(self) -> None:
        """Forget the tokens verified so far: the keys changed, and one
        withdrawn must not go on admitting what it signed."""
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
