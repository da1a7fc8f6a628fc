"""docs/security.md's rotation of a JSON Web Key Set in --jwt-key-file
(add the new key beside the old, let the issuer sign with it, remove the
old), under tokens that name no key (kid), as the docs' own minting makes
them: no call and no open stream is refused while both keys are in the
set; a token signed by a key outside the set still is; the set of two is
warned of. Each step is one reload of the file, over a real socket."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from chronicle.v1 import event_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient, RetryPolicy
from tests.support.grpc_client import command, connect, details_of
from tests.support.jwks import KeyRing
from tests.support.reloading import Served, caught_up, end_of, reloading_server
from tests.support.security import POLICY, bearer, write
from tests.support.waiting import eventually

SUBSCRIBE = event_service_pb2.SubscribeRequest(aggregate_types=["Account"], pages=True)
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
TWO_KEYS_WARNING = "keys 'old', 'new' all fit ES256: a token without kid is verified against each in turn"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with reloading_server(tmp_path, keys=[], policy=POLICY) as server:
        yield server


@pytest.fixture
def ring(served: Served) -> KeyRing:
    """The issuer's keys, "old" the only one, in the server's key file."""
    keys = KeyRing(served.issuer.issuer)
    keys.add("old")
    publish(served, keys)
    return keys


def publish(served: Served, ring: KeyRing) -> None:
    write(served.jwt_key, json.dumps(ring.jwks()))


async def reason_for(served: Served, token: str) -> str:
    """What opening a new account with ``token`` gets: "" if accepted, else its reason."""
    async with connect(served.app.address, interceptors=bearer(token)) as caller:
        try:
            await caller.submit(command(f"acc-{uuid.uuid4()}", bank.OpenAccount(owner="ann"), user_id=""))
        except grpc.aio.AioRpcError as refused:
            return details_of(refused).reason
    return ""


def answered(served: Served, token: str, reason: str) -> Callable[[], Awaitable[bool]]:
    """For ``eventually``: whether a call with ``token`` gets ``reason`` ("": accepted)."""

    async def check() -> bool:
        return await reason_for(served, token) == reason

    return check


async def still_open(caller: Any, stream: Any) -> None:
    """A new account, seen on ``stream``: it was not ended."""
    aggregate_id = f"acc-{uuid.uuid4()}"
    await caller.submit(command(aggregate_id, bank.OpenAccount(owner="ann"), user_id=""))
    async with asyncio.timeout(20):
        while (message := await stream.read()) is not grpc.aio.EOF:
            if message.WhichOneof("kind") == "page" and any(
                event.aggregate_id == aggregate_id for event in message.page.events
            ):
                return
    raise AssertionError("the stream ended")


async def test_tokens_without_kid_and_their_streams_outlive_the_rotation(
    served: Served, ring: KeyRing, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.security.jwks")
    old_token = ring.token("alice", kid=None, signed_by="old")
    await eventually(answered(served, old_token, ""), what="the key set of the old key read")
    async with connect(served.app.address, interceptors=bearer(old_token)) as old_caller:
        opened_with_old = old_caller.events.Subscribe(SUBSCRIBE)
        await caught_up(opened_with_old)

        ring.add("new")  # 1. published beside the old one
        publish(served, ring)
        await eventually(lambda: TWO_KEYS_WARNING in caplog.text, what="the set of two read, and warned of")
        assert await reason_for(served, old_token) == ""
        await still_open(old_caller, opened_with_old)

        new_token = ring.token("alice", kid=None, signed_by="new")  # 2. the issuer signs with the new key
        assert await reason_for(served, new_token) == ""
        assert await reason_for(served, old_token) == ""
        outsider = KeyRing(served.issuer.issuer)
        outsider.add("old")  # another key under the old key's name: in no set of the server's
        assert await reason_for(served, outsider.token("eve", kid=None, signed_by="old")) == "INVALID_TOKEN"

        async with connect(served.app.address, interceptors=bearer(new_token)) as new_caller:
            opened_with_new = new_caller.events.Subscribe(SUBSCRIBE)
            await caught_up(opened_with_new)
            ring.remove("old")  # 3. withdrawn once its tokens have expired (here: before)
            publish(served, ring)

            ended = await end_of(opened_with_old)  # a withdrawn key admits nothing it signed
            # INVALID_TOKEN, which clients (0.3.0's too) retry with a new token.
            assert (ended.code(), details_of(ended).reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")
            assert await reason_for(served, old_token) == "INVALID_TOKEN"
            assert await reason_for(served, new_token) == ""
            await still_open(new_caller, opened_with_new)


class IssuedTokens:
    """A token function: the issuer's current token, which a test switches."""

    def __init__(self, token: str) -> None:
        self.current = token

    def __call__(self) -> str:
        return self.current


async def test_a_clients_subscription_reads_on_through_the_rotation(
    served: Served, ring: KeyRing, caplog: pytest.LogCaptureFixture
) -> None:
    """The walkthrough's case, with the Python client and a token function:
    every account opened through the rotation arrives on one subscription,
    which the client keeps (reopened with the issuer's new token once the
    old key is withdrawn)."""
    caplog.set_level(logging.WARNING, logger="service.security.jwks")
    old_token = ring.token("alice", kid=None, signed_by="old")
    tokens = IssuedTokens(old_token)
    await eventually(answered(served, old_token, ""), what="the key set of the old key read")
    async with ChronicleClient.connect(served.app.address, token=tokens, retry=FAST) as client:
        seen: asyncio.Queue[str] = asyncio.Queue()

        async def subscriber() -> None:
            async for event in client.subscribe(aggregate_types=["Account"]):
                seen.put_nowait(event.envelope.aggregate_id)

        reading = asyncio.create_task(subscriber())

        async def arrives(aggregate_id: str) -> None:
            await client.submit(aggregate_id, bank.OpenAccount(owner="ann"))
            async with asyncio.timeout(20):
                while True:
                    got = asyncio.ensure_future(seen.get())
                    await asyncio.wait({got, reading}, return_when=asyncio.FIRST_COMPLETED)
                    if reading.done():
                        got.cancel()
                        reading.result()  # the subscription's error
                        raise AssertionError("the subscription ended")
                    if got.result() == aggregate_id:
                        return

        try:
            await arrives("acc-with-the-old-key")
            ring.add("new")
            publish(served, ring)
            await eventually(lambda: TWO_KEYS_WARNING in caplog.text, what="the set of two read")
            await arrives("acc-with-both-keys")
            tokens.current = ring.token("alice", kid=None, signed_by="new")
            await arrives("acc-signed-by-the-new-key")
            ring.remove("old")
            publish(served, ring)
            await eventually(answered(served, old_token, "INVALID_TOKEN"), what="the old key withdrawn")
            await arrives("acc-after-the-old-key")
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
