"""TLS on the server socket, and mutual TLS with the client certificate's
subject as the principal. Certificates are made in the test."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.settings import Settings
from service.store.base import AuditQuery
from service.store.memory import MemoryStore
from tests.support.grpc_client import TEST_SETTINGS, command, connect, details_of, running_server
from tests.support.processes import cli, run_healthcheck
from tests.support.security import POLICY, Authority, Issued, api_key_file, bearer, write


@dataclass
class Pki:
    ca: Authority
    server: Issued
    tmp: Path

    def settings(self, **extra: Any) -> Settings:
        """Test settings serving TLS with the server certificate, plus ``extra``."""
        return replace(
            TEST_SETTINGS,
            tls_cert_file=write(self.tmp / "server.pem", self.server.certificate),
            tls_key_file=write(self.tmp / "server.key", self.server.key),
            **extra,
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = Authority()
    return Pki(ca, ca.issue("localhost", server=True), tmp_path)


def credentials(pki: Pki, client: Issued | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=pki.ca.certificate)
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.certificate, private_key=client.key, certificate_chain=client.certificate
    )


ALICE_KEY = "chr_alice-tls-test-key-0123456789abcdef0123456789"


@pytest.fixture
async def mtls(pki: Pki) -> AsyncIterator[Application]:
    """Mutual TLS, and API keys beside it (alice's)."""
    settings = pki.settings(
        auth=True,
        policy_file=write(pki.tmp / "policy.toml", POLICY),
        tls_client_ca_file=write(pki.tmp / "clients-ca.pem", pki.ca.certificate),
        api_keys_file=api_key_file(pki.tmp / "keys.toml", [(ALICE_KEY, "alice", [])]),
    )
    async with running_server(MemoryStore(), settings=settings) as (app, _):
        yield app


async def test_a_tls_server_serves_a_client_that_trusts_its_ca(pki: Pki) -> None:
    async with running_server(MemoryStore(), settings=pki.settings()) as (app, _):  # noqa: SIM117
        async with connect(app.address, credentials=credentials(pki)) as client:
            response = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    assert response.version == 1


async def test_a_tls_server_refuses_plaintext(pki: Pki) -> None:
    async with running_server(MemoryStore(), settings=pki.settings()) as (app, _):  # noqa: SIM117
        async with connect(app.address) as plaintext:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await plaintext.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_client_certificate_subject_is_the_principal(pki: Pki, mtls: Application) -> None:
    batch = pki.ca.issue("batch")
    async with connect(mtls.address, credentials=credentials(pki, batch)) as client:
        response = await client.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
    assert response.events[0].user_id == "CN=batch,O=Chronicle Tests"


async def test_a_certificate_without_a_subject_is_named_by_its_uri(pki: Pki, mtls: Application) -> None:
    """A SPIFFE X.509-SVID: an empty subject and one URI name, which is the principal."""
    spiffe = "spiffe://acme.example/ns/prod/sa/batch"
    svid = pki.ca.issue("", subject=x509.Name([]), uris=[spiffe])
    async with connect(mtls.address, credentials=credentials(pki, svid)) as client:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
    assert details_of(raised.value).reason == "SUBMIT_DENIED"  # POLICY does not name it
    (entry,) = await mtls.store.audit.read_audit(AuditQuery())
    assert (entry.principal, entry.reason) == (spiffe, "SUBMIT_DENIED")


async def test_a_certificate_that_names_no_one_is_unauthenticated(pki: Pki, mtls: Application) -> None:
    """An empty subject and no URI name: it used to be the principal '',
    "an anonymous caller", in the audit."""
    nameless = pki.ca.issue("", subject=x509.Name([]))
    async with connect(mtls.address, credentials=credentials(pki, nameless)) as client:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
    details = details_of(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "BAD_CERTIFICATE_SUBJECT")
    assert await mtls.store.events.head("acc-1") is None


async def test_a_bearer_token_wins_over_the_client_certificate(pki: Pki, mtls: Application) -> None:
    """The certificate proves which machine connects; the token, who acts."""
    batch = pki.ca.issue("batch")
    async with connect(mtls.address, credentials=credentials(pki, batch), interceptors=bearer(ALICE_KEY)) as client:
        response = await client.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
    assert response.events[0].user_id == "alice"


async def test_a_certificate_the_policy_does_not_know_is_permission_denied(pki: Pki, mtls: Application) -> None:
    stranger = pki.ca.issue("stranger")
    async with connect(mtls.address, credentials=credentials(pki, stranger)) as client:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
    details = details_of(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SUBMIT_DENIED")


async def audited_after_a_call_that_is(pki: Pki, mtls: Application) -> list[str]:
    """The aggregates the audit log names once a client with a good
    certificate has opened acc-2: a handshake refused before it left nothing."""
    async with connect(mtls.address, credentials=credentials(pki, pki.ca.issue("batch"))) as client:
        await client.submit(command("acc-2", bank.OpenAccount(owner="ann"), user_id=""))
    return [entry.aggregate_id for entry in await mtls.store.audit.read_audit(AuditQuery())]


async def test_a_certificate_from_an_unknown_ca_fails_the_handshake(pki: Pki, mtls: Application) -> None:
    impostor = Authority("Impostor CA").issue("batch")
    async with connect(mtls.address, credentials=credentials(pki, impostor)) as client:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    # The TLS handshake refuses the connection: no RPC reaches the service.
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await audited_after_a_call_that_is(pki, mtls) == ["acc-2"]  # nothing of the refused handshake


async def test_a_client_without_a_certificate_fails_the_handshake(pki: Pki, mtls: Application) -> None:
    async with connect(mtls.address, credentials=credentials(pki), interceptors=bearer(ALICE_KEY)) as client:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # a valid API key does not make up for it
    assert await audited_after_a_call_that_is(pki, mtls) == ["acc-2"]


async def test_the_cli_speaks_mutual_tls_and_sends_a_token_by_flags_or_by_the_environment(
    pki: Pki, mtls: Application
) -> None:
    batch = pki.ca.issue("batch")
    files = {
        "--tls-ca": write(pki.tmp / "ca.pem", pki.ca.certificate),
        "--tls-cert": write(pki.tmp / "batch.pem", batch.certificate),
        "--tls-key": write(pki.tmp / "batch.key", batch.key),
    }
    flags = [part for flag, path in files.items() for part in (flag, path)]
    environment = {"CHRONICLE_" + flag.removeprefix("--").replace("-", "_").upper(): p for flag, p in files.items()}

    async def chronicle(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        result = await asyncio.to_thread(cli, *args, server=mtls.address, env=env)
        return dict(json.loads(result.stdout))

    by_flags = await chronicle("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', *flags)
    assert by_flags["events"][0]["user_id"] == "CN=batch,O=Chronicle Tests"  # the certificate's subject
    by_environment = await chronicle("get", "acc-1", env=environment)
    assert by_environment["state"]["owner"] == "ann"
    with_token = await chronicle("submit", "acc-1", "bank.v1.Deposit", '{"amount": 5}', "--token", ALICE_KEY, *flags)
    assert with_token["events"][0]["user_id"] == "alice"
    token_from_environment = await chronicle(
        "submit", "acc-1", "bank.v1.Deposit", '{"amount": 5}', env={**environment, "CHRONICLE_TOKEN": ALICE_KEY}
    )
    assert token_from_environment["events"][0]["user_id"] == "alice"
    no_certificate = await asyncio.to_thread(
        cli, "get", "acc-1", "--tls-ca", files["--tls-ca"], "--timeout", "2", server=mtls.address, check=False
    )
    assert no_certificate.returncode != 0 and "UNAVAILABLE" in no_certificate.stderr


# -- the image's health check runs beside the server with its environment ---


def server_environment(app: Application) -> dict[str, str]:
    """The TLS server's settings as a container's environment would hold them."""
    env = {"CHRONICLE_LISTEN": app.address}
    for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        if value := getattr(app.settings, name):
            env[f"CHRONICLE_{name.upper()}"] = value
    return env


async def test_the_image_health_check_speaks_tls_to_a_tls_server_named_otherwise(pki: Pki) -> None:
    # Named as clients know it, not as the health check reaches it (loopback).
    named = pki.ca.issue("chronicle", server=True, dns_names=["chronicle.internal"], ip_addresses=[])
    settings = replace(
        pki.settings(),
        tls_cert_file=write(pki.tmp / "named.pem", named.certificate),
        tls_key_file=write(pki.tmp / "named.key", named.key),
    )
    async with running_server(MemoryStore(), settings=settings) as (app, _):
        checked = await asyncio.to_thread(run_healthcheck, server_environment(app))
    assert (checked.returncode, checked.stderr) == (0, "")
    assert '"status": "SERVING"' in checked.stdout


async def test_the_image_health_check_of_a_mutual_tls_server_needs_a_client_certificate(
    pki: Pki, mtls: Application
) -> None:
    env = server_environment(mtls)
    without = await asyncio.to_thread(run_healthcheck, env)
    probe = pki.ca.issue("health-probe")
    env["CHRONICLE_TLS_CERT"] = write(pki.tmp / "probe.pem", probe.certificate)
    env["CHRONICLE_TLS_KEY"] = write(pki.tmp / "probe.key", probe.key)
    with_certificate = await asyncio.to_thread(run_healthcheck, env)
    assert without.returncode == 2
    assert "the server asks for a client certificate (CHRONICLE_TLS_CLIENT_CA_FILE)" in without.stderr
    assert (with_certificate.returncode, with_certificate.stderr) == (0, "")
