"""Keys, secrets and certificates the server refuses when it starts, checked
on real server processes: exit status 2 and one line that says what is
wrong with which file, never a traceback or a library's text."""

from __future__ import annotations

import base64
import datetime
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from jwt.algorithms import ECAlgorithm

from service.errors import ConfigurationError
from service.store.encryption import new_master_key
from service.store.memory import MemoryStore
from tests.support.grpc_client import running_server
from tests.support.processes import serve_until_exit, server_process
from tests.support.security import ISSUER, POLICY, Authority, Issued, JwtIssuer, api_key_file, write


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


def test_a_json_web_key_set_with_a_private_key_is_refused_at_start_up_naming_its_kid(tmp_path: Path) -> None:
    public = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True)
    private = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True)
    jwks = json.dumps({"keys": [{**public, "kid": "good"}, {**private, "kid": "leaked"}]})
    line = refused(*with_jwt_key(tmp_path, jwks))
    assert line.startswith(f"error: BAD_JWT_KEY: JWT key file {tmp_path / 'jwt.key'}: key 'leaked' holds a private key")


def test_a_short_hmac_secret_is_refused_at_start_up(tmp_path: Path) -> None:
    line = refused(*with_jwt_key(tmp_path, "password123"))
    assert line.startswith("error: WEAK_KEY: JWT key file")
    assert "at 11 bytes it is too short" in line


