"""Forgetting leaves nothing from which the subject's data can be read or
confirmed: the whole SQLite data directory (the file, its WAL and shared
memory) and a ``pg_dump`` of the PostgreSQL database are scanned after a
forget, as someone who stole them would: for the plaintext, for the refusal
text, for the destroyed wrapped key, and with the attack the security review
made on the command records' fingerprints (a guess list of names and
addresses, every amount up to 200,000), which found the owner's name and a
deposit in seconds when fingerprints were plain SHA-256."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import command_service_pb2 as cs
from chronicle.v1 import event_pb2
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import projection_service_pb2 as projections
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.processing.commands import fingerprint
from service.store.encryption import new_master_key
from tests.support.at_rest import DataAtRest, Site, site_for
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.security import write
from tests.support.waiting import eventually

OWNER = "Zelda Quartermain-Oyelaran"
EMAIL = "zelda.q@oyelaran.example"
AMOUNT = 148_213  # deposited: a brute force over amounts finds it if anything does
REFUSAL = f"the balance is {AMOUNT}"
GUESSED_NAMES = ["Ann Smith", "Bob Jones", OWNER, "Carol White", "Zelda Quartermain"]
GUESSED_EMAILS = ["ann@example.com", EMAIL, "zelda@quartermain.example", "bob@example.org"]
MAX_GUESSED_AMOUNT = 200_000
PROJECTION = "bank.balances_by_owner"


@pytest.fixture(params=["sqlite", "postgres"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    return site_for(request, tmp_path)


@pytest.fixture
async def client(site: Site, tmp_path: Path) -> AsyncIterator[Client]:
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    async with running_server(site.store, master_key_file=keys, anonymous_admin=True) as (_, connected):
        yield connected


# -- the attack on fingerprints --------------------------------------------------


@functools.cache
def guessed_fingerprints() -> dict[bytes, str]:
    """Every fingerprint the guesses could have made, and what each means:
    accounts' owners and amounts, users' addresses and names."""
    guesses: list[tuple[str, Message]] = [("acc-1", bank.OpenAccount(owner=name)) for name in GUESSED_NAMES]
    for amount in range(1, MAX_GUESSED_AMOUNT + 1):
        guesses += [("acc-1", bank.Deposit(amount=amount)), ("acc-1", bank.Withdraw(amount=amount))]
    guesses += [("user-1", users.RegisterUser(email=e, name=n)) for e in GUESSED_EMAILS for n in GUESSED_NAMES]
    return {fingerprint(a, g): f"{a} {type(g).__name__}({g})" for a, g in guesses}


def confirmed(at_rest: DataAtRest, guesses: dict[bytes, str]) -> list[str]:
    """The guesses the stolen database confirms: a stored fingerprint equal
    to one, or its 32 bytes (raw or in hex) anywhere in the files."""
    found = [guesses[f] for f in at_rest.read_fingerprints() if f in guesses]
    everything = at_rest.read_bytes()
    windows = {everything[i : i + 32] for i in range(len(everything) - 31)}
    found += [meaning for digest, meaning in guesses.items() if digest in windows]
    for run in re.findall(rb"[0-9a-f]{64,}", everything):
        hexes = {run[i : i + 64] for i in range(0, len(run) - 63, 2)}
        found += [meaning for digest, meaning in guesses.items() if digest.hex().encode() in hexes]
    return found


def test_the_attack_finds_what_a_plain_fingerprint_hides() -> None:
    """The guess list and the loop over amounts do find a command from its
    plain SHA-256 fingerprint, which is what the store held before."""
    guesses = guessed_fingerprints()
    assert guesses[fingerprint("acc-1", bank.Deposit(amount=AMOUNT))] == f"acc-1 Deposit(amount: {AMOUNT}\n)"
    assert fingerprint("acc-1", bank.OpenAccount(owner=OWNER)) in guesses
    assert fingerprint("user-1", users.RegisterUser(email=EMAIL, name=OWNER)) in guesses


# -- the scenario ----------------------------------------------------------------


async def refusal_of(call: object) -> tuple[grpc.StatusCode, str, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    details = details_of(raised.value)
    return details.code, details.reason, details.message, details.metadata


async def document(client: Client, key: str) -> grpc.StatusCode:
    try:
        await client.projections.GetDocument(projections.GetDocumentRequest(projection=PROJECTION, key=key))
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def caught_up(client: Client) -> bool:
    status = await client.projections.GetProjection(projections.GetProjectionRequest(name=PROJECTION))
    return bool(status.position == status.log_head)


async def test_after_a_forget_the_data_at_rest_holds_nothing_of_the_subject(client: Client, site: Site) -> None:
    await client.submit(command("acc-1", bank.OpenAccount(owner=OWNER)))
    await client.submit(command("acc-1", bank.Deposit(amount=AMOUNT)))
    too_much = command("acc-1", bank.Withdraw(amount=AMOUNT + 1))
    refused = await refusal_of(client.submit(too_much))
    assert refused[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    assert REFUSAL in refused[2]
    assert refused[3] == {"balance": str(AMOUNT), "amount": str(AMOUNT + 1)}
    await client.submit(command("user-1", users.RegisterUser(email=EMAIL, name=OWNER)))
    await client.submit(command("acc-2", bank.OpenAccount(owner="Kept Person")))
    await eventually(lambda: caught_up(client), what="the read model catching up")
    assert await document(client, f"owner:{OWNER}") == grpc.StatusCode.OK
    wrapped = site.at_rest.read_wrapped_key("acc-1")
    assert wrapped is not None
    documents = site.at_rest.read_documents()  # sealed under the projection's key, which outlives the forget

    # Before the forget: the database alone (no master key) confirms nothing either.
    # (In a thread: the server shares this event loop.)
    guesses = await asyncio.to_thread(guessed_fingerprints)
    assert await asyncio.to_thread(confirmed, site.at_rest, guesses) == []
    # A retried refusal is refused again, word for word (its text is sealed, not lost).
    assert await refusal_of(client.submit(too_much)) == refused

    for aggregate_id in ("acc-1", "user-1"):
        await client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id=aggregate_id))

    stolen = site.at_rest.read_bytes()
    assert b"acc-1" in stolen and b"Kept Person" not in stolen  # the right data, still sealed where it should be
    for secret in (OWNER, EMAIL, REFUSAL, f'"balance":"{AMOUNT}"', "Quartermain", "oyelaran"):
        assert secret.encode() not in stolen, secret
    assert wrapped not in stolen and wrapped.hex().encode() not in stolen
    assert site.at_rest.read_wrapped_key("acc-1") is None
    deleted = documents - site.at_rest.read_documents()
    assert len(deleted) == 2  # owner:… and account:acc-1
    assert not [d for d in deleted if d in stolen]  # not even in free pages
    assert await asyncio.to_thread(confirmed, site.at_rest, guesses) == []

    # What the service still says of it: nothing but that it was forgotten.
    assert (await refusal_of(client.submit(too_much)))[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "AGGREGATE_FORGOTTEN",
    )
    assert await document(client, f"owner:{OWNER}") == grpc.StatusCode.NOT_FOUND
    assert await document(client, "account:acc-1") == grpc.StatusCode.NOT_FOUND
    assert await document(client, "account:acc-2") == grpc.StatusCode.OK
    audit = await client.admin.QueryAudit(admin.QueryAuditRequest(aggregate_id="acc-1"))
    (withdrawal,) = [e for e in audit.entries if e.reason == "INSUFFICIENT_FUNDS"]
    assert withdrawal.message == ""  # the reason stays; the text went with the key


async def test_a_dry_run_after_the_forget_is_refused_and_leaves_nothing_readable(client: Client, site: Site) -> None:
    # The server's worker caches the account's state; a dry run writes
    # nothing, so no append refuses it: decided on that cache it answered
    # "the balance is …" after the forget, and the audit stored it in the clear.
    await client.submit(command("acc-1", bank.OpenAccount(owner=OWNER)))
    await client.submit(command("acc-1", bank.Deposit(amount=AMOUNT)))
    too_much = command("acc-1", bank.Withdraw(amount=AMOUNT + 1))
    before = await refusal_of(client.commands.Submit(cs.SubmitRequest(command=too_much, dry_run=True)))
    assert before[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    await client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acc-1"))

    for built in (command("acc-1", bank.Withdraw(amount=AMOUNT + 1)), command("acc-1", bank.Deposit(amount=1))):
        code, reason, message, metadata = await refusal_of(
            client.commands.Submit(cs.SubmitRequest(command=built, dry_run=True))
        )
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "AGGREGATE_FORGOTTEN")
        assert str(AMOUNT) not in message + str(metadata)
    audit = await client.admin.QueryAudit(admin.QueryAuditRequest(aggregate_id="acc-1"))
    dry_runs = [e for e in audit.entries if e.dry_run]
    assert [e.reason for e in dry_runs] == ["AGGREGATE_FORGOTTEN", "AGGREGATE_FORGOTTEN", "INSUFFICIENT_FUNDS"]
    stolen = site.at_rest.read_bytes()
    assert REFUSAL.encode() not in stolen and str(AMOUNT).encode() not in stolen


async def read_tombstone(client: Client, aggregate_id: str) -> tuple[bool, bool, str]:
    """The aggregate's last event as readers get it: whether it is a
    deletion's tombstone, whether it is redacted, and the reason it says."""
    read = [e async for e in client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id=aggregate_id))]
    said = event_pb2.AggregateDeleted()
    if not read[-1].redacted:
        assert read[-1].payload.Unpack(said)
    return read[-1].deleted, read[-1].redacted, said.reason


