"""A refusal quotes what the caller sent cut to a bounded length, and the
audit stores a bounded message (docs/security.md, "What is audited"). A
3 MB type URL from a caller without any submit grant used to come back
quoted whole: a status too large for standard clients (they saw
RESOURCE_EXHAUSTED) and a 3 MB row in the refusals table, per call."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2

from chronicle.v1 import command_pb2
from chronicle.v1 import command_service_pb2 as commands
from service.errors import MAX_MESSAGE, MAX_QUOTED, InvalidInput, bounded, quoted
from service.store.base import AuditQuery, StoreAdapter
from service.store.memory import MemoryStore
from service.store.records import REFUSED
from service.store.sqlite import SqliteStore
from tests.support.grpc_client import connect, details_of, running_server
from tests.support.security import POLICY, api_key_file, bearer, write

NOBODY_KEY = "chr_nobody-test-key-0123456789abcdef0123456789"  # a principal the policy grants nothing
HUGE_TYPE = "type.googleapis.com/" + "A" * 3_000_000


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreAdapter:
    return MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "events.db")


async def test_a_3_mb_type_url_is_refused_unknown_quoted_short_and_stored_small(
    store: StoreAdapter, tmp_path: Path
) -> None:
    settings = {
        "auth": True,
        "policy_file": write(tmp_path / "policy.toml", POLICY),
        "api_keys_file": api_key_file(tmp_path / "keys.toml", [(NOBODY_KEY, "nobody", [])]),
    }
    command = command_pb2.Command(
        command_id=str(uuid.uuid4()), aggregate_id="acc-1", payload=any_pb2.Any(type_url=HUGE_TYPE)
    )
    async with (
        running_server(store, **settings) as (app, _),  # type: ignore[arg-type]
        connect(app.address, interceptors=bearer(NOBODY_KEY)) as client,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.commands.Submit(commands.SubmitRequest(command=command))
        details = details_of(raised.value)
        audited = [entry for entry in await store.read_audit(AuditQuery()) if entry.outcome == REFUSED]
    # Not RESOURCE_EXHAUSTED: the status fits what clients accept.
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_COMMAND_TYPE")
    assert details.message.startswith("no handler is registered for command type 'AAAA")
    assert "(3000000 characters)" in details.message and len(details.message) < 400
    assert details.metadata["command_type"] == "A" * MAX_QUOTED
    assert details.field_violations == ["command.payload.type_url"]
    (entry,) = audited
    assert (entry.principal, entry.reason) == ("nobody", "UNKNOWN_COMMAND_TYPE")
    assert len(entry.message) < 400 and len(entry.command_type) == MAX_QUOTED


def test_quoting_cuts_a_value_and_says_how_long_it_was() -> None:
    assert quoted("acc-1") == "'acc-1'"
    assert quoted("a" * MAX_QUOTED) == repr("a" * MAX_QUOTED)  # a valid identifier whole
    assert quoted("a\x00" * 200) == repr("a\x00" * 100) + "… (400 characters)"
    assert bounded("b" * (MAX_MESSAGE + 5)) == "b" * MAX_MESSAGE + "… (5 more characters)"


def test_every_error_bounds_its_message_metadata_and_violations_whoever_raised_it() -> None:
    """The net under every site: a plugin's own error quoting its input whole included."""
    error = InvalidInput("x" * 10**6, reason="R", metadata={"k": "y" * 10**6})
    assert len(error.message) < MAX_MESSAGE + 40 and len(error.metadata["k"]) < MAX_MESSAGE + 40
    violation = InvalidInput.for_field("f" * 10**6, "d" * 10**6, reason="R").violations[0]
    assert len(violation.field) < MAX_QUOTED + 40 and len(violation.description) < MAX_MESSAGE + 40
