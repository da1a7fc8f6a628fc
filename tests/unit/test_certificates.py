"""The server's certificate and key, and the client CA, inspected before
the port is bound: what is refused, and with what."""

from __future__ import annotations

import datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.errors import ConfigurationError
from service.security.certificates import check_client_ca, check_server_pair
from tests.support.security import Authority, Issued

CA = Authority()
DAY = datetime.timedelta(days=1)


def check(issued: Issued, *, key: bytes | None = None) -> None:
    check_server_pair(cert_pem=issued.certificate, key_pem=key or issued.key, cert_file="cert.pem", key_file="key.pem")


def refusal(issued: Issued, *, key: bytes | None = None) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as refused:
        check(issued, key=key)
    return refused.value


def test_a_valid_pair_passes() -> None:
    check(CA.issue("localhost", server=True))
    check(CA.issue("localhost", server=True, key=rsa.generate_private_key(public_exponent=65537, key_size=2048)))


def test_a_key_of_another_certificate_is_a_mismatch_and_said_so() -> None:
    refused = refusal(CA.issue("localhost", server=True), key=CA.issue("other", server=True).key)
    assert refused.reason == "TLS_KEY_MISMATCH"
    assert refused.message.startswith("key.pem: this TLS key does not belong to the certificate")
    assert "CN=localhost,O=Chronicle Tests in cert.pem" in refused.message


def test_an_expired_certificate_is_refused() -> None:
    refused = refusal(CA.issue("localhost", server=True, valid_from=-2 * DAY, valid_until=-DAY))
    assert refused.reason == "TLS_CERTIFICATE_EXPIRED"
    assert refused.message.startswith("cert.pem: the certificate CN=localhost,O=Chronicle Tests expired on")


def test_a_certificate_not_valid_yet_is_refused() -> None:
    refused = refusal(CA.issue("localhost", server=True, valid_from=DAY, valid_until=2 * DAY))
    assert refused.reason == "TLS_CERTIFICATE_NOT_YET_VALID"


def test_an_rsa_key_under_2048_bits_is_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    refused = refusal(CA.issue("localhost", server=True, key=small))
    assert (refused.reason, refused.message) == (
        "WEAK_KEY",
        "key.pem: the TLS key is a 1024-bit RSA key: at least 2048 bits are needed",
    )


def test_a_passphrase_protected_key_is_refused_with_what_to_do() -> None:
    issued = CA.issue("localhost", server=True)
    key = serialization.load_pem_private_key(issued.key, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    refused = refusal(issued, key=encrypted)
    assert refused.reason == "BAD_TLS_FILE"
    assert "encrypted with a passphrase" in refused.message


def test_files_swapped_or_not_pem_are_refused() -> None:
    issued = CA.issue("localhost", server=True)
    swapped = refusal(Issued(certificate=issued.key, key=issued.certificate))
    assert (swapped.reason, swapped.message) == (
        "BAD_TLS_FILE",
        "cert.pem: holds no PEM certificate, so it cannot be the TLS certificate",
    )
    assert (
        refusal(issued, key=issued.certificate).message
        == "key.pem: holds no PEM private key, so it cannot be the TLS key"
    )


def test_a_client_ca_that_cannot_verify_anything_is_refused() -> None:
    check_client_ca(CA.certificate, path="ca.pem")
    expired = Authority("Old CA", valid_until=-DAY).certificate
    check_client_ca(expired + CA.certificate, path="ca.pem")  # one still verifies
    with pytest.raises(ConfigurationError) as refused:
        check_client_ca(expired, path="ca.pem")
    assert refused.value.reason == "TLS_CERTIFICATE_EXPIRED"
    with pytest.raises(ConfigurationError) as empty:
        check_client_ca(b"", path="ca.pem")
    assert empty.value.message == "ca.pem: holds no PEM certificate, so it cannot be the client CA"
