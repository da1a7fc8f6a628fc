"""Streams live only as long as the credentials and grants they opened
with (service/api/live_streams.py): a JWT's exp, a client certificate's end
of validity, a revoked API key, a rotated JWT key, a grant changed. Each
test keeps a second stream open beside the one that ends, which must go on.
Over real sockets, with the server's reload of its files every 50 ms."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from chronicle.v1 import command_service_pb2, event_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient, Command, RemoteError, RetryPolicy
from service.store.base import AuditQuery
from service.store.memory import MemoryStore
from service.store.records import REFUSED
from tests.support.grpc_client import TEST_SETTINGS, Client, command, connect, details_of, running_server
from tests.support.reloading import Served, caught_up, end_of, reloading_server
from tests.support.security import POLICY, Authority, JwtIssuer, api_key_file, bearer, server_tls_files, write
from tests.support.waiting import eventually

ALICE_KEY = "chr_alice-stream-test-key-0123456789abcdef0123456789"
ALICE_OTHER_KEY = "chr_alice-stream-test-key-other-456789abcdef0123456789"
ROOT_KEY = "chr_root-stream-test-key-0123456789abcdef0123456789ab"
# Root may read everything and subscribe to accounts.
STREAM_POLICY = POLICY.replace('[roles.operator]\nread = ["*"]', '[roles.operator]\nread = ["*"]\nsubscribe = ["*"]')


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with reloading_server(
        tmp_path,
        keys=[(ALICE_KEY, "alice", []), (ALICE_OTHER_KEY, "alice", []), (ROOT_KEY, "root", [])],
        policy=STREAM_POLICY,
        jwt_leeway_seconds=0.0,
    ) as server:
        yield server


def subscribe(client: Client) -> Any:
    return client.events.Subscribe(event_service_pb2.SubscribeRequest(aggregate_types=["Account"], pages=True))


async def opened(*clients: Client) -> list[Any]:
    """A subscription of each client, each caught up: open."""
    calls = [subscribe(client) for client in clients]
    for call in calls:
        await caught_up(call)
    return calls


async def still_delivers(call: Any, submitter: Client, aggregate_id: str) -> None:
    """A new account's event reaches the open subscription ``call``."""
    await submitter.submit(command(aggregate_id, bank.OpenAccount(owner="ann"), user_id=""))
    async with asyncio.timeout(20):
        while (message := await call.read()) is not grpc.aio.EOF:
            if message.WhichOneof("kind") == "page" and any(
                e.aggregate_id == aggregate_id for e in message.page.events
            ):
                return
    raise AssertionError("the subscription beside it ended")


async def test_streams_end_when_their_token_expires_and_not_before(served: Served) -> None:
    expires = int(time.time()) + 3
    short = served.issuer.sign({"sub": "alice", "iss": served.issuer.issuer, "exp": expires})
    async with (
        connect(served.app.address, interceptors=bearer(short)) as short_lived,
        connect(served.app.address, interceptors=bearer(served.issuer.token("alice"))) as long_lived,
        connect(served.app.address) as plain,
    ):
        (subscription,) = await opened(short_lived)
        # Its token as call metadata, not through the interceptors: grpc.aio
        # runs an intercepted request stream through a task of its own,
        # which fails unheard when the server ends the call.
        commands = plain.commands.SubmitStream(metadata=(("authorization", f"Bearer {short}"),))
        await commands.write(
            command_service_pb2.SubmitRequest(command=command("acc-1", bank.OpenAccount(owner="a"), user_id=""))
        )
        assert (await commands.read()).WhichOneof("result") == "ok"  # open, and serving
        (beside,) = await opened(long_lived)

        ended = await end_of(subscription)
        assert time.time() >= expires - 0.1  # not before its exp (no leeway here)
        assert ended.code() == grpc.StatusCode.UNAUTHENTICATED
        assert details_of(ended).reason == "TOKEN_EXPIRED"
        stream_ended = await end_of(commands)
        assert (stream_ended.code(), details_of(stream_ended).reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "TOKEN_EXPIRED",
        )
        await still_delivers(beside, long_lived, "acc-2")

    entries = await served.app.store.audit.read_audit(AuditQuery())
    ended_subscriptions = [
        e for e in entries if e.command_type == "chronicle.v1.EventService/Subscribe" and e.principal == "alice"
    ]
    assert [(e.outcome, e.reason) for e in ended_subscriptions] == [(REFUSED, "TOKEN_EXPIRED")]