PUBLIC = (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def jwt_key_of_kind(kind: str) -> bytes:
    if kind == "a private key":
        private = ec.generate_private_key(ec.SECP256R1())
        return private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    if kind == "a certificate":
        return Authority().certificate
    if kind == "an SSH key":
        public = ed25519.Ed25519PrivateKey.generate().public_key()
        return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    if kind == "an X25519 key":
        return x25519.X25519PrivateKey.generate().public_key().public_bytes(*PUBLIC)
    assert kind == "a 1024-bit RSA key"
    return rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_bytes(*PUBLIC)


@pytest.mark.parametrize(
    ("kind", "reason", "says"),
    [
        ("a private key", "BAD_JWT_KEY", "holds a private key: the server only verifies tokens"),
        ("a certificate", "BAD_JWT_KEY", "holds a certificate: give its public key (openssl x509"),
        ("an SSH key", "BAD_JWT_KEY", "holds an SSH public key: give it as PEM"),
        ("an X25519 key", "BAD_JWT_KEY", "holds a key of type X25519, which signs no JWT"),
        ("a 1024-bit RSA key", "WEAK_KEY", "holds a 1024-bit RSA key: at least 2048 bits are needed"),
    ],
)
def test_a_jwt_key_of_a_kind_that_cannot_verify_tokens_is_refused_at_start_up(
    tmp_path: Path, kind: str, reason: str, says: str
) -> None:
    line = refused(*with_jwt_key(tmp_path, jwt_key_of_kind(kind).decode()))
    assert line.startswith(f"error: {reason}: JWT key file {tmp_path / 'jwt.key'}: {says}")


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
    assert "expired on" in line


def test_a_certificate_not_valid_yet_is_refused_at_start_up(tmp_path: Path) -> None:
    day = datetime.timedelta(days=1)
    early = Authority().issue("localhost", server=True, valid_from=day, valid_until=2 * day)
    line = refused(*with_tls(tmp_path, early, early))
    assert line.startswith(f"error: TLS_CERTIFICATE_NOT_YET_VALID: {tmp_path / 'server.pem'}: the certificate")


def test_a_certificate_of_a_1024_bit_rsa_key_is_refused_at_start_up(tmp_path: Path) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak = Authority().issue("localhost", server=True, key=small)
    line = refused(*with_tls(tmp_path, weak, weak))
    assert line == (
        f"error: WEAK_KEY: {tmp_path / 'server.key'}: the TLS key is a 1024-bit RSA key: at least 2048 bits are needed"
    )


def test_a_tls_key_that_is_no_key_is_refused_naming_its_file(tmp_path: Path) -> None:
    issued = Authority().issue("localhost", server=True)
    line = refused(*with_tls(tmp_path, issued, Issued(b"", issued.certificate)))
    assert line == (
        f"error: BAD_TLS_FILE: {tmp_path / 'server.key'}: holds no PEM private key, so it cannot be the TLS key"
    )


# -- key files open to group or others ---------------------------------------


def key_file_settings(tmp_path: Path, readable: str) -> dict[str, Any]:
    """Settings that use each kind of key file, the ``readable`` one with mode 0644."""
    issued = Authority().issue("localhost", server=True)
    files = {
        "tls_key_file": write(tmp_path / "server.key", issued.key),
        "api_keys_file": api_key_file(tmp_path / "keys.toml", []),
        "jwt_key_file": write(tmp_path / "jwt.secret", "an-hmac-secret-of-at-least-32-bytes"),
        "master_key_file": write(tmp_path / "master.keys", f"k1:{new_master_key()}\n"),
    }
    Path(files[readable]).chmod(0o644)
    return {
        **files,
        "tls_cert_file": write(tmp_path / "server.pem", issued.certificate),
        "auth": True,
        "policy_file": write(tmp_path / "policy.toml", POLICY),
        "jwt_issuer": ISSUER,
    }


@pytest.mark.parametrize("readable", ["tls_key_file", "api_keys_file", "jwt_key_file", "master_key_file"])
async def test_a_key_file_open_to_others_is_refused(tmp_path: Path, readable: str) -> None:
    settings = key_file_settings(tmp_path, readable)
    with pytest.raises(ConfigurationError) as refused:
        async with running_server(MemoryStore(), **settings):
            pass
    assert refused.value.reason == "KEY_FILE_READABLE"
    assert refused.value.metadata == {"file": settings[readable], "mode": "0644"}


async def test_a_json_web_key_set_holding_a_secret_is_a_key_file(tmp_path: Path) -> None:
    """An HMAC secret (kty oct) in the set mints tokens: the file is checked as the secret's file is."""
    secret = base64.urlsafe_b64encode(b"an-hmac-secret-of-at-least-32-bytes").decode().rstrip("=")
    jwks = write(tmp_path / "jwks.json", json.dumps({"keys": [{"kty": "oct", "k": secret}]}), mode=0o644)
    policy = write(tmp_path / "policy.toml", POLICY)
    with pytest.raises(ConfigurationError) as refused:
        async with running_server(MemoryStore(), auth=True, policy_file=policy, jwt_key_file=jwks, jwt_issuer=ISSUER):
            pass
    assert refused.value.reason == "KEY_FILE_READABLE"


async def test_a_public_jwt_key_may_be_readable_by_anyone(tmp_path: Path) -> None:
    """It verifies tokens and mints none: no secret."""
    public = write(tmp_path / "jwt.pem", JwtIssuer().public_key, mode=0o644)
    policy = write(tmp_path / "policy.toml", POLICY)
    async with running_server(MemoryStore(), auth=True, policy_file=policy, jwt_key_file=public, jwt_issuer=ISSUER):
        pass


def test_a_readable_master_key_file_stops_the_server_unless_allowed(tmp_path: Path) -> None:
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n", mode=0o640)
    line = refused("--master-key-file", keys)
    assert line.startswith(f"error: KEY_FILE_READABLE: the master-key file {keys} is open to its group or to others")
    extra = ["--master-key-file", keys, "--allow-readable-keys", "--shutdown-drain", "0"]
    with server_process("memory://", extra=extra) as server:
        assert server.stop(signal.SIGTERM) == 0
        assert server.process.stdout is not None
        output = server.process.stdout.read()
    assert f"the master-key file {keys} is open to its group or to others (mode 0640); allowed by" in output


def test_a_refused_start_has_not_opened_the_store(tmp_path: Path) -> None:
    """The checks run before the store is opened: a refused server leaves
    no database behind (nor migrates one)."""
    database = tmp_path / "data" / "events.db"
    database.parent.mkdir()
    result = serve_until_exit("--database-url", f"sqlite:///{database}", *with_jwt_key(tmp_path, "too-short"))
    assert (result.returncode, result.stderr.split(":")[1].strip()) == (2, "WEAK_KEY")
    assert list(database.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--console-listen", "127.0.0.1:99999"), "--console-listen: port 99999 is out of range; host:port"),
        (("--metrics-listen", "127.0.0.1:99999"), "--metrics-listen: port 99999 is out of range; host:port"),
        (("--process-listen", "127.0.0.1:70000"), "--process-listen: port 70000 is out of range; host:port"),
        (("--log-level", "LOUD"), "--log-level: 'LOUD' is not a level; DEBUG, INFO, WARNING or ERROR"),
        (("--command-retention", "90x"), "--command-retention: '90x' is not a duration; seconds (2.5) or a number"),
        (
            ("--console-listen", "127.0.0.1:0", "--console-path-prefix", '/ops"><script>'),
            "--console-path-prefix: '/ops\"><script>' holds a character that is not allowed",
        ),
        (
            ("--console-listen", "127.0.0.1:0", "--console-public-origin", "https://ops.example.com/"),
            "--console-public-origin: 'https://ops.example.com/' is not an origin",
        ),
        # A bare number was seconds: 90 meant a minute and a half, and a
        # client's retry after it ran the command again (a deposit twice).
        (("--command-retention", "90"), "--command-retention: '90' has no unit (seconds? days?); a number and a"),
        (("--refusal-retention", "30"), "--refusal-retention: '30' has no unit (seconds? days?); a number and a"),
        (("--command-retention", "59m"), "--command-retention: 3540 seconds is shorter than an hour: a client's"),
        # A wildcard was advertised as it was: routing clients dialled their own host.
        (("--advertise-address", "0.0.0.0:50051"), "--advertise-address: '0.0.0.0:50051' is a wildcard host, which"),
        (("--advertise-address", "[::]:50051"), "--advertise-address: '[::]:50051' is a wildcard host, which"),
    ],
)
def test_a_setting_out_of_its_range_is_one_bad_setting_line_not_a_traceback(args: tuple[str, ...], says: str) -> None:
    """A port past 65535 was a traceback (OverflowError, exit 1); an unknown
    level said only logging's "Unknown level"; a duration in no unit said
    "could not convert string to float", without the units it takes."""
    assert refused(*args).startswith(f"error: BAD_SETTING: {says}")


def test_a_listen_port_out_of_range_is_one_bad_setting_line_not_a_traceback() -> None:
    result = serve_until_exit("--database-url", "memory://", listen="127.0.0.1:99999")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: BAD_SETTING: --listen: port 99999 is out of range; host:port, the port from 0 to")