async def test_a_deletions_reason_is_sealed_and_shredded_by_the_forget(client: Client, site: Site) -> None:
    # An administrator's reason may name the person; it was kept in the
    # clear in the tombstone, which outlived the forget.
    reason = f"closed at {OWNER}'s request"
    await client.submit(command("acc-1", bank.OpenAccount(owner="Someone Else")))
    deleted = await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="acc-1", reason=reason))
    said = event_pb2.AggregateDeleted()
    assert deleted.tombstone.payload.Unpack(said) and said.reason == reason  # the caller reads it
    assert await read_tombstone(client, "acc-1") == (True, False, reason)  # and so does every reader
    assert OWNER.encode() not in site.at_rest.read_bytes()  # but the database holds it sealed

    await client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acc-1"))
    assert await read_tombstone(client, "acc-1") == (True, True, "")
    again = await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="acc-1", reason=reason))
    assert again.already_deleted and again.tombstone.redacted

    # Forgotten first, deleted after: no key left to seal the reason under, so none is kept.
    await client.submit(command("acc-2", bank.OpenAccount(owner="Someone Else")))
    await client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acc-2"))
    late = await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="acc-2", reason=reason))
    assert late.tombstone.payload.Unpack(said) and (said.reason, said.deleted_by) == ("", "")
    assert await read_tombstone(client, "acc-2") == (True, False, "")

    stolen = site.at_rest.read_bytes()
    for secret in (reason, OWNER, "Quartermain"):
        assert secret.encode() not in stolen, secret
    audit = await client.admin.QueryAudit(admin.QueryAuditRequest(aggregate_id="acc-2"))
    assert [e.message for e in audit.entries if e.command_type.endswith("/DeleteAggregate")] == [""]
