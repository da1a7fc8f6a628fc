"""A policy principal names the credential it stands for (docs/security.md,
"The policy"), over a real TLS server accepting client certificates and
JWTs: a token whose ``sub`` is a certificate's subject gets none of the
roles the policy gives that certificate, when the entry says
``credential = "mtls"``; an entry without ``credential`` is said at
start-up, as it still stands for every credential of its name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.store.memory import MemoryStore
from tests.support.grpc_client import TEST_SETTINGS, command, connect, details_of, running_server
from tests.support.security import Authority, Issued, JwtIssuer, bearer, server_tls_files, write

BATCH = "CN=batch,O=Chronicle Tests"  # the subject Authority.issue("batch") gives

POLICY = f"""
[roles.teller]
submit = ["bank.v1.OpenAccount", "bank.v1.Deposit"]

[principals."{BATCH}"]
roles = ["teller"]
credential = "mtls"

[principals."alice"]
roles = ["teller"]
"""


@dataclass
class Site:
    app: Application
    ca: Authority
    issuer: JwtIssuer

    def channel(self, client: Issued) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.certificate, private_key=client.key, certificate_chain=client.certificate
        )


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    ca, issuer = Authority(), JwtIssuer()
    cert_file, key_file = server_tls_files(tmp_path, ca)
    settings = replace(
        TEST_SETTINGS,
        auth=True,
        policy_file=write(tmp_path / "policy.toml", POLICY),
        tls_cert_file=cert_file,
        tls_key_file=key_file,
        tls_client_ca_file=write(tmp_path / "clients-ca.pem", ca.certificate),
        jwt_key_file=write(tmp_path / "jwt.pem", issuer.public_key),
        jwt_issuer=issuer.issuer,
    )
    async with running_server(MemoryStore(), settings=settings) as (app, _):
        yield Site(app, ca, issuer)


async def test_the_certificate_holds_the_roles_its_entry_gives(site: Site) -> None:
    async with connect(site.app.address, credentials=site.channel(site.ca.issue("batch"))) as batch:
        response = await batch.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
    assert response.events[0].user_id == BATCH


async def test_a_token_named_as_the_certificate_gets_none_of_its_roles(site: Site) -> None:
    """Every client presents a certificate (mutual TLS); the bearer token
    wins and names who acts: an IdP's token whose ``sub`` spells the batch
    certificate's subject."""
    token = site.issuer.token(BATCH)
    machine = site.channel(site.ca.issue("gateway"))
    async with connect(site.app.address, credentials=machine, interceptors=bearer(token)) as impostor:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await impostor.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
    details = details_of(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SUBMIT_DENIED")
    assert await site.app.store.events.head("acc-1") is None


async def test_an_entry_without_a_credential_stands_for_every_credential_of_its_name(site: Site) -> None:
    token = site.issuer.token("alice")
    machine = site.channel(site.ca.issue("gateway"))
    async with connect(site.app.address, credentials=machine, interceptors=bearer(token)) as alice:
        response = await alice.submit(command("acc-2", bank.OpenAccount(owner="al"), user_id=""))
    assert response.events[0].user_id == "alice"


@pytest.mark.parametrize(
    ("methods", "warned"),
    [({"jwt"}, False), ({"jwt", "mtls"}, True), ({"jwt", "api-key"}, True)],
)
async def test_an_entry_without_a_credential_is_warned_about_when_two_kinds_are_accepted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, methods: set[str], warned: bool
) -> None:
    ca, issuer = Authority(), JwtIssuer()
    settings = replace(
        TEST_SETTINGS,
        auth=True,
        policy_file=write(tmp_path / "policy.toml", POLICY),
        jwt_key_file=write(tmp_path / "jwt.pem", issuer.public_key),
        jwt_issuer=issuer.issuer,
    )
    if "mtls" in methods:
        cert_file, key_file = server_tls_files(tmp_path, ca)
        settings = replace(
            settings,
            tls_cert_file=cert_file,
            tls_key_file=key_file,
            tls_client_ca_file=write(tmp_path / "clients-ca.pem", ca.certificate),
        )
    if "api-key" in methods:
        settings = replace(settings, api_keys_file=write(tmp_path / "keys.toml", "keys = []\n"))
    with caplog.at_level("WARNING", logger="chronicle"):
        async with running_server(MemoryStore(), settings=settings):
            pass
    said = [r.getMessage() for r in caplog.records if "names no credential" in r.getMessage()]
    if warned:
        (line,) = said  # alice's; the certificate's entry names its credential
        assert "principals.alice names no credential" in line
        assert "add credential = one of" in line
    else:
        assert said == []
