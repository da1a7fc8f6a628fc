"""TLS for the server socket, optionally with client certificates (mTLS)."""

from __future__ import annotations

from pathlib import Path

import grpc

from service.errors import ConfigurationError
from service.security.certificates import check_client_ca, check_server_pair


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(f"cannot read the {what} {path}: {error}", reason="BAD_TLS_FILE") from error


def server_credentials(*, cert_file: str, key_file: str, client_ca_file: str = "") -> grpc.ServerCredentials:
    """Serve TLS with ``cert_file``/``key_file`` (PEM). With ``client_ca_file``
    every client must present a certificate that CA signed: the handshake
    fails for any other, before a single RPC reaches the service. What gRPC
    would take but cannot serve (a mismatched or weak key, an expired
    certificate) is refused here, before the port is bound."""
    key, certificate = _read(key_file, "TLS key"), _read(cert_file, "TLS certificate")
    check_server_pair(cert_pem=certificate, key_pem=key, cert_file=cert_file, key_file=key_file)
    if not client_ca_file:
        return grpc.ssl_server_credentials([(key, certificate)])
    authority = _read(client_ca_file, "client CA")
    check_client_ca(authority, path=client_ca_file)
    return grpc.ssl_server_credentials([(key, certificate)], root_certificates=authority, require_client_auth=True)
