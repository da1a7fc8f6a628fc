"""A rolling upgrade from Chronicle 0.3.0 with a ``tenant_keyed`` read model
under encryption at rest (docs/deployment.md, "Upgrading and rolling
back"): real 0.3.0 servers (their code from git, commit f4df998) and one of
this version on one database (PostgreSQL, or one SQLite file: a rolling
update on one host), with the same master keys and a plugin whose
``tenant_keyed`` projection adds each deposit to the document it read.
The projection's lease is moved back and forth between the 0.3.0 server
and the new one that load the plugin (one stopped, the other running it,
for each deposit) while a second 0.3.0 server, without the projection,
stays live: the balance counts every deposit once, which it would not if
the 0.3.0 runner built on a document it does not see (one under a
tenant's key). Once the 0.3.0 servers have left, the new one writes the
tenant's key's form: its data key of (read model, tenant) exists, which it
did not before.

Then the other way round (a rollback of one replica, or a roll-forward
beside the old version after a full rollback): the feature on, a 0.3.0
replica joins the new one. The new one keeps the leases of its
tenant_keyed projections, which fair shares would hand the old one
(service/cluster/leases.py, "Guarding"), and its read models stay right.
And a roll-forward after a full rollback, without the rebuild: what 0.3.0
wrote meanwhile is refused until the projection is rebuilt.
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import projection_service_pb2 as pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.base import StoreAdapter
from service.store.encryption import new_master_key, tenant_projection_key_id
from service.store.factory import open_store
from tests.support.grpc_client import Client, command, connect, reason_of
from tests.support.processes import Replica
from tests.support.security import write
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow  # two server processes, one of them 0.3.0

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


# Four tenant_keyed read models and one that is not: fair shares between
# two members give the old one two or three of the five, whichever member
# id comes first, so at least one tenant_keyed one unless they are kept
# from it; it takes the other one (the test's sign that it took what it
# was given).
BALANCES = ("rollback.a", "rollback.b", "rollback.c", "rollback.d")
PLAIN = "rollback.plain"
BALANCES_PLUGIN = f"""
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import Plugin

plugin = Plugin("rollback-balances")
for name in (*{BALANCES!r}, {PLAIN!r}):
    balances = plugin.projection(name, aggregate_types=["Account"], tenant_keyed=name != {PLAIN!r})

    @balances.on(bank.MoneyDeposited)
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


async def runner(client: Client, projection: str = OWNERS) -> str:
    found = await client.projections.GetProjection(pb.GetProjectionRequest(name=projection), timeout=10)
    return str(found.runner)  # whoever runs it, as this replica last heard


async def settled(clients: dict[str, Client], stopped: frozenset[str] = frozenset()) -> bool:
    """The running replicas name one of them as the projection's runner."""
    seen = {await runner(client) for address, client in clients.items() if address not in stopped}
    return len(seen) == 1 and seen <= set(clients) - stopped


async def balance(client: Client, at: int, projection: str = OWNERS) -> int:
    request = pb.GetDocumentRequest(projection=projection, key="acme:acc-1", min_position=at)
    found = bank.AccountBalance()
    assert (await client.projections.GetDocument(request, timeout=10)).document.Unpack(found)
    return found.balance


async def tenant_key_made(database_url: str, projection: str = OWNERS) -> bool:
    store: StoreAdapter = open_store(database_url)
    await store.open()
    try:
        return await store.load_data_key(tenant_projection_key_id(projection, "acme")) is not None
    finally:
        await store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path}/events.db"


