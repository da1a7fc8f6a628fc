"""The bank point: the example domain as a new user runs it, its read model
(``bank.balances_by_owner``) included. Deposits of 1 over 1,000 accounts,
one owner each; afterwards the read model must hold exactly the deposits
the log holds, and the log at least every acknowledged one."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import grpc
import psycopg
from google.protobuf import any_pb2

from bench.checks import CheckFailed
from chronicle.v1 import command_pb2
from chronicle.v1 import command_service_pb2 as pb
from chronicle.v1 import command_service_pb2_grpc as pb_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank

# The bank point and its peer: deposits over this many accounts, one owner each.
ACCOUNTS = 1000
PROJECTION = "bank.balances_by_owner"
# The bank plugin's process manager: it reads every deposit (a transfer's
# credit is one). A bench that fills the log in the database marks it up to
# date with what it filled (``CHECKPOINT_AT_HEAD``), or it would work through
# the filled deposits, a hundred a batch, under every measurement after.
REACTION = "bank.transfers"
CHECKPOINT_AT_HEAD = (
    "INSERT INTO chronicle.projection_checkpoints (name, position) SELECT %s, last_position"
    " FROM chronicle.log_head ON CONFLICT (name) DO UPDATE SET position = excluded.position"
)
# Chronicle with the bank example only (its read model runs in the server).
BANK_PLUGIN_ARGS = ("--no-discover-plugins", "--plugin", "domain_plugins.bank_account")


async def open_accounts(
    address: str,
    count: int,
    prefix: str,
    *,
    in_flight: int = 256,
    owner: Callable[[int], str] = lambda i: f"owner-{i}",
) -> None:
    """``prefix-0`` … ``prefix-{count-1}``, owned by ``owner(N)`` each
    (``owner-N``)."""
    window = asyncio.Semaphore(in_flight)
    async with grpc.aio.insecure_channel(address) as channel:
        call = pb_grpc.CommandServiceStub(channel).SubmitStream()

        async def send() -> None:
            for i in range(count):
                await window.acquire()
                payload = any_pb2.Any()
                payload.Pack(bank.OpenAccount(owner=owner(i)))
                command = command_pb2.Command(
                    command_id=str(uuid.uuid4()), aggregate_id=f"{prefix}-{i}", payload=payload
                )
                await call.write(pb.SubmitRequest(command=command))
            await call.done_writing()

        async def receive() -> None:
            async for response in call:
                window.release()
                if not response.HasField("ok"):
                    raise CheckFailed(f"opening an account failed: {response.error.reason} {response.error.message}")

        await asyncio.gather(send(), receive())


def projection_lag(database_url: str) -> int:
    """Events in the log the read model has not applied yet."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT h.last_position - coalesce((SELECT position FROM chronicle.projection_checkpoints"
            " WHERE name = %s), 0) FROM chronicle.log_head h",
            (PROJECTION,),
        ).fetchone()
    return int(row[0]) if row else 0


def caught_up(database_url: str, *, within: float = 60.0) -> float:
    """Seconds until the read model has applied the whole log."""
    start = time.monotonic()
    while projection_lag(database_url) > 0:
        if time.monotonic() - start > within:
            raise CheckFailed(f"the read model did not catch up with the log within {within:.0f} s")
        time.sleep(0.02)
    return time.monotonic() - start


def balances_agree(database_url: str, prefix: str, acknowledged: int) -> dict[str, int]:
    """The read model's balances of the ``prefix`` accounts add up to the
    deposits in the log, and those are at least the acknowledged ones."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM chronicle.events WHERE event_type = 'bank.v1.MoneyDeposited'"
            " AND aggregate_id LIKE %s",
            (f"{prefix}-%",),
        ).fetchone()
        logged = int(row[0]) if row else 0
        documents = conn.execute(
            "SELECT data FROM chronicle.projection_documents WHERE projection = %s AND key LIKE %s",
            (PROJECTION, f"account:{prefix}-%"),
        ).fetchall()
    balances = sum(bank.AccountBalance.FromString(bytes(data)).balance for (data,) in documents)
    if balances != logged:
        raise CheckFailed(f"bank: the read model's balances add up to {balances}, the log holds {logged} deposits")
    if logged < acknowledged:
        raise CheckFailed(f"bank: {acknowledged} deposits acknowledged, only {logged} in the log")
    return {"deposits_in_log": logged, "read_model_balances": balances, "acknowledged": acknowledged}