async def test_a_revoked_api_key_ends_its_streams_and_only_those(served: Served) -> None:
    async with (
        connect(served.app.address, interceptors=bearer(ALICE_KEY)) as revoked,
        connect(served.app.address, interceptors=bearer(ALICE_OTHER_KEY)) as kept,
    ):
        subscription, beside = await opened(revoked, kept)
        api_key_file(served.keys, [(ALICE_OTHER_KEY, "alice", []), (ROOT_KEY, "root", [])])

        ended = await end_of(subscription)
        assert (ended.code(), details_of(ended).reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_API_KEY")
        await still_delivers(beside, kept, "acc-1")


async def test_a_rotated_jwt_key_ends_the_streams_its_tokens_opened(served: Served) -> None:
    async with connect(served.app.address, interceptors=bearer(served.issuer.token("alice"))) as old:
        (subscription,) = await opened(old)
        write(served.jwt_key, JwtIssuer().public_key)

        ended = await end_of(subscription)
        assert (ended.code(), details_of(ended).reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")


async def test_a_changed_grant_ends_the_principals_streams_to_be_opened_again_under_it(served: Served) -> None:
    async with (
        connect(served.app.address, interceptors=bearer(ALICE_KEY)) as alice,
        connect(served.app.address, interceptors=bearer(ROOT_KEY)) as root,
    ):
        subscription, beside = await opened(alice, root)
        # Alice loses her subscribe grant; root's grants do not change.
        write(served.policy, STREAM_POLICY.replace('subscribe = ["Account"]\n', ""))

        ended = await end_of(subscription)
        assert ended.code() == grpc.StatusCode.UNAVAILABLE  # retried by clients: opened again under the new grant
        assert details_of(ended).reason == "CREDENTIALS_CHANGED"
        reopened = await end_of(subscribe(alice))
        assert (reopened.code(), details_of(reopened).reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "SUBSCRIBE_DENIED",
        )
        await still_delivers(beside, alice, "acc-1")  # alice may still submit


async def test_a_policy_change_that_leaves_a_principals_grants_alone_leaves_its_streams_open(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.security.reloading")
    async with connect(served.app.address, interceptors=bearer(ALICE_KEY)) as alice:
        (subscription,) = await opened(alice)
        write(served.policy, STREAM_POLICY + '\n[principals."carol"]\nroles = ["boxer"]\n')
        await eventually(lambda: "read again" in caplog.text, what="the policy read again")
        await still_delivers(subscription, alice, "acc-1")


FEED_PRINCIPAL = '\n[principals."CN=feed,O=Chronicle Tests"]\nroles = ["teller"]\n'


async def test_a_stream_ends_when_its_client_certificate_expires(tmp_path: Path) -> None:
    ca = Authority()
    cert_file, key_file = server_tls_files(tmp_path, ca)
    settings = replace(
        TEST_SETTINGS,
        tls_cert_file=cert_file,
        tls_key_file=key_file,
        tls_client_ca_file=write(tmp_path / "clients-ca.pem", ca.certificate),
        auth=True,
        policy_file=write(tmp_path / "policy.toml", STREAM_POLICY + FEED_PRINCIPAL),
    )
    client = ca.issue("feed", valid_until=datetime.timedelta(seconds=4))
    lasting = ca.issue("feed")
    async with running_server(MemoryStore(), settings=settings) as (app, _):

        def over_tls(issued: Any) -> grpc.ChannelCredentials:
            return grpc.ssl_channel_credentials(
                root_certificates=ca.certificate, private_key=issued.key, certificate_chain=issued.certificate
            )

        async with (
            connect(app.address, credentials=over_tls(client)) as expiring,
            connect(app.address, credentials=over_tls(lasting)) as kept,
        ):
            subscription, beside = await opened(expiring, kept)
            ended = await end_of(subscription)
            assert (ended.code(), details_of(ended).reason) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "CERTIFICATE_EXPIRED",
            )
            await still_delivers(beside, kept, "acc-1")


class ShortTokens:
    """A token function as an application would write one: the token it
    holds, replaced by a new one (lasting ``lifetime`` seconds) once that
    one has expired. Counts the tokens it issued."""

    def __init__(self, issuer: JwtIssuer, lifetime: int = 2) -> None:
        self._issuer, self._lifetime = issuer, lifetime
        self._token, self._expires, self.issued = "", 0.0, 0

    def __call__(self) -> str:
        if time.time() >= self._expires:
            self._expires = int(time.time()) + self._lifetime
            self._token = self._issuer.sign({"sub": "alice", "iss": self._issuer.issuer, "exp": self._expires})
            self.issued += 1
        return self._token


async def test_the_python_clients_streams_go_on_across_short_lived_tokens(served: Served) -> None:
    tokens = ShortTokens(served.issuer)
    fast = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
    received: list[int] = []
    async with ChronicleClient.connect(served.app.address, token=tokens, retry=fast) as client:
        await client.submit("acc-1", bank.OpenAccount(owner="ann"))

        async def follow() -> None:
            async for event in client.subscribe(aggregate_types=["Account"]):
                received.append(event.position)

        async def deposits() -> AsyncIterator[Command]:
            for _ in range(2_000):  # a bound for a broken build; the tokens' expiries end it
                if tokens.issued >= 4:  # three tokens expired under the open streams
                    return
                yield Command("acc-1", bank.Deposit(amount=1))
                await asyncio.sleep(0.02)

        following = asyncio.ensure_future(follow())
        try:
            versions = [(result.result()).version async for result in client.submit_stream(deposits())]
            assert tokens.issued >= 4
            assert versions == list(range(2, len(versions) + 2))  # in order, each once, none lost
            await eventually(lambda: len(received) == len(versions) + 1, what="every event received")
            assert received == list(range(1, len(versions) + 2))  # in order, none twice, none missed
        finally:
            following.cancel()
    # The server did end both streams at their tokens' exp (entries naming
    # alice: a call refused at its start names no principal); the client
    # reopened them.
    entries = await served.app.store.audit.read_audit(AuditQuery())
    ended = {e.command_type for e in entries if e.reason == "TOKEN_EXPIRED" and e.principal == "alice"}
    assert ended == {"chronicle.v1.EventService/Subscribe", ""}  # "": the command stream's names no command


async def test_a_static_token_that_expires_ends_the_python_clients_subscription(served: Served) -> None:
    expires = int(time.time()) + 2
    token = served.issuer.sign({"sub": "alice", "iss": served.issuer.issuer, "exp": expires})
    async with ChronicleClient.connect(served.app.address, token=token) as client:
        with pytest.raises(RemoteError) as ended:
            async for _ in client.subscribe(aggregate_types=["Account"]):
                pass
    assert (ended.value.code, ended.value.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")
    assert time.time() >= expires - 0.1


async def test_an_idle_command_stream_outlives_more_token_expiries_than_its_retries(served: Served) -> None:
    """The server ends the stream at each token's exp while it has nothing
    to send; a stream that lived counts its retries afresh (renew_after)."""
    tokens = ShortTokens(served.issuer)
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.05, renew_after=1.0)
    async with ChronicleClient.connect(served.app.address, token=tokens, retry=policy) as client:

        async def commands() -> AsyncIterator[Command]:
            yield Command("acc-1", bank.OpenAccount(owner="ann"))
            await eventually(lambda: tokens.issued >= 4, what="three tokens expired")  # idle meanwhile
            yield Command("acc-1", bank.Deposit(amount=5))

        versions = [(result.result()).version async for result in client.submit_stream(commands())]
    assert versions == [1, 2]
    entries = await served.app.store.audit.read_audit(AuditQuery())
    assert sum(e.reason == "TOKEN_EXPIRED" and e.principal == "alice" for e in entries) >= 2  # ended, reopened


async def test_a_group_consumer_goes_on_across_short_lived_tokens(served: Served) -> None:
    tokens = ShortTokens(served.issuer)
    fast = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
    async with ChronicleClient.connect(served.app.address, token=ROOT_KEY) as root:
        await root.groups.create("tellers", aggregate_types=["Account"])
    async with ChronicleClient.connect(served.app.address, token=tokens, retry=fast) as client:
        await client.submit("acc-1", bank.OpenAccount(owner="ann"))
        deposits = 0
        acked: list[int] = []
        async with client.consume("tellers", consumer="worker", reconnect_delay=0.05) as consumer:
            async for delivery in consumer:
                await delivery.ack()
                if delivery.event.position in acked:
                    continue  # delivered again: its ack was lost with a stream a token's expiry ended
                acked.append(delivery.event.position)
                if tokens.issued >= 4:  # three tokens expired under the open stream
                    break
                await client.submit("acc-1", bank.Deposit(amount=1))
                deposits += 1
                await asyncio.sleep(0.1)
    assert acked == list(range(1, deposits + 2))  # every event, in order
    entries = await served.app.store.audit.read_audit(AuditQuery())
    ended = [e for e in entries if e.reason == "TOKEN_EXPIRED" and e.principal == "alice"]
    assert any(e.command_type == "chronicle.v1.SubscriptionGroupService/Consume" for e in ended)
