"""TLS for the server socket, optionally with client certificates (mTLS)."""

from __future__ import annotations

from pathlib import Path

import grpc

from service.errors import ConfigurationError


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(f"cannot read the {what} {path}: {error}", reason="BAD_TLS_FILE") from error


def server_credentials(*, cert_file: str, key_file: str, client_ca_file: str = "") -> grpc.ServerCredentials:
    """Serve TLS with ``cert_file``/``key_file`` (PEM). With ``client_ca_file``
    every client must present a certificate that CA signed: the handshake
    fails for any other, before a single RPC reaches the service."""
    key_pair = (_read(key_file, "TLS key"), _read(cert_file, "TLS certificate"))
    if not client_ca_file:
        return grpc.ssl_server_credentials([key_pair])
    return grpc.ssl_server_credentials(
        [key_pair], root_certificates=_read(client_ca_file, "client CA"), require_client_auth=True
    )
