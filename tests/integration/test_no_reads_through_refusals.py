"""A caller that may not read an aggregate learns nothing of its state from
refusals, over a real socket: INSUFFICIENT_FUNDS without the balance,
NOT_UNIQUE without the scope, WRONG_EXPECTED_VERSION without the current
version, AGGREGATE_TYPE_MISMATCH without the type, and READ_DENIED the same
for an aggregate it may not read as for one that does not exist. Callers
that may read get every detail. Dry runs are audited like submissions."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import command_service_pb2, event_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.store.base import StoreAdapter
from service.store.encryption import new_master_key
from tests.support.grpc_client import Client, ErrorDetails, command, connect, details_of, running_server, with_jwt_auth
from tests.support.security import JwtIssuer, bearer, write

POLICY = """
[roles.teller]      # moves money and may read accounts
submit = ["bank.v1.OpenAccount", "bank.v1.Deposit", "bank.v1.Withdraw"]
read = ["Account"]

[roles.cashier]     # moves money, may not read accounts
submit = ["bank.v1.OpenAccount", "bank.v1.Deposit", "bank.v1.Withdraw"]

[roles.registrar]   # registers users, may not read them
submit = ["users.v1.RegisterUser"]

[roles.boxer]
submit = ["box.v1.CreateBox"]
read = ["Box"]

[roles.operator]
submit = ["*"]
read = ["*"]
admin = true

