"""The CLI and the audit log on what an operator does about failures: a
reaction's parked commands listed (their commands unpacked with the
server's types), replayed (a replay refused again is a refusal) and
dismissed, each audited with the reaction, the command and the outcome; and
``chronicle projection rebuild`` of a projection that parks an event its
handler keeps failing on. Real servers over real sockets; the CLI as a
process where what it knows of the plugins' types matters."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin_pb
from chronicle.v1 import projection_service_pb2 as projection_pb
from chronicle.v1 import reaction_service_pb2 as reaction_pb
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service import cli as cli_module
from service.app import Application
from service.errors import StoreUnavailable
from service.plugins import Plugin
from service.plugins.projections import Documents, ProjectedEvent
from service.plugins.registry import Registry
from service.store.base import StoreAdapter
from service.store.leasing import Fencing
from service.store.memory import MemoryStore
from service.store.records import DocumentWrite, NewEvent, ParkedEvent
from service.store.sqlite import SqliteStore
from tests.support import plugins
from tests.support.grpc_client import Client, command, running_server
from tests.support.processes import cli
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow  # CLI processes

TRANSFERS = "bank.transfers"
RELAY = "gates.relay"
REPLAY = "chronicle.v1.ReactionService/ReplayParkedCommand"
DISMISS = "chronicle.v1.ReactionService/DismissParkedCommand"

# A projection that parks: a deposit of 13 fails every time, and is parked
# after three tries 0.4 s apart (so for about 0.8 s it reports the error).
parking = Plugin("parking")
picky = parking.projection(
    "parking.deposits", aggregate_types=["Account"], on_failure="park", max_attempts=3, retry_seconds=0.4
)


@picky.on(bank.MoneyDeposited)
def _add(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    if event.amount == 13:
        raise ValueError("13 is unlucky")
    total = documents.get("total", bank.AccountBalance) or bank.AccountBalance()
    total.balance += event.amount
    documents.put("total", total)


REGISTRY = Registry([bank_account.plugin, plugins.gates, parking])


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Application, Client]]:
    store = SqliteStore(tmp_path / "events.db")
    await store.open()
    try:
        async with running_server(store, registry=REGISTRY, anonymous_admin=True, poll_seconds=0.05) as running:
            yield running
    finally:
        await store.close()


async def chronicle(app: Application, *args: str) -> subprocess.CompletedProcess[str]:
    """``chronicle ARGS`` as a process of its own: it knows no plugin's
    types but those the server tells it of."""
    return await asyncio.to_thread(cli, *args, server=app.address, check=False)


async def parked(client: Client, reaction: str) -> list[reaction_pb.ParkedCommand]:
    listed = await client.reactions.ListParkedCommands(reaction_pb.ListParkedCommandsRequest(reaction=reaction))
    return list(listed.commands)


async def wait_parked(client: Client, reaction: str, count: int) -> list[reaction_pb.ParkedCommand]:
    async def there() -> bool:
        return len(await parked(client, reaction)) == count

    await eventually(there, what=f"{count} commands parked by {reaction}")
    return await parked(client, reaction)


async def a_parked_fail_transfer(app: Application, client: Client) -> reaction_pb.ParkedCommand:
    """The transfers reaction parks a FailTransfer: the transfer's history
    says it was requested and failed already (written to the store as one
    append: no client may send FailTransfer, only the reaction), so when the
    debit is refused (acc-1 holds nothing) the reaction's FailTransfer is
    refused (TRANSFER_OVER) and nothing compensates it."""
    await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    await client.submit(command("acc-2", bank.OpenAccount(owner="bob")))
    transfer = bank.TransferMoney(source_account_id="acc-1", target_account_id="acc-2", amount=15)
    requested = bank.TransferRequested(
        source_account_id=transfer.source_account_id, target_account_id=transfer.target_account_id, amount=15
    )
    now_us = time.time_ns() // 1000
    history = [
        NewEvent(str(uuid.uuid4()), "Transfer", type(m).DESCRIPTOR.full_name, 1, m.SerializeToString(), now_us)
        for m in (requested, bank.TransferFailed(reason="called off"))
    ]
    await app.store.events.append("t-1", history, 0)
    (fail,) = await wait_parked(client, TRANSFERS, 1)
    assert (fail.aggregate_id, fail.reason) == ("t-1", "TRANSFER_OVER")
    return fail


async def a_parked_relay(client: Client, name: str) -> reaction_pb.ParkedCommand:
    """The relay parks a RenameBox for the gate "gated" while it is shut."""
    before = {p.command_id for p in await parked(client, RELAY)}
    await client.submit(command("source", box.ArchiveBox()))  # "source" lets names through
    await client.submit(command("source", box.RenameBox(name=name)))
    await wait_parked(client, RELAY, len(before) + 1)
    (new,) = [p for p in await parked(client, RELAY) if p.command_id not in before]
    return new


async def audit(client: Client, aggregate_id: str) -> list[admin_pb.AuditEntry]:
    """The audit's entries for ``aggregate_id``, oldest first."""
    found = await client.admin.QueryAudit(admin_pb.QueryAuditRequest(aggregate_id=aggregate_id))
    return list(reversed(found.entries))


