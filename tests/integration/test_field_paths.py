"""Every FieldViolation.field a client gets is a path in its own request:
a plugin names a field of its command's payload message as it knows it
("amount"), and the server sends it as "command.payload.amount" (Submit, a
command stream's CommandError) or "commands[1].payload.amount" (the command
of a batch at fault), as its own refusals are ("command.payload.value",
"commands[1].aggregate_id"). Over a real socket, with a plain client."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2

from chronicle.v1 import command_pb2
from chronicle.v1 import command_service_pb2 as cs
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.memory import MemoryStore
from tests.support.grpc_client import Client, ErrorDetails, command, connect, details_of, running_server, with_jwt_auth
from tests.support.security import JwtIssuer, bearer

# A TransferMoney with two fields at fault: the plugin names both.
MALFORMED_TRANSFER = bank.TransferMoney(target_account_id="acc-2", amount=-5)
TRANSFER_VIOLATIONS = ["source_account_id", "amount"]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with running_server(MemoryStore()) as (_, connected):
        await connected.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        yield connected


async def refusal(call: object) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    return details_of(raised.value)


def submit(client: Client, built: command_pb2.Command, *, dry_run: bool = False) -> object:
    return client.commands.Submit(cs.SubmitRequest(command=built, dry_run=dry_run), timeout=30)


async def test_submit_names_a_plugins_field_by_its_path_in_the_request(client: Client) -> None:
    sent = command("acc-1", bank.Deposit(amount=-1))
    for dry_run in (True, False, False):  # a dry run, the command, and its retry (the recorded refusal)
        refused = await refusal(submit(client, sent, dry_run=dry_run))
        assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT")
        assert refused.field_violations == ["command.payload.amount"]
        # The ErrorInfo keeps the plugin's own name of the field.
        assert refused.metadata["field"] == "amount"
    transfer = command("t-1", MALFORMED_TRANSFER)
    for _ in range(2):
        refused = await refusal(submit(client, transfer))
        assert refused.field_violations == [f"command.payload.{f}" for f in TRANSFER_VIOLATIONS]


async def test_the_servers_own_field_paths_are_unchanged(client: Client) -> None:
    unparsable = command("acc-1", bank.Deposit(amount=1))
    unparsable.payload.value = b"\x0a\xff"
    refused = await refusal(submit(client, unparsable))
    assert (refused.reason, refused.field_violations) == ("MALFORMED_PAYLOAD", ["command.payload.value"])
    unknown = command("acc-1", bank.Deposit(amount=1))
    unknown.payload.type_url = "type.googleapis.com/bank.v1.NoSuchCommand"
    batch = cs.SubmitBatchRequest(commands=[command("acc-1", bank.Deposit(amount=1)), unknown])
    refused = await refusal(client.commands.SubmitBatch(batch, timeout=30))
    assert (refused.reason, refused.field_violations) == ("UNKNOWN_COMMAND_TYPE", ["commands[1].payload.type_url"])


async def test_a_batch_names_the_field_of_the_command_at_fault(client: Client) -> None:
    commands = [
        command("acc-1", bank.Deposit(amount=5)),
        command("acc-1", bank.Deposit(amount=7)),
        command("acc-1", bank.Deposit(amount=-1)),
    ]
    for dry_run in (True, False, False):
        request = cs.SubmitBatchRequest(commands=commands, dry_run=dry_run)
        refused = await refusal(client.commands.SubmitBatch(request, timeout=30))
        assert (refused.reason, refused.metadata["batch_index"]) == ("INVALID_AMOUNT", "2")
        assert refused.field_violations == ["commands[2].payload.amount"]
    # A batch of one names its command as any batch does.
    alone = cs.SubmitBatchRequest(commands=[command("t-2", MALFORMED_TRANSFER)])
    refused = await refusal(client.commands.SubmitBatch(alone, timeout=30))
    assert refused.field_violations == [f"commands[0].payload.{f}" for f in TRANSFER_VIOLATIONS]


def violations_of(result: cs.SubmitStreamResponse) -> list[str]:
    assert result.WhichOneof("result") == "error", result
    return [v.field for v in result.error.field_violations]


async def test_command_streams_name_the_field_in_each_commands_error(client: Client) -> None:
    requests = [
        cs.SubmitRequest(command=command("acc-1", bank.Deposit(amount=-1))),
        cs.SubmitRequest(command=command("t-3", MALFORMED_TRANSFER), dry_run=True),
        cs.SubmitRequest(command=command("acc-1", bank.Deposit(amount=2))),
    ]
    answers = [a async for a in client.commands.SubmitStream(iter(requests), timeout=30)]
    pages = [p async for p in client.commands.SubmitStreamPages(iter([cs.SubmitPage(requests=requests)]), timeout=30)]
    paged = [result for page in pages for result in page.results]
    for results in (answers, paged):
        assert violations_of(results[0]) == ["command.payload.amount"]
        assert results[0].error.metadata["field"] == "amount"
        assert violations_of(results[1]) == [f"command.payload.{f}" for f in TRANSFER_VIOLATIONS]
        assert results[2].WhichOneof("result") == "ok"


async def test_a_refusal_whose_details_are_withheld_still_names_the_field_by_its_path(tmp_path: Path) -> None:
    # "gateway" may submit Deposit but not read accounts: its refusals of a
    # domain rule come with their code and reason only, and the field.
    issuer = JwtIssuer()
    async with (
        running_server(MemoryStore(), settings=with_jwt_auth(tmp_path, issuer)) as (app, _),
        connect(app.address, interceptors=bearer(issuer.token("gateway"))) as gateway,
    ):
        await gateway.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
        refused = await refusal(submit(gateway, command("acc-1", bank.Deposit(amount=-1), user_id="")))
    assert refused.reason == "INVALID_AMOUNT"
    assert "details are given to callers that may read" in refused.message
    assert refused.field_violations == ["command.payload.amount"]


async def test_a_payload_packed_under_any_type_url_prefix_gets_the_same_paths(client: Client) -> None:
    payload = any_pb2.Any(
        type_url="example.com/types/bank.v1.Deposit", value=bank.Deposit(amount=-3).SerializeToString()
    )
    built = command("acc-1", bank.Deposit(amount=1), command_id=str(uuid.uuid4()))
    built.payload.CopyFrom(payload)
    refused = await refusal(submit(client, built))
    assert refused.field_violations == ["command.payload.amount"]
