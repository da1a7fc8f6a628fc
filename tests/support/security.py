"""Credentials made in the test: a throwaway PKI, JWT keys, API-key and
policy files, and a client interceptor that sends a bearer token."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

ISSUER = "https://issuer.test"

POLICY = """
[roles.teller]
submit = ["bank.v1.OpenAccount", "bank.v1.Deposit", "bank.v1.Withdraw"]
read = ["Account"]
subscribe = ["Account"]
consume = ["*"]       # every group (of the types it may subscribe to)

[roles.boxer]
submit = ["box.v1.CreateBox"]
read = ["Box"]

[roles.operator]
read = ["*"]
impersonate = true
admin = true

[roles.teller_on_behalf]
submit = ["bank.v1.OpenAccount", "bank.v1.Deposit"]
impersonate = true

[principals."alice"]
roles = ["teller"]

[principals."bob"]
roles = ["boxer"]

[principals."root"]
roles = ["operator"]

[principals."gateway"]
roles = ["teller_on_behalf"]

[principals."CN=batch,O=Chronicle Tests"]
roles = ["teller"]
"""


def _name(common_name: str) -> x509.Name:
    # Most general first, as CAs issue them; RFC 4514 prints it reversed.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Chronicle Tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class Issued:
    certificate: bytes
    key: bytes


class Authority:
    """A certificate authority that lives for one test."""

    def __init__(
        self, name: str = "Chronicle Test CA", *, valid_until: datetime.timedelta = datetime.timedelta(days=1)
    ) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self._name = _name(name)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=2))
            .not_valid_after(now + valid_until)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def certificate(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        *,
        server: bool = False,
        dns_names: Sequence[str] = ("localhost",),
        ip_addresses: Sequence[str] = ("127.0.0.1",),
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
        valid_from: datetime.timedelta = datetime.timedelta(minutes=-5),
        valid_until: datetime.timedelta = datetime.timedelta(days=1),
        subject: x509.Name | None = None,
        uris: Sequence[str] = (),
    ) -> Issued:
        """A certificate for ``common_name`` (and its key: ``key``, or a new
        P-256 one) valid from ``valid_from`` to ``valid_until`` relative to
        now; a server's names the host by ``dns_names`` and ``ip_addresses``
        (none of either: no alternative names at all, only the common name).
        ``subject`` replaces the name made of ``common_name`` (an empty
        ``x509.Name([])`` for a SPIFFE-style certificate); a client's
        ``uris`` are its URI alternative names."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name) if subject is None else subject)
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + valid_from)
            .not_valid_after(now + valid_until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
            names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
            if names:
                builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
            if uris:
                # RFC 5280: with an empty subject the alternative names are critical.
                alternative = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri) for uri in uris])
                builder = builder.add_extension(alternative, critical=subject is not None and not list(subject))
        cert = builder.sign(self._key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


class JwtIssuer:
    """Signs ES256 tokens; ``public_key`` is what the server verifies with."""

    def __init__(self, issuer: str = ISSUER) -> None:
        self.issuer = issuer
        self._key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, subject: str, *, expires_in: float = 300, issuer: str | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {"sub": subject, "iss": issuer or self.issuer, "iat": now, "exp": now + int(expires_in), **claims}
        return self.sign(payload)

    def sign(self, payload: dict[str, Any]) -> str:
        """A token of exactly these claims."""
        return jwt.encode(payload, self._key, algorithm="ES256")


def write(path: Path, content: str | bytes, *, mode: int = 0o600) -> str:
    """Write ``content`` to ``path``, by default readable by its owner only:
    the server refuses key files that group or others may read."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    path.chmod(mode)
    return str(path)


def api_key_file(path: Path, keys: Sequence[tuple[str, str, Sequence[str]]]) -> str:
    """(key, principal, roles) entries, stored as the documented format says:
    the hex SHA-256 of the key (computed here, not by the code under test)."""
    lines = []
    for key, principal, roles in keys:
        quoted = ", ".join(f'"{r}"' for r in roles)
        digest = hashlib.sha256(key.encode()).hexdigest()
        lines.append(f'[[keys]]\nprincipal = "{principal}"\nsha256 = "{digest}"\nroles = [{quoted}]\n')
    return write(path, "\n".join(lines))


def _with_token(details: Any, token: str) -> Any:
    return details._replace(metadata=(*tuple(details.metadata or ()), ("authorization", f"Bearer {token}")))


# grpc.aio files a channel interceptor under the first RPC shape it
# implements, so each shape needs a class of its own.
class _BearerUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._token), request)


class _BearerStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._token), request)


class _BearerDuplex(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_token(details, self._token), request_iterator)


class _BearerUpload(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_token(details, self._token), request_iterator)


def bearer(token: str) -> list[Any]:
    """Client interceptors that send ``authorization: Bearer <token>``, on
    calls of every shape (ImportLog is the one that streams its requests
    and gets one answer).

    Not for a request stream the server may end (a SubmitStream whose
    credentials expire or change): grpc.aio feeds an intercepted request
    stream through a task of its own, which then fails unheard, and the
    session-wide test loop reports it in a later test on the same worker
    (test_group_sessions checks for such errors). Open those on a channel
    without interceptors, with the token as call metadata."""
    return [_BearerUnary(token), _BearerStream(token), _BearerDuplex(token), _BearerUpload(token)]


def server_tls_files(folder: Path, ca: Authority) -> tuple[str, str]:
    """A server certificate for localhost that ``ca`` signed, and its key,
    written in ``folder``: the ``tls_cert_file`` and ``tls_key_file``."""
    server = ca.issue("localhost", server=True)
    return write(folder / "server.pem", server.certificate), write(folder / "server.key", server.key)