async def test_the_projection_counts_every_deposit_whichever_version_runs_it(database_url: str, tmp_path: Path) -> None:
    old_code = released_tree(tmp_path / "chronicle-0.3.0")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "rollout_owners.py").write_text(PLUGIN)
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\nacme:2026-01:{new_master_key()}\n")
    common = [
        "--master-key-file", keys, "--anonymous-admin", "--lease-seconds", str(LEASE_SECONDS), "--poll-seconds", "0.2",
    ]  # fmt: skip
    flags = ["--plugin", "rollout_owners", *common]
    new = Replica(
        database_url, log_path=tmp_path / "new.log", extra=flags, env={"PYTHONPATH": f"{REPOSITORY}:{plugins}"}
    )
    old = Replica(
        database_url,
        log_path=tmp_path / "old.log",
        extra=flags,
        env={"PYTHONPATH": f"{old_code}:{plugins}"},
        cwd=tmp_path,  # not this repository: its `service` would be imported first
    )
    # Another 0.3.0 replica of the rollout, live throughout, which cannot
    # take the projection over (its plugins have no such projection): so
    # the test decides which of the other two runs it, by stopping one.
    elsewhere = Replica(
        database_url, log_path=tmp_path / "elsewhere.log", extra=common, env={"PYTHONPATH": str(old_code)}, cwd=tmp_path
    )
    with ExitStack() as stack:
        for replica in (old, new, elsewhere):
            stack.callback(replica.close)
        new.start()  # migrates the database (additively: 0.3.0 serves on it)
        elsewhere.start()
        old.start()
        async with connect(new.address) as at_new, connect(old.address) as at_old:
            clients = {new.address: at_new, old.address: at_old}
            await at_new.submit(command("acme:acc-1", bank.OpenAccount(owner="Ann")))
            total = 0
            # Each deposit counted by the version that did not write the
            # document last: the other one stopped meanwhile, started again after.
            for amount, counting in zip((1, 2, 4, 8, 16, 32), [old, new] * 3, strict=True):
                stopped = new if counting is old else old
                stopped.stop()
                taken_over = partial(settled, clients, frozenset({stopped.address}))
                await eventually(taken_over, what=f"{counting.address} running the projection")
                written = await clients[counting.address].submit(command("acme:acc-1", bank.Deposit(amount=amount)))
                total += amount
                at = written.events[-1].position
                assert await balance(clients[counting.address], at) == total
                stopped.start()
                assert await balance(clients[stopped.address], at) == total  # it reads what the other wrote
            assert not await tenant_key_made(database_url)  # the read model's key only, as 0.3.0 reads

            # The upgrade done: the last 0.3.0 replicas gone.
            old.stop()
            elsewhere.stop()
            on_new = partial(settled, clients, frozenset({old.address}))
            await eventually(on_new, what="the new replica running the projection")
            written = await at_new.submit(command("acme:acc-1", bank.Deposit(amount=100)))
            assert await balance(at_new, written.events[-1].position) == total + 100
            assert await tenant_key_made(database_url)  # moved onto the tenant's key at its write
    assert "tenant_document_keys is on" in (tmp_path / "new.log").read_text()  # the switch is logged
    assert "tenant_document_keys is on" not in (tmp_path / "old.log").read_text()


async def old_one_runs_the_plain_projection(new: Client, old_address: str) -> bool:
    """The new replica has seen the old one take the projection that is not
    tenant_keyed: the new one planned its changes with the old one live (and
    gave it up), and the old one took, in one go, every lease it was given."""
    return await runner(new, PLAIN) == old_address


