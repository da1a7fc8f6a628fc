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
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.message import Message

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import projection_service_pb2 as projections
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.processing.commands import fingerprint
from service.store.base import StoreAdapter
from service.store.encryption import new_master_key
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.postgres import find_bindir
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


@dataclass
class DataAtRest:
    """What someone who took the database holds: every byte of it, and the
    command records read from it directly."""

    read_bytes: Callable[[], bytes]
    read_fingerprints: Callable[[], list[bytes]]
    read_wrapped_key: Callable[[str], bytes | None]
    read_documents: Callable[[], set[bytes]]


def sqlite_at_rest(folder: Path) -> DataAtRest:
    path = folder / "events.db"

    def every_file() -> bytes:
        # The database file, its WAL and its shared memory: the whole directory.
        return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())

    def query(statement: str, *params: object) -> list[tuple[Any, ...]]:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return db.execute(statement, params).fetchall()

    return DataAtRest(
        every_file,
        lambda: [bytes(row[0]) for row in query("SELECT fingerprint FROM commands")],
        lambda aggregate_id: _first_bytes(
            query("SELECT wrapped_key FROM data_keys WHERE aggregate_id = ?", aggregate_id)
        ),
        lambda: {bytes(row[0]) for row in query("SELECT data FROM projection_documents")},
    )


def postgres_at_rest(url: str) -> DataAtRest:
    def dump() -> bytes:
        pg_dump = find_bindir() / "pg_dump"
        return subprocess.run([str(pg_dump), "--dbname", url], check=True, capture_output=True, timeout=60).stdout

    def query(statement: str, *params: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(url) as db:
            return db.execute(statement.encode(), params).fetchall()

    return DataAtRest(
        dump,
        lambda: [bytes(row[0]) for row in query("SELECT fingerprint FROM chronicle.commands")],
        lambda aggregate_id: _first_bytes(
            query("SELECT wrapped_key FROM chronicle.data_keys WHERE aggregate_id = %s", aggregate_id)
        ),
        lambda: {bytes(row[0]) for row in query("SELECT data FROM chronicle.projection_documents")},
    )


def _first_bytes(rows: list[tuple[Any, ...]]) -> bytes | None:
    value = rows[0][0] if rows else None
    return None if value is None else bytes(value)


@dataclass
class Site:
    store: StoreAdapter
    at_rest: DataAtRest


@pytest.fixture(params=["sqlite", "postgres"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    if request.param == "sqlite":
        folder = tmp_path / "data"
        return Site(SqliteStore(folder / "events.db"), sqlite_at_rest(folder))
    url = request.getfixturevalue("postgres_url")
    return Site(PostgresStore(url, pool_size=4), postgres_at_rest(url))


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
