"""A rolling upgrade from Chronicle 0.3.0 with a ``tenant_keyed`` read model
under encryption at rest (docs/deployment.md, "Upgrading and rolling
back"): a real 0.3.0 server (its code from git, commit f4df998) and one of
this version on one PostgreSQL database, with the same master keys and a
plugin whose ``tenant_keyed`` projection adds each deposit to the document
it read. The projection's lease is moved back and forth between them (its
runner stopped and started again) with a deposit after each move: the
balance counts every deposit once, which it would not if the 0.3.0 runner
built on a document it does not see (one under a tenant's key). Once the
0.3.0 server has left, the new one writes the tenant's key's form: its data
key of (read model, tenant) exists, which it did not before.
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from chronicle.v1 import projection_service_pb2 as pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.encryption import new_master_key, tenant_projection_key_id
from service.store.postgres.store import PostgresStore
from tests.support.grpc_client import Client, command, connect
from tests.support.processes import Replica
from tests.support.security import write
from tests.support.waiting import eventually

pytestmark = [pytest.mark.postgres, pytest.mark.slow]  # two server processes, one of them 0.3.0

REPOSITORY = Path(__file__).resolve().parents[2]
RELEASED = "f4df998"  # Chronicle 0.3.0, as it reads documents: under the read model's key only
OWNERS = "rollout.owners"
LEASE_SECONDS = 1.0

# Importable by either version (both have this plugin API).
PLUGIN = f"""
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import Plugin

plugin = Plugin("rollout-owners")
owners = plugin.projection({OWNERS!r}, aggregate_types=["Account"], tenant_keyed=True)


@owners.on(bank.AccountOpened)
def opened(event, envelope, documents):
    documents.put(envelope.aggregate_id, bank.AccountBalance(owner=event.owner), subject=envelope.aggregate_id)


@owners.on(bank.MoneyDeposited)
def deposited(event, envelope, documents):
    # Built on the document read: one not found starts again from nothing.
    document = documents.get(envelope.aggregate_id, bank.AccountBalance) or bank.AccountBalance()
    document.balance += event.amount
    documents.put(envelope.aggregate_id, document, subject=envelope.aggregate_id)
"""


def released_tree(at: Path) -> Path:
    """Chronicle 0.3.0's code, its protos generated."""
    at.mkdir()
    archive = subprocess.run(["git", "-C", str(REPOSITORY), "archive", RELEASED], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(at)], input=archive.stdout, check=True)
    subprocess.run(
        [sys.executable, "tools/gen_protos.py"], cwd=at, env={"PYTHONPATH": str(at)}, check=True, capture_output=True
    )
    return at


async def runner(client: Client) -> str:
    found = await client.projections.GetProjection(pb.GetProjectionRequest(name=OWNERS), timeout=10)
    return str(found.runner)  # whoever runs it, as this replica last heard


async def run_somewhere(client: Client) -> bool:
    return bool(await runner(client))


async def balance(client: Client, at: int) -> int:
    request = pb.GetDocumentRequest(projection=OWNERS, key="acme:acc-1", min_position=at)
    found = bank.AccountBalance()
    assert (await client.projections.GetDocument(request, timeout=10)).document.Unpack(found)
    return found.balance


async def tenant_key_made(postgres_url: str) -> bool:
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        return await store.load_data_key(tenant_projection_key_id(OWNERS, "acme")) is not None
    finally:
        await store.close()


async def test_the_projection_counts_every_deposit_whichever_version_runs_it(postgres_url: str, tmp_path: Path) -> None:
    old_code = released_tree(tmp_path / "chronicle-0.3.0")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "rollout_owners.py").write_text(PLUGIN)
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\nacme:2026-01:{new_master_key()}\n")
    flags = [
        "--plugin", "rollout_owners", "--master-key-file", keys, "--anonymous-admin",
        "--lease-seconds", str(LEASE_SECONDS), "--poll-seconds", "0.2",
    ]  # fmt: skip
    new = Replica(
        postgres_url, log_path=tmp_path / "new.log", extra=flags, env={"PYTHONPATH": f"{REPOSITORY}:{plugins}"}
    )
    old = Replica(
        postgres_url,
        log_path=tmp_path / "old.log",
        extra=flags,
        env={"PYTHONPATH": f"{old_code}:{plugins}"},
        cwd=tmp_path,  # not this repository: its `service` would be imported first
    )
    with ExitStack() as stack:
        stack.callback(old.close)
        stack.callback(new.close)
        new.start()  # migrates the database (additively: 0.3.0 serves on it)
        old.start()
        async with connect(new.address) as at_new, connect(old.address) as at_old:
            clients = {new.address: (new, at_new), old.address: (old, at_old)}
            written = await at_new.submit(command("acme:acc-1", bank.OpenAccount(owner="Ann")))
            total, ran_on = 0, set()
            for amount in (1, 2, 4, 8, 16, 32):
                await eventually(lambda: run_somewhere(at_new), what="a runner of the projection")
                holder, _ = clients[await runner(at_new)]
                ran_on.add(holder.address)
                written = await at_new.submit(command("acme:acc-1", bank.Deposit(amount=amount)))
                total += amount
                at = written.events[-1].position
                # Each replica reads the document its runner wrote, whichever wrote it.
                assert (await balance(at_new, at), await balance(at_old, at)) == (total, total)
                holder.stop()  # its leases freed: the other replica takes the projection over
                other = old if holder is new else new
                _, at_other = clients[other.address]

                async def taken_over(at_other: Client = at_other, other: Replica = other) -> bool:
                    return await runner(at_other) == other.address

                await eventually(taken_over, what=f"{other.address} running the projection")
                holder.start()
            assert ran_on == {new.address, old.address}
            assert not await tenant_key_made(postgres_url)  # the read model's key only, as 0.3.0 reads

            old.stop()  # the upgrade done: the last 0.3.0 replica gone
            await eventually(lambda: run_somewhere(at_new), what="the new replica running the projection")
            written = await at_new.submit(command("acme:acc-1", bank.Deposit(amount=64)))
            assert await balance(at_new, written.events[-1].position) == total + 64
            assert await tenant_key_made(postgres_url)  # moved onto the tenant's key at its write
    assert "tenant_document_keys is on" in (tmp_path / "new.log").read_text()  # the switch is logged
    assert "tenant_document_keys is on" not in (tmp_path / "old.log").read_text()
