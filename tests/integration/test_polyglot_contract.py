"""What docs/clients.md ("Anything else") tells a team that calls Chronicle
from another language with only the .proto files, checked over a real
socket with plain generated stubs: command id forms, type URLs, unknown
fields, ErrorInfo's domain, identifier rules."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chronicle.v1 import command_pb2
from chronicle.v1 import command_service_pb2 as cs
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.memory import MemoryStore
from tests.support.grpc_client import Client, ErrorDetails, command, details_of, running_server


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with running_server(MemoryStore()) as (_, connected):
        await connected.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        yield connected


async def refusal(client: Client, built: command_pb2.Command) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.submit(built)
    return details_of(raised.value)


def deposit(amount: int, *, command_id: str, type_url: str | None = None, extra: bytes = b"") -> command_pb2.Command:
    built = command("acc-1", bank.Deposit(amount=amount), command_id=command_id)
    if type_url is not None:
        built.payload.type_url = type_url
    built.payload.value += extra
    return built


async def test_every_rfc_4122_form_of_a_command_id_is_one_id(client: Client) -> None:
    canonical = str(uuid.uuid4())
    forms = [canonical, canonical.upper(), "{" + canonical + "}", canonical.replace("-", ""), "urn:uuid:" + canonical]
    first = await client.submit(deposit(10, command_id=forms[0]))
    assert not first.replayed
    for form in forms[1:]:
        again = await client.submit(deposit(10, command_id=form))
        assert (again.replayed, again.version) == (True, first.version)
    (event,) = first.events
    assert event.command_id == event.correlation_id == event.causation_id == canonical
    # COMMAND_ID_REUSED names the id in its canonical form too.
    reused = await refusal(client, deposit(11, command_id=canonical.upper()))
    assert (reused.reason, reused.metadata["command_id"]) == ("COMMAND_ID_REUSED", canonical)
    # A command stream echoes each id as it was sent, so a client finds its own.
    requests = [cs.SubmitRequest(command=deposit(10, command_id=form)) for form in forms]
    answers = [a async for a in client.commands.SubmitStream(iter(requests), timeout=30)]
    assert [a.command_id for a in answers] == forms
    assert all(a.ok.replayed for a in answers)
    assert [e.command_id for a in answers for e in a.ok.events] == [canonical] * len(forms)


async def test_the_type_url_prefix_is_ignored_for_the_type_and_for_idempotency(client: Client) -> None:
    command_id = str(uuid.uuid4())
    urls = ["type.googleapis.com/bank.v1.Deposit", "bank.v1.Deposit", "example.com/types/bank.v1.Deposit"]
    first = await client.submit(deposit(5, command_id=command_id, type_url=urls[0]))
    for url in urls[1:]:
        assert (await client.submit(deposit(5, command_id=command_id, type_url=url))).replayed
    fresh = await client.submit(deposit(5, command_id=str(uuid.uuid4()), type_url=urls[2]))
    assert (fresh.replayed, fresh.version) == (False, first.version + 1)
    assert fresh.events[0].payload.type_url == "type.googleapis.com/bank.v1.MoneyDeposited"


async def test_unknown_fields_of_a_payload_count_for_idempotency(client: Client) -> None:
    command_id = str(uuid.uuid4())
    unknown_field = b"\x98\x06\x01"  # field 99, varint 1: in no bank.v1.Deposit this server knows
    with_it = await client.submit(deposit(5, command_id=command_id, extra=unknown_field))
    assert (await client.submit(deposit(5, command_id=command_id, extra=unknown_field))).replayed
    assert not with_it.replayed
    # The same id from a client built without the field: another command.
    reused = await refusal(client, deposit(5, command_id=command_id))
    assert reused.reason == "COMMAND_ID_REUSED"


async def test_every_error_says_its_domain_is_chronicle(client: Client) -> None:
    failures = [
        client.submit(deposit(-1, command_id=str(uuid.uuid4()))),  # a plugin's rule
        client.submit(deposit(1, command_id="not-a-uuid")),  # the server's own check
        client.submit(command("acc-9", bank.Deposit(amount=1))),  # a missing aggregate
    ]
    for failure in failures:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await failure
        status = rpc_status.from_call(raised.value)
        assert status is not None
        (packed,) = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
        info = error_details_pb2.ErrorInfo()
        assert packed.Unpack(info)
        assert (info.domain, bool(info.reason)) == ("chronicle", True)


# What str.isprintable refuses (service/values.py, id_problem): Unicode's
# "Other" (Cc, Cf, Cs, Co, Cn) and "Separator" (Zs, Zl, Zp) categories, ASCII
# space apart.
REFUSED_IN_IDS = {
    "tab": "\t",
    "DEL": "\x7f",
    "NEL": "\x85",
    "no-break space": "\xa0",
    "soft hyphen": "\xad",
    "zero-width space": "\u200b",
    "line separator": "\u2028",
    "right-to-left override": "\u202e",
    "ideographic space": "\u3000",
    "private use": "\ue000",
    "byte order mark": "\ufeff",
}


@pytest.mark.parametrize("name", sorted(REFUSED_IN_IDS))
async def test_an_aggregate_id_with_a_control_format_or_separator_character_is_refused(
    client: Client, name: str
) -> None:
    refused = await refusal(client, command(f"acc{REFUSED_IN_IDS[name]}2", bank.OpenAccount(owner="x")))
    assert (refused.reason, refused.field_violations) == ("INVALID_AGGREGATE_ID", ["command.aggregate_id"])


async def test_lengths_are_counted_in_code_points_and_ids_are_not_normalised(client: Client) -> None:
    emoji = "\U0001f600"  # one code point, four bytes in UTF-8, two UTF-16 units
    assert (await client.submit(command(emoji * 200, bank.OpenAccount(owner="x")))).version == 1
    refused = await refusal(client, command(emoji * 201, bank.OpenAccount(owner="x")))
    assert refused.reason == "INVALID_AGGREGATE_ID"
    assert (await client.submit(command("caf\u00e9", bank.OpenAccount(owner="nfc")))).version == 1
    # The same word decomposed (NFD) is another aggregate: not yet opened.
    refused = await refusal(client, command("cafe\u0301", bank.Deposit(amount=1)))
    assert refused.reason == "ACCOUNT_NOT_FOUND"