# -- parked commands on the command line --------------------------------------------------


async def test_chronicle_reaction_parked_prints_the_commands_unpacked_with_the_server_s_types(
    server: tuple[Application, Client],
) -> None:
    app, client = server
    fail = await a_parked_fail_transfer(app, client)
    relayed = await a_parked_relay(client, "ann")
    transfers = await chronicle(app, "reaction", TRANSFERS, "--parked")
    relay = await chronicle(app, "reaction", RELAY, "--parked")
    assert (transfers.returncode, transfers.stderr) == (0, "")
    assert (relay.returncode, relay.stderr) == (0, "")
    (shown,) = [json.loads(line) for line in transfers.stdout.splitlines()]
    assert shown["command"] == {"@type": "bank.v1.FailTransfer", "reason": "INSUFFICIENT_FUNDS"}
    assert (shown["command_id"], shown["aggregate_id"], shown["reason"]) == (fail.command_id, "t-1", "TRANSFER_OVER")
    assert (shown["event_id"], shown["replays"]) == (fail.event_id, 0)
    (shown,) = [json.loads(line) for line in relay.stdout.splitlines()]
    assert shown["command"] == {"@type": "box.v1.RenameBox", "name": "ann"}
    assert (shown["command_id"], shown["reason"], shown["command_metadata"]["relayed"]) == (
        relayed.command_id,
        "GATE_SHUT",
        "yes",
    )


async def test_a_replay_refused_again_exits_one_saying_the_refusal_and_one_accepted_exits_zero(
    server: tuple[Application, Client],
) -> None:
    app, client = server
    fail = await a_parked_fail_transfer(app, client)
    refused = await chronicle(app, "reaction", TRANSFERS, "--replay", fail.command_id)
    answer = json.loads(refused.stdout)
    assert (refused.returncode, answer["accepted"], answer["reason"]) == (1, False, "TRANSFER_OVER")
    (first, *rest) = refused.stderr.splitlines()
    assert first.startswith("error: TRANSFER_OVER: ") and "is over" in first, refused.stderr
    assert [json.loads(line) for line in rest] == [
        {"reaction": TRANSFERS, "command_id": fail.command_id, "replayed_as": answer["command_id"]}
    ]
    (still,) = await parked(client, TRANSFERS)
    assert (still.command_id, still.replays) == (fail.command_id, 1)

    relayed = await a_parked_relay(client, "ann")
    await client.submit(command("gated", box.ArchiveBox()))  # the gate opens
    accepted = await chronicle(app, "reaction", RELAY, "--replay", relayed.command_id)
    assert (accepted.returncode, accepted.stderr, json.loads(accepted.stdout)["accepted"]) == (0, "", True)
    dismissed = await chronicle(app, "reaction", TRANSFERS, "--dismiss", fail.command_id)
    assert (dismissed.returncode, json.loads(dismissed.stdout)) == (
        0,
        {"reaction": TRANSFERS, "dismissed": fail.command_id},
    )


