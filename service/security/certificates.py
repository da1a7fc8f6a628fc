"""The server's TLS certificate and key, inspected before the port is bound.

gRPC takes whatever PEM it is given and fails late and vaguely: a key that
does not belong to the certificate is "Failed to bind", an expired
certificate starts fine and then fails every client's handshake. So the
server reads them first with ``cryptography`` and refuses to start, naming
the file and saying what is wrong:

- a file that holds no PEM certificate, or no unencrypted PEM private key
  (``BAD_TLS_FILE``);
- a key that does not belong to the first certificate of the chain
  (``TLS_KEY_MISMATCH``);
- an RSA key under 2048 bits (``WEAK_KEY``);
- a certificate of the chain that has expired or is not valid yet
  (``TLS_CERTIFICATE_EXPIRED``, ``TLS_CERTIFICATE_NOT_YET_VALID``): clients
  would refuse it;
- a client CA file that holds no certificate, or only expired ones (no
  client certificate could verify).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from service.errors import ConfigurationError

MIN_RSA_BITS = 2048


def _refuse(path: str, what: str, reason: str) -> ConfigurationError:
    return ConfigurationError(f"{path}: {what}", reason=reason, metadata={"file": path})


def certificates(pem: bytes, *, path: str, what: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise _refuse(path, f"holds no PEM certificate, so it cannot be the {what}", "BAD_TLS_FILE") from None


def private_key(pem: bytes, *, path: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise _refuse(
            path,
            "the TLS key is encrypted with a passphrase, which the server cannot use: store it decrypted"
            " (openssl pkey -in KEY -out KEY.plain) and protect the file instead",
            "BAD_TLS_FILE",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise _refuse(path, "holds no PEM private key, so it cannot be the TLS key", "BAD_TLS_FILE") from None


def _subject(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or "(no subject)"


def _check_validity(chain: Sequence[x509.Certificate], *, path: str, now: datetime.datetime) -> None:
    for certificate in chain:
        if now > certificate.not_valid_after_utc:
            raise _refuse(
                path,
                f"the certificate {_subject(certificate)} expired on"
                f" {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: clients would refuse it; renew it",
                "TLS_CERTIFICATE_EXPIRED",
            )
        if now < certificate.not_valid_before_utc:
            raise _refuse(
                path,
                f"the certificate {_subject(certificate)} is not valid before"
                f" {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: clients would refuse it"
                " (or this machine's clock is wrong)",
                "TLS_CERTIFICATE_NOT_YET_VALID",
            )


def check_server_pair(
    *, cert_pem: bytes, key_pem: bytes, cert_file: str, key_file: str, now: datetime.datetime | None = None
) -> None:
    """Refuse a server certificate chain and key that gRPC would take but
    that cannot serve (see the module's documentation)."""
    chain = certificates(cert_pem, path=cert_file, what="TLS certificate")
    key = private_key(key_pem, path=key_file)
    public = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if chain[0].public_key().public_bytes(*public) != key.public_key().public_bytes(*public):
        raise _refuse(
            key_file,
            f"this TLS key does not belong to the certificate {_subject(chain[0])} in {cert_file}"
            " (its public key is another): give the key the certificate was issued for",
            "TLS_KEY_MISMATCH",
        )
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise _refuse(
            key_file,
            f"the TLS key is a {key.key_size}-bit RSA key: at least {MIN_RSA_BITS} bits are needed",
            "WEAK_KEY",
        )
    _check_validity(chain, path=cert_file, now=now or datetime.datetime.now(datetime.UTC))


def check_client_ca(pem: bytes, *, path: str, now: datetime.datetime | None = None) -> None:
    """Refuse a client CA file no client certificate could verify against."""
    authorities = certificates(pem, path=path, what="client CA")
    moment = now or datetime.datetime.now(datetime.UTC)
    if all(moment > authority.not_valid_after_utc for authority in authorities):
        raise _refuse(
            path, "every CA certificate in it has expired: no client certificate can verify", "TLS_CERTIFICATE_EXPIRED"
        )
