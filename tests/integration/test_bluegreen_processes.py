"""A projection's logic changed blue/green across a fleet, as
docs/plugins.md ("Changing a projection's logic") says to do it: two real
server processes on PostgreSQL, rolled one at a time from a plugin that
declares version 1, to one that declares both versions, to one that
declares version 2 alone; then version 1 found as orphaned and deleted with
the CLI. At no step does a read of the name the clients use fail or give a
partial answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import projection_service_pb2 as pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from tests.support import bluegreen
from tests.support.grpc_client import command, connect, details_of, submit_retrying
from tests.support.processes import Replica, cli, free_port

FLAGS = [
    "--anonymous-admin", "--no-discover-plugins", "--plugin", "domain_plugins.bank_account:plugin",
    "--lease-seconds", "1", "--poll-seconds", "0.1",
]  # fmt: skip


class Fleet:
    """Two replicas on one database, each restarted on its own port with
    another version of the plugin, as a rolling deployment does."""

    def __init__(self, url: str, tmp: Path, stack: ExitStack) -> None:
        self._url, self._tmp, self._stack = url, tmp, stack
        self.ports = [free_port(), free_port()]
        self.servers: list[Replica | None] = [None, None]

    def address(self, index: int) -> str:
        return f"127.0.0.1:{self.ports[index]}"

    def deploy(self, index: int, version: str) -> None:
        old = self.servers[index]
        if old is not None:
            assert old.stop() == 0
        extra = [*FLAGS, "--plugin", f"tests.support.bluegreen:{version}"]
        server = Replica(self._url, log_path=self._tmp / f"replica{index}.log", extra=extra, port=self.ports[index])
        self._stack.callback(server.close)
        server.start()
        self.servers[index] = server


@pytest.fixture
def fleet(postgres_url: str, tmp_path: Path) -> Iterator[Fleet]:
    with ExitStack() as stack:
        yield Fleet(postgres_url, tmp_path, stack)


async def total(address: str, projection: str, min_position: int) -> int:
    async with connect(address) as client:
        found = await client.projections.GetDocument(
            pb.GetDocumentRequest(projection=projection, key=bluegreen.KEY, min_position=min_position), timeout=10
        )
    document = bank.AccountBalance()
    assert found.document.Unpack(document)
    return int(document.balance)


async def refusal(address: str, projection: str) -> tuple[grpc.StatusCode, str]:
    async with connect(address) as client:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.projections.GetDocument(pb.GetDocumentRequest(projection=projection, key=bluegreen.KEY))
    details = details_of(raised.value)
    return details.code, details.reason


async def deposit(address: str, amount: int) -> int:
    async with connect(address) as client:
        done = await submit_retrying(client, command("acc-1", bank.Deposit(amount=amount)))
    return int(done.events[-1].position)


async def test_a_projection_changes_blue_green_across_two_replicas_and_the_old_one_is_deleted(fleet: Fleet) -> None:
    a, b = 0, 1
    fleet.deploy(a, "blue")
    fleet.deploy(b, "blue")
    async with connect(fleet.address(a)) as client:
        await submit_retrying(client, command("acc-1", bank.OpenAccount(owner="ann")))
    position = max([await deposit(fleet.address(a), 3), await deposit(fleet.address(b), 4)])
    assert [await total(fleet.address(i), bluegreen.V1, position) for i in (a, b)] == [7, 7]

    # Roll 1: both versions side by side. Version 1 keeps serving on every
    # replica throughout; version 2 builds from the log on the new one.
    fleet.deploy(a, "both")
    assert await total(fleet.address(b), bluegreen.V1, position) == 7
    assert await total(fleet.address(a), bluegreen.V2, position) == 700
    # Mid-roll, the replica still on the old plugin does not serve the new
    # name, and says why: clients switch only once every replica declares it.
    assert await refusal(fleet.address(b), bluegreen.V2) == (grpc.StatusCode.NOT_FOUND, "PROJECTION_NOT_LOADED")
    fleet.deploy(b, "both")
    position = await deposit(fleet.address(b), 5)
    for address in map(fleet.address, (a, b)):
        assert (await total(address, bluegreen.V1, position), await total(address, bluegreen.V2, position)) == (
            12,
            1200,
        )

    # Clients read version 2 now. Roll 2: version 1 retired.
    fleet.deploy(a, "green")
    assert await total(fleet.address(b), bluegreen.V1, position) == 12  # the old name still served mid-roll
    assert await refusal(fleet.address(a), bluegreen.V1) == (grpc.StatusCode.NOT_FOUND, "PROJECTION_NOT_LOADED")
    fleet.deploy(b, "green")
    position = await deposit(fleet.address(a), 1)
    assert [await total(fleet.address(i), bluegreen.V2, position) for i in (a, b)] == [1300, 1300]

    # Version 1's rows are found, and deleted, with the CLI.
    listed = [json.loads(line) for line in cli("projection", "--orphaned", server=fleet.address(a)).stdout.splitlines()]
    assert {"name": bluegreen.V1, "position": listed[-1]["position"], "orphaned": True} in listed
    deleted = cli("projection", "delete", bluegreen.V1, server=fleet.address(b))
    assert json.loads(deleted.stdout) == {"projection": bluegreen.V1, "deleted": 1}
    loaded = cli("projection", "delete", bluegreen.V2, server=fleet.address(b), check=False)
    assert loaded.returncode != 0 and "PROJECTION_LOADED" in loaded.stderr
    for address in map(fleet.address, (a, b)):
        assert await refusal(address, bluegreen.V1) == (grpc.StatusCode.NOT_FOUND, "PROJECTION_NOT_FOUND")
        assert await total(address, bluegreen.V2, position) == 1300
    listed = [json.loads(line) for line in cli("projection", "--orphaned", server=fleet.address(a)).stdout.splitlines()]
    assert not [entry for entry in listed if entry.get("orphaned")]