# -- the audit of replays and dismissals --------------------------------------------------


async def test_replays_and_dismissals_are_audited_with_the_reaction_the_command_and_the_outcome(
    server: tuple[Application, Client],
) -> None:
    app, client = server
    one = await a_parked_relay(client, "ann")
    two = await a_parked_relay(client, "bob")
    replay = reaction_pb.ReplayParkedCommandRequest(reaction=RELAY, command_id=one.command_id)
    again = await client.reactions.ReplayParkedCommand(replay)  # the gate still shut
    assert (again.accepted, again.reason) == (False, "GATE_SHUT")
    await client.submit(command("gated", box.ArchiveBox()))
    through = await client.reactions.ReplayParkedCommand(replay)
    assert through.accepted
    await client.reactions.DismissParkedCommand(
        reaction_pb.DismissParkedCommandRequest(reaction=RELAY, command_id=two.command_id)
    )
    unknown = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(grpc.aio.AioRpcError):  # not parked (any more): refused, and audited as such
        await client.reactions.DismissParkedCommand(
            reaction_pb.DismissParkedCommandRequest(reaction=RELAY, command_id=unknown)
        )

    entries = await audit(client, f"reaction:{RELAY}")
    shown = [(e.command_type, admin_pb.AuditOutcome.Name(e.outcome), e.reason, e.message) for e in entries]
    assert shown == [
        (
            REPLAY,
            "AUDIT_OUTCOME_ACCEPTED",  # done: the command was sent again
            "",
            f"parked command {one.command_id} replayed as {again.command_id}: refused again: GATE_SHUT",
        ),
        (
            REPLAY,
            "AUDIT_OUTCOME_ACCEPTED",
            "",
            f"parked command {one.command_id} replayed as {through.command_id}: accepted",
        ),
        (DISMISS, "AUDIT_OUTCOME_ACCEPTED", "", f"parked command {two.command_id} dismissed"),
        (
            DISMISS,
            "AUDIT_OUTCOME_REFUSED",
            "PARKED_COMMAND_NOT_FOUND",
            f"reaction {RELAY} has no parked command {unknown}",
        ),
    ]
    # What the replays sent has records of its own, under the ids the
    # administrator's entries name: the refusal with its message.
    records = [
        (await client.admin.QueryAudit(admin_pb.QueryAuditRequest(command_id=sent))).entries
        for sent in (again.command_id, through.command_id)
    ]
    assert [
        [(e.aggregate_id, admin_pb.AuditOutcome.Name(e.outcome), e.reason, e.message) for e in r] for r in records
    ] == [
        [("gated", "AUDIT_OUTCOME_REFUSED", "GATE_SHUT", "gate gated is shut")],
        [("gated", "AUDIT_OUTCOME_ACCEPTED", "", "")],
    ]
    # `chronicle audit` finds them by the reaction.
    listed = await chronicle(app, "audit", "--aggregate", f"reaction:{RELAY}")
    assert [json.loads(line)["message"] for line in listed.stdout.splitlines()] == [e[3] for e in reversed(shown)]


async def test_a_refused_replay_or_dismissal_is_audited_under_the_reaction(
    server: tuple[Application, Client],
) -> None:
    app, client = server
    denied = await chronicle(app, "reaction", "no.such", "--dismiss", "c-1")
    assert "NOT_FOUND REACTION_NOT_FOUND" in denied.stderr
    (entry,) = await audit(client, "reaction:no.such")
    assert (entry.command_type, entry.outcome, entry.reason) == (
        DISMISS,
        admin_pb.AUDIT_OUTCOME_REFUSED,
        "REACTION_NOT_FOUND",
    )


# -- rebuilding a projection that parks ---------------------------------------------------


async def projection(client: Client, name: str) -> projection_pb.GetProjectionResponse:
    status: projection_pb.GetProjectionResponse = await client.projections.GetProjection(
        projection_pb.GetProjectionRequest(name=name)
    )
    return status


