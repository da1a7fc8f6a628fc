"""The API-key file, the JWT key and the policy read again while the server
runs (--auth-reload-seconds): a key revoked, a signing key rotated or a
grant taken away holds for the next call, without a restart; a broken file
is logged and the one before stays in use."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2
from tests.support.grpc_client import command, connect, details_of
from tests.support.jwks import KeyRing
from tests.support.reloading import Served, reloading_server
from tests.support.security import POLICY, JwtIssuer, api_key_file, bearer, write
from tests.support.waiting import eventually

ALICE_KEY = "chr_alice-reload-test-key-0123456789abcdef0123456789"
ALICE_NEW_KEY = "chr_alice-reload-test-key-new-3456789abcdef0123456789"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with reloading_server(tmp_path, keys=[(ALICE_KEY, "alice", [])], policy=POLICY) as server:
        yield server


async def reason_for(served: Served, token: str, aggregate_id: str = "acc-1") -> str:
    """What a deposit with ``token`` gets: "" if accepted, else its reason."""
    async with connect(served.app.address, interceptors=bearer(token)) as caller:
        try:
            await caller.submit(command(aggregate_id, bank.OpenAccount(owner="ann"), user_id=""))
        except grpc.aio.AioRpcError as refused:
            reason = details_of(refused).reason
            return "ALREADY_EXISTS" if reason == "ACCOUNT_ALREADY_OPEN" else reason
    return ""


async def test_a_revoked_api_key_is_refused_and_a_new_one_admitted(served: Served) -> None:
    assert await reason_for(served, ALICE_KEY, "acc-1") == ""
    assert await reason_for(served, ALICE_NEW_KEY, "acc-2") == "UNKNOWN_API_KEY"
    api_key_file(served.keys, [(ALICE_NEW_KEY, "alice", [])])  # the old key leaked: replaced

    async def revoked() -> bool:
        return await reason_for(served, ALICE_KEY, "acc-3") == "UNKNOWN_API_KEY"

    await eventually(revoked, what="the old key refused")
    assert await reason_for(served, ALICE_NEW_KEY, "acc-4") == ""


async def test_a_grant_taken_away_is_denied(served: Served) -> None:
    assert await reason_for(served, ALICE_KEY, "acc-1") == ""
    write(served.policy, POLICY.replace('[principals."alice"]\nroles = ["teller"]', '[principals."alice"]\nroles = []'))

    async def denied() -> bool:
        return await reason_for(served, ALICE_KEY, "acc-2") == "SUBMIT_DENIED"

    await eventually(denied, what="the grant gone")


async def test_a_rotated_jwt_key_refuses_tokens_of_the_old_one_even_those_verified_before(served: Served) -> None:
    old_token = served.issuer.token("alice")
    assert await reason_for(served, old_token, "acc-1") == ""  # verified, and remembered until its exp
    rotated = JwtIssuer()
    write(served.jwt_key, rotated.public_key)

    async def rotated_out() -> bool:
        return await reason_for(served, old_token, "acc-2") == "INVALID_TOKEN"

    await eventually(rotated_out, what="the old key's token refused")
    assert await reason_for(served, rotated.token("alice"), "acc-3") == ""


async def test_a_json_web_key_set_rotates_without_refusing_the_old_kid_until_it_is_removed(served: Served) -> None:
    ring = KeyRing()
    ring.add("2026-11")
    write(served.jwt_key, json.dumps(ring.jwks()))
    old_token = ring.token("alice", kid="2026-11")

    async def old_accepted() -> bool:
        return await reason_for(served, old_token, f"acc-{uuid.uuid4()}") == ""

    await eventually(old_accepted, what="the key set read")
    ring.add("2026-12")  # published beside the old one: tokens of both verify
    write(served.jwt_key, json.dumps(ring.jwks()))
    new_token = ring.token("alice", kid="2026-12")

    async def new_accepted() -> bool:
        return await reason_for(served, new_token, f"acc-{uuid.uuid4()}") == ""

    await eventually(new_accepted, what="the new key's token accepted")
    assert await reason_for(served, old_token, f"acc-{uuid.uuid4()}") == ""
    ring.remove("2026-11")
    write(served.jwt_key, json.dumps(ring.jwks()))

    async def old_refused() -> bool:
        return await reason_for(served, old_token, f"acc-{uuid.uuid4()}") == "UNKNOWN_SIGNING_KEY"

    await eventually(old_refused, what="the removed key's token refused")
    assert await reason_for(served, new_token, f"acc-{uuid.uuid4()}") == ""


async def test_a_broken_file_keeps_the_one_before_until_it_is_fixed(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="service.security.reloading")
    write(served.keys, "[[keys]\nthis is not TOML")
    await eventually(lambda: "cannot be used" in caplog.text, what="the broken file reported")
    assert await reason_for(served, ALICE_KEY, "acc-1") == ""  # still the keys read before
    assert caplog.text.count("cannot be used") == 1  # once, not every look
    api_key_file(served.keys, [(ALICE_NEW_KEY, "alice", [])])

    async def fixed() -> bool:
        return await reason_for(served, ALICE_KEY, "acc-2") == "UNKNOWN_API_KEY"

    await eventually(fixed, what="the fixed file read")
    assert await reason_for(served, ALICE_NEW_KEY, "acc-3") == ""


async def test_a_reload_that_would_leave_a_keys_role_undefined_is_refused_and_the_files_before_stay(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """A key whose role the policy does not define is BAD_POLICY at start-up;
    so is a reload that would make one: of the keys (a misspelt role) or of
    the policy (a role the keys hold taken out). What was in force stays."""
    caplog.set_level(logging.ERROR, logger="service.security.reloading")
    api_key_file(served.keys, [(ALICE_NEW_KEY, "alice", ["tennant"])])
    await eventually(lambda: "'tennant'" in caplog.text and "BAD_POLICY" in caplog.text, what="the keys refused")
    assert await reason_for(served, ALICE_KEY, "acc-1") == ""  # still the keys read before
    assert await reason_for(served, ALICE_NEW_KEY, "acc-2") == "UNKNOWN_API_KEY"
    caplog.clear()
    api_key_file(served.keys, [(ALICE_KEY, "alice", ["boxer"])])  # a role the policy defines: read

    async def boxes(box_id: str) -> bool:
        async with connect(served.app.address, interceptors=bearer(ALICE_KEY)) as alice:
            try:
                await alice.submit(command(box_id, box_pb2.CreateBox(name="tools"), user_id=""))
            except grpc.aio.AioRpcError:
                return False
        return True

    await eventually(lambda: boxes(f"box-{uuid.uuid4()}"), what="the key's boxer role in force")
    write(served.policy, POLICY.replace("[roles.boxer]", "[roles.boxer_renamed]"))
    await eventually(lambda: "'boxer'" in caplog.text and "BAD_POLICY" in caplog.text, what="the policy refused")
    assert await boxes("box-after")  # the policy before, boxer and all, is in force