[principals.alice]
roles = ["teller"]
[principals.carol]
roles = ["cashier"]
[principals.reg]
roles = ["registrar"]
[principals.bob]
roles = ["boxer"]
[principals.root]
roles = ["operator"]
"""

BALANCE = 7_919


@dataclass
class Server:
    address: str
    issuer: JwtIssuer

    def as_(self, principal: str) -> AbstractAsyncContextManager[Client]:
        return connect(self.address, interceptors=bearer(self.issuer.token(principal)))


@pytest.fixture
async def server(store: StoreAdapter, tmp_path: Path) -> AsyncIterator[Server]:
    issuer = JwtIssuer()
    async with running_server(
        store,
        settings=with_jwt_auth(tmp_path, issuer, POLICY),
    ) as (app, _):
        running = Server(app.address, issuer)
        async with running.as_("alice") as alice:
            await alice.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
            await alice.submit(command("acc-1", bank.Deposit(amount=BALANCE), user_id=""))
        yield running


async def refusal(call: object) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    return details_of(raised.value)


def reveals_nothing(details: ErrorDetails, *secrets: str) -> bool:
    return not any(secret in details.message or secret in str(details.metadata) for secret in secrets)


async def test_insufficient_funds_shows_the_balance_only_to_callers_that_may_read_it(server: Server) -> None:
    too_much = command("acc-1", bank.Withdraw(amount=BALANCE + 1), user_id="")
    async with server.as_("carol") as carol:
        withheld = await refusal(carol.submit(too_much))
        retried = await refusal(carol.submit(too_much))  # the recorded refusal, replayed
        dry = await refusal(carol.commands.Submit(command_service_pb2.SubmitRequest(command=too_much, dry_run=True)))
        batch = await refusal(
            carol.commands.SubmitBatch(
                command_service_pb2.SubmitBatchRequest(
                    commands=[
                        command("acc-1", bank.Deposit(amount=1), user_id=""),
                        command("acc-1", bank.Withdraw(amount=BALANCE + 2), user_id=""),
                    ]
                )
            )
        )
        stream = carol.commands.SubmitStream()  # carol's channel sends her token
        await stream.write(command_service_pb2.SubmitRequest(command=too_much))
        await stream.done_writing()
        (streamed,) = [answer async for answer in stream]
    for details in (withheld, retried, dry):
        assert (details.code, details.reason, details.metadata) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "INSUFFICIENT_FUNDS",
            {},
        )
        assert reveals_nothing(details, str(BALANCE))
    assert (batch.reason, batch.metadata["batch_index"]) == ("INSUFFICIENT_FUNDS", "1")
    assert reveals_nothing(batch, str(BALANCE))
    assert (streamed.error.reason, dict(streamed.error.metadata)) == ("INSUFFICIENT_FUNDS", {})
    assert str(BALANCE) not in streamed.error.message
    async with server.as_("alice") as alice:
        shown = await refusal(alice.submit(command("acc-1", bank.Withdraw(amount=BALANCE + 1), user_id="")))
    assert shown.metadata == {"balance": str(BALANCE), "amount": str(BALANCE + 1)}
    assert str(BALANCE) in shown.message


async def test_not_unique_does_not_say_which_value_is_taken(server: Server) -> None:
    async with server.as_("reg") as reg:
        await reg.submit(command("user-1", users.RegisterUser(email="ann@example.com", name="Ann"), user_id=""))
        taken = await refusal(
            reg.submit(command("user-2", users.RegisterUser(email="ann@example.com", name="A"), user_id=""))
        )
    assert (taken.code, taken.reason, taken.metadata) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_UNIQUE", {})
    assert reveals_nothing(taken, "users.email")
    async with server.as_("root") as root:
        shown = await refusal(
            root.submit(command("user-3", users.RegisterUser(email="ann@example.com", name="A"), user_id=""))
        )
    assert shown.metadata == {"scope": "users.email"}


async def test_a_wrong_expected_version_does_not_say_the_current_one(server: Server) -> None:
    deposit = command("acc-1", bank.Deposit(amount=1), user_id="", expected_version=9)
    async with server.as_("carol") as carol:
        withheld = await refusal(carol.submit(deposit))
    assert (withheld.reason, withheld.metadata) == (
        "WRONG_EXPECTED_VERSION",
        {"aggregate_id": "acc-1", "expected_version": "9"},
    )
    assert reveals_nothing(withheld, "version 2")
    async with server.as_("alice") as alice:
        shown = await refusal(alice.submit(command("acc-1", bank.Deposit(amount=1), user_id="", expected_version=9)))
    assert shown.metadata["current_version"] == "2"


async def test_a_type_mismatch_does_not_say_the_type_to_callers_that_may_not_read_it(server: Server) -> None:
    async with server.as_("bob") as bob:
        await bob.submit(command("box-1", box_pb2.CreateBox(name="tools"), user_id=""))
    outcomes: dict[str, ErrorDetails] = {}
    for principal in ("carol", "alice", "root"):
        async with server.as_(principal) as caller:
            outcomes[principal] = await refusal(caller.submit(command("box-1", bank.Deposit(amount=1), user_id="")))
    for principal in ("carol", "alice"):  # alice may read accounts, not boxes
        assert outcomes[principal].reason == "AGGREGATE_TYPE_MISMATCH"
        assert "aggregate_type" not in outcomes[principal].metadata
        assert reveals_nothing(outcomes[principal], "Box")
    assert outcomes["root"].metadata["aggregate_type"] == "Box"


async def test_a_reused_command_id_says_the_first_command_only_to_callers_that_may_read_its_type(
    server: Server,
) -> None:
    """COMMAND_ID_REUSED describes the command the id was first used for (its
    aggregate, its type): the read grant of that command's aggregate type
    decides, not the one of the command sent (bob may read boxes: the
    refusal of his box command named alice's account)."""
    first = command("acc-7", bank.OpenAccount(owner="secret owner"), user_id="")
    async with server.as_("alice") as alice:
        await alice.submit(first)
    elsewhere = command("box-7", box_pb2.CreateBox(name="tools"), user_id="", command_id=first.command_id)
    same_id = command("acc-7", box_pb2.CreateBox(name="tools"), user_id="", command_id=first.command_id)
    async with server.as_("bob") as bob:
        on_another_aggregate = await refusal(bob.submit(elsewhere))
        of_another_type = await refusal(bob.submit(same_id))
        dry = await refusal(bob.commands.Submit(command_service_pb2.SubmitRequest(command=elsewhere, dry_run=True)))
    for details in (on_another_aggregate, of_another_type, dry):
        assert (details.code, details.reason) == (grpc.StatusCode.ALREADY_EXISTS, "COMMAND_ID_REUSED")
        assert "conflict" not in details.metadata
        assert reveals_nothing(details, "acc-7'", "OpenAccount", "bank.v1"), details.message
    async with server.as_("root") as root:  # may read accounts: every detail
        shown = await refusal(root.submit(elsewhere))
        shown_type = await refusal(root.submit(same_id))
    assert shown.metadata["conflict"] == "a command on aggregate 'acc-7'"
    assert shown_type.metadata["conflict"] == "a different bank.v1.OpenAccount command"


async def test_a_dry_run_to_a_forgotten_aggregate_discloses_what_a_submission_does(
    store: StoreAdapter, tmp_path: Path
) -> None:
    """A dry run to a forgotten id of another type is refused as the real
    submission is, AGGREGATE_TYPE_MISMATCH withheld from a caller that may
    not read that type (it answered AGGREGATE_FORGOTTEN, with the id, to
    anyone); to one of the aggregate's own type, AGGREGATE_FORGOTTEN both ways."""
    issuer = JwtIssuer()
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    settings = with_jwt_auth(tmp_path, issuer, POLICY)
    async with running_server(store, settings=settings, master_key_file=keys) as (app, _):
        served = Server(app.address, issuer)
        async with served.as_("root") as root:
            await root.submit(command("acc-gone", bank.OpenAccount(owner="Zed Secret"), user_id=""))
            await root.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acc-gone"), timeout=10)
        box = command("acc-gone", box_pb2.CreateBox(name="q"), user_id="")
        deposit = command("acc-gone", bank.Deposit(amount=1), user_id="")
        answers: dict[str, tuple[ErrorDetails, ErrorDetails]] = {}
        for principal, sent in (("bob", box), ("root", box), ("carol", deposit)):
            async with served.as_(principal) as caller:
                submitted = await refusal(caller.submit(sent))
                dry = await refusal(
                    caller.commands.Submit(command_service_pb2.SubmitRequest(command=sent, dry_run=True))
                )
            answers[principal] = submitted, dry
    for principal, (submitted, dry) in answers.items():
        assert (dry.code, dry.reason, dry.message, dry.metadata) == (
            submitted.code,
            submitted.reason,
            submitted.message,
            submitted.metadata,
        ), principal
    assert answers["bob"][1].reason == "AGGREGATE_TYPE_MISMATCH"
    assert reveals_nothing(answers["bob"][1], "Account", "forgotten")
    assert answers["root"][1].metadata["aggregate_type"] == "Account"  # root may read accounts
    assert answers["carol"][1].reason == "AGGREGATE_FORGOTTEN"  # its own type: the same both ways


async def read_outcome(client: Client, aggregate_id: str) -> tuple[ErrorDetails | None, ErrorDetails | list[int]]:
    """(GetAggregate's refusal or None, ReadAggregate's refusal or versions)."""
    try:
        await client.events.GetAggregate(event_service_pb2.GetAggregateRequest(aggregate_id=aggregate_id))
        got = None
    except grpc.aio.AioRpcError as error:
        got = details_of(error)
    try:
        request = event_service_pb2.ReadAggregateRequest(aggregate_id=aggregate_id)
        read: ErrorDetails | list[int] = [e.version async for e in client.events.ReadAggregate(request)]
    except grpc.aio.AioRpcError as error:
        read = details_of(error)
    return got, read


async def test_read_denied_is_the_same_for_an_unreadable_aggregate_and_one_that_does_not_exist(server: Server) -> None:
    def unnamed(details: ErrorDetails | list[int] | None, aggregate_id: str) -> object:
        assert isinstance(details, ErrorDetails)
        metadata = {key: value.replace(aggregate_id, "ID") for key, value in details.metadata.items()}
        return details.code, details.reason, details.message.replace(aggregate_id, "ID"), metadata

    async with server.as_("bob") as bob:  # may read boxes only
        exists = await read_outcome(bob, "acc-1")
        missing = await read_outcome(bob, "acc-404")
    for answer_to_existing, answer_to_missing in zip(exists, missing, strict=True):
        assert unnamed(answer_to_existing, "acc-1") == unnamed(answer_to_missing, "acc-404")
        assert isinstance(answer_to_missing, ErrorDetails)
        assert (answer_to_missing.code, answer_to_missing.reason) == (grpc.StatusCode.PERMISSION_DENIED, "READ_DENIED")
        assert reveals_nothing(answer_to_missing, "Account", "Box")
    async with server.as_("root") as root:  # may read every type: nothing to hide
        got, read = await read_outcome(root, "acc-404")
    assert got is not None and got.reason == "AGGREGATE_NOT_FOUND"
    assert read == []
    async with server.as_("alice") as alice:
        assert (await read_outcome(alice, "acc-1"))[1] == [1, 2]


async def test_dry_runs_are_audited_like_submissions(server: Server) -> None:
    async with server.as_("carol") as carol:
        for amount in (BALANCE + 1, BALANCE):  # is the balance at least ...?
            request = command_service_pb2.SubmitRequest(
                command=command("acc-1", bank.Withdraw(amount=amount), user_id=""), dry_run=True
            )
            with contextlib.suppress(grpc.aio.AioRpcError):
                await carol.commands.Submit(request)
    async with server.as_("root") as root:
        audit = await root.admin.QueryAudit(admin.QueryAuditRequest(principal="carol"))
    accepted, refused = audit.entries
    assert [(e.dry_run, e.command_type, e.user_id) for e in audit.entries] == [
        (True, "bank.v1.Withdraw", "carol"),
        (True, "bank.v1.Withdraw", "carol"),
    ]
    assert (accepted.outcome, refused.outcome, refused.reason) == (
        admin.AUDIT_OUTCOME_ACCEPTED,
        admin.AUDIT_OUTCOME_REFUSED,
        "INSUFFICIENT_FUNDS",
    )
    assert str(BALANCE) in refused.message  # the audit keeps every detail, for administrators
    assert accepted.peer.startswith("ipv") and accepted.peer == refused.peer
