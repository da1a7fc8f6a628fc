"""Keys, secrets and certificates the server refuses when it starts, checked
on real server processes: exit status 2 and one line that says what is
wrong with which file, never a traceback or a library's text."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.support.processes import serve_until_exit
from tests.support.security import ISSUER, POLICY, Authority, Issued, write


def refused(*args: str) -> str:
    """Start a server with ``args``; return the one line it refused them with."""
    result = serve_until_exit("--database-url", "memory://", *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    return line


def with_jwt_key(tmp_path: Path, key: str) -> list[str]:
    return [
        "--auth",
        "--policy-file", write(tmp_path / "policy.toml", POLICY),
        "--jwt-key-file", write(tmp_path / "jwt.key", key),
        "--jwt-issuer", ISSUER,
    ]  # fmt: skip


def test_a_json_web_key_is_refused_at_start_up(tmp_path: Path) -> None:
    jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key())
    line = refused(*with_jwt_key(tmp_path, jwk))
    assert line.startswith(f"error: BAD_JWT_KEY: JWT key file {tmp_path / 'jwt.key'}: holds JSON, a JSON Web Key")


def test_a_short_hmac_secret_is_refused_at_start_up(tmp_path: Path) -> None:
    line = refused(*with_jwt_key(tmp_path, "password123"))
    assert line.startswith("error: WEAK_KEY: JWT key file")
    assert "at 11 bytes it is too short" in line


def with_tls(tmp_path: Path, certificate: Issued, key: Issued) -> list[str]:
    return [
        "--tls-cert-file", write(tmp_path / "server.pem", certificate.certificate),
        "--tls-key-file", write(tmp_path / "server.key", key.key),
    ]  # fmt: skip


def test_a_key_of_another_certificate_is_refused_as_a_mismatch_not_a_failed_bind(tmp_path: Path) -> None:
    ca = Authority()
    line = refused(*with_tls(tmp_path, ca.issue("localhost", server=True), ca.issue("other", server=True)))
    assert line.startswith(f"error: TLS_KEY_MISMATCH: {tmp_path / 'server.key'}: this TLS key does not belong to")
    assert "bind" not in line


def test_an_expired_certificate_is_refused_at_start_up(tmp_path: Path) -> None:
    day = datetime.timedelta(days=1)
    expired = Authority().issue("localhost", server=True, valid_from=-2 * day, valid_until=-day)
    line = refused(*with_tls(tmp_path, expired, expired))
    assert line.startswith(f"error: TLS_CERTIFICATE_EXPIRED: {tmp_path / 'server.pem'}: the certificate")
