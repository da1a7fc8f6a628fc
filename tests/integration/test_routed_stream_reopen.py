"""A routed command stream (``submit_stream`` with ``routing=True``) whose
lanes' calls live replicas end: each lane opens its call again on its own
replica, which is not marked down, and the commands of its aggregates go on
reaching their owner. Two replicas on one PostgreSQL, over real sockets:

- with --auth, the policy file changes the principal's grants (it may still
  submit): each replica ends the principal's streams with UNAVAILABLE
  CREDENTIALS_CHANGED, to be opened again under the new policy;
- with --max-connection-age-seconds, each replica ends the calls on a
  connection past its age and grace (gRPC's UNAVAILABLE "max connection
  age"), and the channel has a new connection for the next call.

A replica that is gone (killed, stopping) is still stepped around:
test_routing_client.py and test_python_client_routed_streams.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.client import ChronicleClient, Command, RetryPolicy
from service.client.routing import Routes
from tests.support.cluster import replica, settled
from tests.support.routes import record_marks
from tests.support.security import POLICY, api_key_file, write

pytestmark = pytest.mark.postgres

FAST = RetryPolicy(initial_backoff=0.02, max_backoff=0.2, max_attempts=20)
ALICE_KEY = "chr_alice-routed-reopen-key-0123456789abcdef0123456789"
# Alice (a teller) may read boxes too: her grants change, her submits stay.
WIDER_POLICY = POLICY.replace('read = ["Account"]\n', 'read = ["Account", "Box"]\n', 1)
ACCOUNTS_EACH = 5


@asynccontextmanager
async def two_replicas(postgres_url: str, **settings: Any) -> AsyncIterator[list[Application]]:
    async with AsyncExitStack() as stack:
        apps = [(await stack.enter_async_context(replica(postgres_url, **settings)))[0] for _ in range(2)]
        await settled(apps)
        yield apps


@asynccontextmanager
async def routed_client(apps: Sequence[Application], token: str | None = None) -> AsyncIterator[ChronicleClient]:
    """A routing client of ``apps`` (seeded with the first) that knows the
    settled topology: the owners it sees are the replicas' own holdings."""
    async with ChronicleClient.connect(apps[0].address, routing=True, retry=FAST, token=token) as client:
        assert client.routes is not None

        def as_held(topology: Any) -> bool:
            return all(
                topology.partition_owners[partition] == app.leases.member_id
                for app in apps
                for partition in app.ownership.owned()
            )

        await asyncio.wait_for(client.routes.wait_for_topology(as_held), timeout=10)
        yield client


def record_calls(routes: Routes | None, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str | None, str | None]]:
    """(lane's member, member the call went to) of each call the lanes of
    ``routes``' streams open from now on."""
    assert routes is not None
    opened: list[tuple[str | None, str | None]] = []
    stub_for = routes.stub_for

    def recorded(address: str | None) -> Any:
        stub, member = stub_for(address)
        opened.append((address, member))
        return stub, member

    monkeypatch.setattr(routes, "stub_for", recorded)
    return opened


def accounts_of(apps: Sequence[Application]) -> list[str]:
    """``ACCOUNTS_EACH`` account ids owned by each replica."""
    ids = [f"acc-{n}" for n in range(10_000)]
    return [a for app in apps for a in [i for i in ids if app.ownership.owns(i)][:ACCOUNTS_EACH]]


async def stream_across(
    client: ChronicleClient,
    apps: Sequence[Application],
    opened: list[tuple[str | None, str | None]],
    *,
    reopenings: int,
    meanwhile: Callable[[], None] = lambda: None,
) -> None:
    """Open an account per replica's lane and deposit to each, call
    ``meanwhile()`` and deposit again until each lane's call was opened
    again ``reopenings`` times, then deposit once more to each (over the
    reopened calls); every command answered once, in order, accepted,
    each account's versions in order."""
    accounts = accounts_of(apps)
    commands: list[Command] = []

    def reopened() -> bool:
        return all(sum(lane == app.address for lane, _ in opened) > reopenings for app in apps)

    async def source() -> AsyncIterator[Command]:
        for round_ in range(1_000):  # a bound for a broken build; the reopenings end it
            for account in accounts:
                command = Command(account, bank.Deposit(amount=1) if round_ else bank.OpenAccount(owner="o"))
                commands.append(command)
                yield command
            if round_ == 1:
                meanwhile()
            elif round_ > 1 and reopened():
                break
            await asyncio.sleep(0.05)
        for account in accounts:  # over the calls opened again
            commands.append(command := Command(account, bank.Deposit(amount=1)))
            yield command

    results = [result async for result in client.submit_stream(source())]
    assert reopened()
    assert [r.command.command_id for r in results] == [c.command_id for c in commands]
    assert [r.error for r in results if r.error is not None] == []
    versions: dict[str, list[int]] = {}
    for result in results:
        versions.setdefault(result.command.aggregate_id, []).append(result.result().version)
    rounds = len(commands) // len(accounts)
    assert versions == {account: list(range(1, rounds + 1)) for account in accounts}  # each once, in order


def assert_stayed(
    apps: Sequence[Application],
    routes: Routes | None,
    opened: list[tuple[str | None, str | None]],
    marked: list[str | None],
) -> None:
    """Each lane's calls all went to its own replica, none was marked down,
    and each replica worked only its own accounts."""
    assert routes is not None
    assert marked == []
    assert routes.failovers == 0
    assert not any(routes.is_down(app.address) for app in apps)
    assert {lane for lane, _ in opened} == {app.address for app in apps}  # no lane for the seed either
    assert [(lane, member) for lane, member in opened if member != lane] == []
    assert [app.router.live_workers for app in apps] == [ACCOUNTS_EACH] * len(apps)


async def test_lanes_whose_calls_a_grant_change_ended_reopen_on_their_replicas(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert WIDER_POLICY != POLICY
    policy = tmp_path / "policy.toml"
    settings = {
        "auth": True,
        "api_keys_file": api_key_file(tmp_path / "keys.toml", [(ALICE_KEY, "alice", [])]),
        "policy_file": write(policy, POLICY),
        "auth_reload_seconds": 0.05,
    }
    async with two_replicas(postgres_url, **settings) as apps, routed_client(apps, token=ALICE_KEY) as client:
        opened = record_calls(client.routes, monkeypatch)
        marked = record_marks(client.routes, monkeypatch)

        def widen() -> None:
            # Each replica reads it within 50 ms and ends alice's streams,
            # both lanes' calls among them (CREDENTIALS_CHANGED, with a
            # RetryInfo of a second).
            write(policy, WIDER_POLICY)

        await stream_across(client, apps, opened, reopenings=1, meanwhile=widen)
        assert_stayed(apps, client.routes, opened, marked)


async def test_lanes_whose_connections_aged_out_reopen_on_their_replicas(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"max_connection_age_seconds": 1.0, "max_connection_age_grace_seconds": 0.2}
    async with two_replicas(postgres_url, **settings) as apps, routed_client(apps) as client:
        opened = record_calls(client.routes, monkeypatch)
        marked = record_marks(client.routes, monkeypatch)
        # Each lane's call ends about every 1.2 s ("max connection age").
        await stream_across(client, apps, opened, reopenings=2)
        assert_stayed(apps, client.routes, opened, marked)
