"""Signing keys fetched from an identity provider's JWKS URL
(--jwt-jwks-url), over HTTPS with a test CA (--jwt-jwks-ca-file): a key
rotated without a restart, a flood of made-up kids costing the provider one
request, the provider down leaving the keys fetched before in use, and no
start without a first set, an answer too large or too slow refused."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from chronicle.v1 import event_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.errors import ConfigurationError
from service.security.jwks_fetch import MAX_JWKS_BYTES
from service.store.memory import MemoryStore
from tests.support.grpc_client import command, connect, details_of, running_server
from tests.support.jwks import JwksServer, KeyRing
from tests.support.metrics import sample, scrape
from tests.support.reloading import caught_up, end_of
from tests.support.security import ISSUER, POLICY, Authority, bearer, write
from tests.support.waiting import eventually


@pytest.fixture
def idp(tmp_path: Path) -> Iterator[JwksServer]:
    with JwksServer(tmp_path).running() as server:
        yield server


@asynccontextmanager
async def served(
    tmp_path: Path,
    idp: JwksServer,
    *,
    refresh_seconds: float = 3600,
    unknown_kid_seconds: float = 0,
    timeout_seconds: float = 10,
    metrics_listen: str = "",
) -> AsyncIterator[Application]:
    async with running_server(
        MemoryStore(),
        auth=True,
        policy_file=write(tmp_path / "policy.toml", POLICY),
        jwt_jwks_url=idp.url,
        jwt_jwks_ca_file=idp.ca_file,
        jwt_issuer=ISSUER,
        jwt_jwks_refresh_seconds=refresh_seconds,
        jwt_jwks_unknown_kid_seconds=unknown_kid_seconds,
        jwt_jwks_timeout_seconds=timeout_seconds,
        metrics_listen=metrics_listen,
    ) as (app, _):
        yield app


async def reason_for(app: Application, token: str) -> str:
    """What opening an account with ``token`` gets: "" if accepted, else its reason."""
    async with connect(app.address, interceptors=bearer(token)) as caller:
        try:
            await caller.submit(command(f"acc-{uuid.uuid4()}", bank.OpenAccount(owner="ann"), user_id=""))
        except grpc.aio.AioRpcError as refused:
            return details_of(refused).reason
    return ""


async def test_a_token_is_verified_with_the_key_its_kid_names(tmp_path: Path, idp: JwksServer) -> None:
    ring = KeyRing()
    ring.add("ec-1")
    ring.add("rsa-1", kind="RSA")
    idp.publish(ring.jwks())
    async with served(tmp_path, idp) as app:
        assert await reason_for(app, ring.token("alice", kid="ec-1")) == ""
        assert await reason_for(app, ring.token("alice", kid="rsa-1")) == ""
        # Signed by the EC key but naming the RSA key: verified with the RSA key, and refused.
        assert await reason_for(app, ring.token("alice", kid="rsa-1", signed_by="ec-1")) == "INVALID_TOKEN"


async def test_a_new_key_is_accepted_after_a_fetch_and_a_withdrawn_one_refused(tmp_path: Path, idp: JwksServer) -> None:
    ring = KeyRing()
    ring.add("2026-11")
    idp.publish(ring.jwks())
    async with served(tmp_path, idp, refresh_seconds=0.05) as app:
        old_token = ring.token("alice", kid="2026-11")
        assert await reason_for(app, old_token) == ""
        ring.add("2026-12")  # the provider rotates: publishes the new key, signs with it
        idp.publish(ring.jwks())
        new_token = ring.token("alice", kid="2026-12")

        async def new_accepted() -> bool:
            return await reason_for(app, new_token) == ""

        await eventually(new_accepted, what="the new key's token accepted")
        assert await reason_for(app, old_token) == ""  # the old key is still published
        ring.remove("2026-11")
        idp.publish(ring.jwks())

        async def old_refused() -> bool:
            return await reason_for(app, old_token) == "UNKNOWN_SIGNING_KEY"

        await eventually(old_refused, what="the withdrawn key's token refused, though verified before")
        assert await reason_for(app, new_token) == ""


async def test_a_token_naming_an_unknown_kid_fetches_the_set_again(tmp_path: Path, idp: JwksServer) -> None:
    ring = KeyRing()
    ring.add("old")
    idp.publish(ring.jwks())
    async with served(tmp_path, idp, refresh_seconds=3600) as app:  # no periodic fetch in the test
        ring.add("new")
        idp.publish(ring.jwks())
        token = ring.token("alice", kid="new")
        # The first call finds the kid missing (refused) and starts a fetch.
        assert await reason_for(app, token) == "UNKNOWN_SIGNING_KEY"

        async def accepted() -> bool:
            return await reason_for(app, token) == ""

        await eventually(accepted, what="the token of the key fetched for it accepted")


async def test_a_flood_of_made_up_kids_costs_the_provider_one_request(tmp_path: Path, idp: JwksServer) -> None:
    ring = KeyRing()
    ring.add("real")
    idp.publish(ring.jwks())
    async with served(tmp_path, idp, refresh_seconds=3600, unknown_kid_seconds=3600) as app:
        assert idp.requests == 1  # the fetch at start
        ring.add("forged")
        floods = [ring.token("alice", kid=str(uuid.uuid4()), signed_by="forged") for _ in range(50)]
        assert [await reason_for(app, token) for token in floods[:25]] == ["UNKNOWN_SIGNING_KEY"] * 25
        assert app.jwks is not None
        await eventually(lambda: app.jwks is not None and app.jwks.stats.fetched == 2, what="the one fetch")
        assert [await reason_for(app, token) for token in floods[25:]] == ["UNKNOWN_SIGNING_KEY"] * 25
        assert idp.requests == 2
        assert await reason_for(app, ring.token("alice", kid="real")) == ""


async def test_the_provider_down_leaves_the_keys_fetched_before_in_use(
    tmp_path: Path, idp: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    ring = KeyRing()
    ring.add("k1")
    idp.publish(ring.jwks())
    async with served(tmp_path, idp, refresh_seconds=0.05, metrics_listen="127.0.0.1:0") as app:
        idp.down = True

        async def failing() -> bool:
            return sample(await scrape(app), "chronicle_jwks_fetches_total", outcome="failed") >= 2

        await eventually(failing, what="fetches failing, counted")
        assert await reason_for(app, ring.token("alice", kid="k1")) == ""
        assert "the keys fetched before stay in use (1)" in caplog.text
        metrics = await scrape(app)
        assert sample(metrics, "chronicle_jwks_keys") == 1
        assert sample(metrics, "chronicle_jwks_last_fetched_timestamp_seconds") > 0


async def test_an_answer_that_is_not_a_key_set_leaves_the_keys_fetched_before_in_use(
    tmp_path: Path, idp: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    ring = KeyRing()
    ring.add("k1")
    idp.publish(ring.jwks())
    async with served(tmp_path, idp, refresh_seconds=0.05) as app:
        assert app.jwks is not None
        idp.garbage = True
        failed_before = app.jwks.stats.failed
        await eventually(lambda: app.jwks is not None and app.jwks.stats.failed >= failed_before + 2, what="failures")
        assert await reason_for(app, ring.token("alice", kid="k1")) == ""
        assert "JSONDecodeError" in caplog.text
        idp.garbage = False  # the periodic fetch goes on: it recovers
        ring.add("k2")
        idp.publish(ring.jwks())
        await eventually(lambda: app.jwks is not None and "k2" in app.jwks.keys.kids, what="the set fetched again")


def padded(document: dict[str, object], size: int) -> dict[str, object]:
    """``document`` with a member that makes its JSON at least ``size`` bytes."""
    return {**document, "padding": "x" * size}


@pytest.mark.parametrize("lengthless", [False, True], ids=["content-length", "read-until-closed"])
async def test_an_answer_over_a_mebibyte_is_refused_and_the_keys_fetched_before_stay(
    tmp_path: Path, idp: JwksServer, caplog: pytest.LogCaptureFixture, lengthless: bool
) -> None:
    ring = KeyRing()
    ring.add("k1")
    idp.publish(ring.jwks())
    async with served(tmp_path, idp, refresh_seconds=0.05, metrics_listen="127.0.0.1:0") as app:
        assert app.jwks is not None
        idp.lengthless = lengthless
        ring.add("k2")
        idp.publish(padded(ring.jwks(), MAX_JWKS_BYTES))
        await eventually(lambda: app.jwks is not None and app.jwks.stats.too_large >= 2, what="answers refused")
        assert app.jwks.keys.kids == {"k1"}  # k2 came in the refused answer only
        assert await reason_for(app, ring.token("alice", kid="k1")) == ""
        assert "the answer is too large" in caplog.text
        assert f"more than the {MAX_JWKS_BYTES}" in caplog.text
        assert "the keys fetched before stay in use (1)" in caplog.text
        assert sample(await scrape(app), "chronicle_jwks_fetches_total", outcome="too_large") >= 2
        idp.publish(ring.jwks())  # back to a set of a normal size: fetched again
        await eventually(lambda: app.jwks is not None and "k2" in app.jwks.keys.kids, what="the set fetched again")


async def test_a_set_just_under_the_cap_is_accepted(tmp_path: Path, idp: JwksServer) -> None:
    ring = KeyRing()
    ring.add("k1")
    document = ring.jwks()
    idp.publish(padded(document, MAX_JWKS_BYTES - len(json.dumps(padded(document, 0)).encode())))
    async with served(tmp_path, idp) as app:
        assert app.jwks is not None and app.jwks.keys.kids == {"k1"}


async def test_a_provider_that_trickles_its_answer_is_cut_at_the_timeout(
    tmp_path: Path, idp: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A byte per 50 ms: no socket read ever waits long, yet the set would
    # take seconds; the fetch, not each read, is bounded.
    ring = KeyRing()
    ring.add("k1")
    idp.publish(ring.jwks())
    idp.trickling = True
    with pytest.raises(ConfigurationError) as refused:
        async with served(tmp_path, idp, timeout_seconds=0.5):
            pass
    assert refused.value.reason == "JWKS_UNAVAILABLE"
    assert "TimeoutError" in caplog.text


async def test_the_server_does_not_start_without_a_first_set(tmp_path: Path, idp: JwksServer) -> None:
    idp.down = True
    with pytest.raises(ConfigurationError) as refused:
        async with served(tmp_path, idp):
            pass
    assert refused.value.reason == "JWKS_UNAVAILABLE"
    assert idp.url in refused.value.message


async def test_a_provider_whose_certificate_the_ca_file_does_not_sign_is_refused(
    tmp_path: Path, idp: JwksServer
) -> None:
    ring = KeyRing()
    ring.add("k1")
    idp.publish(ring.jwks())
    idp.ca_file = write(tmp_path / "another-ca.pem", Authority("Another CA").certificate)
    with pytest.raises(ConfigurationError) as refused:
        async with served(tmp_path, idp):
            pass
    assert refused.value.reason == "JWKS_UNAVAILABLE"
    assert idp.requests == 0  # the handshake failed: no request was made


async def test_a_withdrawn_key_ends_the_streams_its_tokens_opened(tmp_path: Path, idp: JwksServer) -> None:
    ring = KeyRing()
    ring.add("old")
    ring.add("new")
    idp.publish(ring.jwks())
    request = event_service_pb2.SubscribeRequest(aggregate_types=["Account"], pages=True)
    async with (
        served(tmp_path, idp, refresh_seconds=0.05) as app,
        connect(app.address, interceptors=bearer(ring.token("alice", kid="old"))) as old,
        connect(app.address, interceptors=bearer(ring.token("alice", kid="new"))) as new,
    ):
        ending, beside = old.events.Subscribe(request), new.events.Subscribe(request)
        await caught_up(ending)
        await caught_up(beside)
        ring.remove("old")
        idp.publish(ring.jwks())

        ended = await end_of(ending)
        assert (ended.code(), details_of(ended).reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_SIGNING_KEY")
        await new.submit(command("acc-beside", bank.OpenAccount(owner="ann"), user_id=""))
        async with asyncio.timeout(20):
            while (message := await beside.read()) is not grpc.aio.EOF:
                if message.WhichOneof("kind") == "page" and message.page.events:
                    break
        assert message is not grpc.aio.EOF  # the stream of the key still published goes on


async def test_a_published_key_that_cannot_be_used_is_left_out_and_the_others_used(
    tmp_path: Path, idp: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    ring = KeyRing()
    ring.add("good")
    ring.add("encryption", kind="RSA")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    secret = {"kty": "oct", "kid": "secret", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}
    idp.publish(
        {
            "keys": [
                ring.jwk("good"),
                {**RSAAlgorithm.to_jwk(weak.public_key(), as_dict=True), "kid": "weak"},
                secret,
                ring.jwk("encryption", use="enc", alg="RSA-OAEP"),
            ]
        }
    )
    async with served(tmp_path, idp) as app:
        assert await reason_for(app, ring.token("alice", kid="good")) == ""
        assert await reason_for(app, ring.token("alice", kid="encryption")) == "UNKNOWN_SIGNING_KEY"
        assert app.jwks is not None and app.jwks.keys.kids == {"good"}
    assert f"JWKS {idp.url}: key 'weak' holds a 1024-bit RSA key" in caplog.text
    assert "key 'secret' is an HMAC secret (kty oct): a secret published at a URL is no secret" in caplog.text
    assert "key 'encryption'" not in caplog.text  # not a signing key: left out without a word


async def test_the_warning_before_a_refused_start_promises_no_keys(
    tmp_path: Path, idp: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    """At start there are no keys fetched before to keep: the warning says
    so, not "the keys fetched before stay in use (0)", before the refusal."""
    idp.down = True
    with pytest.raises(ConfigurationError) as refused:
        async with served(tmp_path, idp):
            pass
    assert refused.value.reason == "JWKS_UNAVAILABLE"
    assert "no set was fetched before, so there are no keys to keep using" in caplog.text
    assert "stay in use" not in caplog.text
