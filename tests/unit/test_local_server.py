"""Finding this host's own server from its settings, as a container's
health check must: the listen address through loopback, and TLS as served."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.local_server import LocalServer, certificate_name, local_server
from tests.support.security import Authority, write


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("0.0.0.0:6000", "127.0.0.1:6000"),
        ("[::]:6000", "localhost:6000"),
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("10.1.2.3:7000", "10.1.2.3:7000"),
    ],
)
def test_a_plaintext_server_is_dialled_where_it_listens_a_wildcard_through_loopback(listen: str, address: str) -> None:
    assert local_server(listen=listen) == LocalServer(address)


def test_a_server_on_any_free_port_cannot_be_found_from_its_settings() -> None:
    with pytest.raises(ValueError, match=r"listens on 127\.0\.0\.1:0 .* --server"):
        local_server(listen="127.0.0.1:0")


def test_a_tls_server_is_trusted_by_its_own_certificate_and_checked_by_its_name(tmp_path: Path) -> None:
    issued = Authority().issue("chronicle", server=True, dns_names=["chronicle.internal"], ip_addresses=[])
    cert_file = write(tmp_path / "server.pem", issued.certificate)
    found = local_server(listen="0.0.0.0:6000", tls_cert_file=cert_file)
    assert found == LocalServer(
        "127.0.0.1:6000", tls=True, root_certificates=issued.certificate, server_name="chronicle.internal"
    )


def test_a_ca_to_trust_replaces_the_server_certificate(tmp_path: Path) -> None:
    ca = Authority()
    cert_file = write(tmp_path / "server.pem", ca.issue("localhost", server=True).certificate)
    found = local_server(
        listen="0.0.0.0:6000", tls_cert_file=cert_file, trusted_ca_file=write(tmp_path / "ca.pem", ca.certificate)
    )
    assert (found.root_certificates, found.server_name) == (ca.certificate, "localhost")


def test_an_unreadable_certificate_is_a_plain_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read the server's TLS certificate .*missing.pem"):
        local_server(listen="0.0.0.0:6000", tls_cert_file=str(tmp_path / "missing.pem"))


@pytest.mark.parametrize(
    ("dns_names", "ip_addresses", "name"),
    [
        (["chronicle.internal", "other.internal"], ["127.0.0.1"], "chronicle.internal"),
        (["*.chronicle.internal"], [], "localhost.chronicle.internal"),  # a wildcard matches one label
        ([], ["127.0.0.1"], None),  # only addresses: the loopback address must be one of them
        ([], [], "chronicle-cn"),  # no alternative names: the common name
    ],
)
def test_the_name_checked_is_the_certificate_s_first_dns_name(
    dns_names: list[str], ip_addresses: list[str], name: str | None
) -> None:
    issued = Authority().issue("chronicle-cn", server=True, dns_names=dns_names, ip_addresses=ip_addresses)
    assert certificate_name(issued.certificate) == name


def test_a_ca_to_trust_without_the_servers_certificate_still_means_tls(tmp_path: Path) -> None:
    # chronicle health --tls-ca CA, the server's own TLS settings not in the
    # probe's environment: a TLS probe trusting that CA, not plaintext.
    authority = Authority()
    ca_file = write(tmp_path / "ca.pem", authority.certificate)
    found = local_server(listen="0.0.0.0:6000", trusted_ca_file=ca_file)
    assert found == LocalServer("127.0.0.1:6000", tls=True, root_certificates=authority.certificate)
