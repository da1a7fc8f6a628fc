"""Where this host's own server is, as its settings say: the address it
listens on (a wildcard address reached through loopback) and, when it serves
TLS, what to trust and which name to check. A container's health check runs
beside the server with the server's environment, not a client's, so it
follows ``--listen`` and the TLS settings instead of assuming a plaintext
127.0.0.1:50051."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

# A server listening on every address is reached through loopback; "[::]"
# may be dual-stack or IPv6 only, and "localhost" resolves to whichever exists.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "[::]": "localhost", "::": "localhost"}


@dataclass(frozen=True)
class LocalServer:
    """``address`` to dial; with ``tls``, the certificates to trust and the
    name the server's certificate must carry (None: the address's host)."""

    address: str
    tls: bool = False
    root_certificates: bytes | None = None
    server_name: str | None = None


def local_server(*, listen: str, tls_cert_file: str = "", trusted_ca_file: str = "") -> LocalServer:
    """The server that ``listen`` and ``tls_cert_file`` (its own settings)
    describe. Its certificate is trusted unless ``trusted_ca_file`` names the
    CA to trust instead (a certificate a CA issued, verified up to that CA)."""
    host, _, port = listen.rpartition(":")
    if port == "0":
        raise ValueError(f"the server listens on {listen} (any free port): name its address with --server")
    address = f"{_LOOPBACK.get(host, host)}:{port}"
    if not tls_cert_file:
        if trusted_ca_file:
            # A CA named but not the server's certificate (its settings are
            # not in this environment): TLS all the same, trusting that CA,
            # rather than a plaintext probe that a TLS server never answers.
            return LocalServer(address, tls=True, root_certificates=_read(trusted_ca_file, "the CA to trust"))
        return LocalServer(address)
    certificate = _read(tls_cert_file, "the server's TLS certificate")
    trusted = _read(trusted_ca_file, "the CA to trust") if trusted_ca_file else certificate
    return LocalServer(address, tls=True, root_certificates=trusted, server_name=certificate_name(certificate))


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {what} {path}: {error.strerror or error}") from None


def certificate_name(pem: bytes) -> str | None:
    """A DNS name the (first) certificate in ``pem`` is valid for: the first
    of its subject alternative names, else its common name; None if it has
    neither (then the address itself must be in the certificate)."""
    certificate = x509.load_pem_x509_certificate(pem)
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = None
    if names is not None:
        dns = names.get_values_for_type(x509.DNSName)
        if not dns:
            return None  # IP addresses only: the loopback address must be one of them
        name = str(dns[0])
    else:
        common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not common:
            return None
        name = str(common[0].value)
    # "*.example.com" is valid for any one label there, not for the literal "*"
    return "localhost." + name[2:] if name.startswith("*.") else name