def run_cli(args: Sequence[str]) -> int:
    return cli_module.main(list(args))


async def test_a_rebuild_of_a_projection_that_parks_a_failing_event_waits_for_it_to_park_and_succeeds(
    server: tuple[Application, Client], capsys: pytest.CaptureFixture[str]
) -> None:
    app, client = server
    await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    for amount in (5, 13, 7):
        await client.submit(command("acc-1", bank.Deposit(amount=amount)))

    async def parked_once() -> bool:
        status = await projection(client, "parking.deposits")
        return status.position == status.log_head and status.parked_events == 1

    await eventually(parked_once, what="the deposit of 13 parked")
    assert (await projection(client, "parking.deposits")).retry_interval.ToMilliseconds() == 400
    capsys.readouterr()
    args = ["projection", "rebuild", "parking.deposits", "--server", app.address]
    rebuilding = asyncio.ensure_future(asyncio.to_thread(run_cli, args))
    errors_seen: set[str] = set()
    while not rebuilding.done():  # what the CLI saw meanwhile: the failing tries
        errors_seen.add((await projection(client, "parking.deposits")).error)
        await asyncio.sleep(0.05)
    exit_code = await rebuilding
    shown = capsys.readouterr()
    assert exit_code == 0, shown.err
    assert any("13 is unlucky" in error for error in errors_seen), errors_seen
    done = json.loads(shown.out)
    assert (done["projection"], done["parked_events"]) == ("parking.deposits", 1)
    assert int(done["position"]) == (await projection(client, "parking.deposits")).log_head
    total = bank.AccountBalance()
    found = await client.projections.GetDocument(
        projection_pb.GetDocumentRequest(projection="parking.deposits", key="total")
    )
    assert found.document.Unpack(total) and total.balance == 12
    # What it parked, listed by a CLI that knows no plugin's types.
    listed = await chronicle(app, "projection", "parked", "parking.deposits")
    (event,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (listed.returncode, event["event_type"], event["attempts"]) == (0, "bank.v1.MoneyDeposited", 3)
    assert "13 is unlucky" in event["error"]


class FailsCommits(MemoryStore):
    """A memory store that refuses every commit of ``failing`` (as a
    database that keeps failing would): the projection reports the error
    and tries again, and no parking gets it past."""

    failing = "parking.deposits"

    async def commit_projection(
        self,
        name: str,
        *,
        expected_position: int,
        new_position: int,
        writes: Sequence[DocumentWrite],
        fencing: Fencing | None = None,
        parked: Sequence[ParkedEvent] = (),
    ) -> None:
        if name == self.failing and new_position > 0:
            raise StoreUnavailable("the projection's commits keep failing")
        await super().commit_projection(
            name,
            expected_position=expected_position,
            new_position=new_position,
            writes=writes,
            fencing=fencing,
            parked=parked,
        )


async def test_a_rebuild_of_a_projection_that_parks_still_ends_when_its_error_outlasts_the_parking(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a try itself may take, beyond max_attempts times retry_interval: short here.
    monkeypatch.setattr(cli_module, "_REBUILD_TRY_SECONDS", 0.5)
    store: StoreAdapter = FailsCommits()
    async with running_server(store, registry=REGISTRY, anonymous_admin=True, poll_seconds=0.05) as (app, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))

        async def failing() -> bool:
            return "keep failing" in (await projection(client, "parking.deposits")).error

        await eventually(failing, what="the projection failing")
        capsys.readouterr()
        args = ["projection", "rebuild", "parking.deposits", "--server", app.address]
        began = time.monotonic()
        exit_code = await asyncio.to_thread(run_cli, args)
        waited = time.monotonic() - began
    shown = capsys.readouterr()
    assert (exit_code, shown.out) == (1, "")
    assert "error: projection parking.deposits stopped at position 0: STORE_UNAVAILABLE" in shown.err
    # Not at the first error: after its three tries 0.4 s apart (and 0.5 s each) would have parked an event.
    assert waited >= 3 * (0.4 + 0.5), waited