async def test_a_new_replica_keeps_its_tenant_keyed_projections_while_an_old_one_is_live(
    database_url: str, tmp_path: Path
) -> None:
    old_code = released_tree(tmp_path / "chronicle-0.3.0")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "rollback_balances.py").write_text(BALANCES_PLUGIN)
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\nacme:2026-01:{new_master_key()}\n")
    flags = [
        "--plugin", "rollback_balances", "--master-key-file", keys, "--anonymous-admin",
        "--lease-seconds", str(LEASE_SECONDS), "--poll-seconds", "0.2",
    ]  # fmt: skip
    new = Replica(
        database_url, log_path=tmp_path / "new.log", extra=flags, env={"PYTHONPATH": f"{REPOSITORY}:{plugins}"}
    )
    old = Replica(
        database_url,
        log_path=tmp_path / "old.log",
        extra=flags,
        env={"PYTHONPATH": f"{old_code}:{plugins}"},
        cwd=tmp_path,  # not this repository: its `service` would be imported first
    )
    with ExitStack() as stack:
        for replica in (new, old):
            stack.callback(replica.close)
        new.start()
        async with connect(new.address) as at_new:
            await at_new.submit(command("acme:acc-1", bank.OpenAccount(owner="Ann")))
            written = await at_new.submit(command("acme:acc-1", bank.Deposit(amount=1)))
            for name in BALANCES:
                assert await balance(at_new, written.events[-1].position, name) == 1
            assert await tenant_key_made(database_url, BALANCES[0])  # the feature is on: tenants' keys

            old.start()  # a 0.3.0 replica beside it: a rollback of one replica, or a roll-forward beside 0.3.0
            async with connect(old.address) as at_old:
                await eventually(
                    partial(old_one_runs_the_plain_projection, at_new, old.address), what="the old one taking leases"
                )
                for client in (at_new, at_old):  # as each of them sees it
                    for name in BALANCES:
                        assert await runner(client, name) == new.address
                total = 1
                for amount in (2, 4):
                    written = await at_old.submit(command("acme:acc-1", bank.Deposit(amount=amount)))
                    total += amount
                for name in BALANCES:  # neither built on a document read as absent, nor left stale
                    assert await balance(at_new, written.events[-1].position, name) == total
                assert await balance(at_new, written.events[-1].position, PLAIN) == total
    assert "does not honour the cluster features on" in (tmp_path / "new.log").read_text()


async def test_a_roll_forward_after_a_full_rollback_refuses_what_0_3_0_wrote_until_rebuilt(
    database_url: str, tmp_path: Path
) -> None:
    """docs/deployment.md's roll-forward after a rollback, without the
    rebuild with 0.3.0: the document 0.3.0 built on nothing is refused
    (DOCUMENT_IN_TWO_FORMS), not served stale, and stops the projection
    until the rebuild with this version, which counts every deposit."""
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
        database_url, log_path=tmp_path / "new.log", extra=flags, env={"PYTHONPATH": f"{REPOSITORY}:{plugins}"}
    )
    old = Replica(
        database_url,
        log_path=tmp_path / "old.log",
        extra=flags,
        env={"PYTHONPATH": f"{old_code}:{plugins}"},
        cwd=tmp_path,  # not this repository: its `service` would be imported first
    )
    with ExitStack() as stack:
        for replica in (new, old):
            stack.callback(replica.close)
        new.start()
        async with connect(new.address) as at_new, connect(old.address) as at_old:
            await at_new.submit(command("acme:acc-1", bank.OpenAccount(owner="Ann")))
            written = await at_new.submit(command("acme:acc-1", bank.Deposit(amount=1)))
            assert await balance(at_new, written.events[-1].position) == 1
            assert await tenant_key_made(database_url)  # the feature is on

            new.stop()  # a full rollback
            old.start()
            written = await at_old.submit(command("acme:acc-1", bank.Deposit(amount=2)))
            assert await balance(at_old, written.events[-1].position) == 2  # built on nothing

            new.start()  # rolled forward beside it, without the rebuild with 0.3.0
            request = pb.GetDocumentRequest(projection=OWNERS, key="acme:acc-1")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await at_new.projections.GetDocument(request, timeout=10)
            assert (refused.value.code(), reason_of(refused.value)) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "DOCUMENT_IN_TWO_FORMS",
            )

            old.stop()  # the last 0.3.0 replica gone: the new one runs the projection
            await eventually(partial(settled, {new.address: at_new}), what="the new replica running the projection")
            written = await at_new.submit(command("acme:acc-1", bank.Deposit(amount=4)))

            async def stopped() -> bool:
                found = await at_new.projections.GetProjection(pb.GetProjectionRequest(name=OWNERS), timeout=10)
                return bool(found.error.startswith("DOCUMENT_IN_TWO_FORMS"))

            await eventually(stopped, what="the projection stopped on the document in two forms")
            await at_new.projections.RebuildProjection(pb.RebuildProjectionRequest(name=OWNERS), timeout=30)
            assert await balance(at_new, written.events[-1].position) == 1 + 2 + 4
