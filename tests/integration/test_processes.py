"""Several server processes on one port (SO_REUSEPORT)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import cluster_service_pb2, cluster_service_pb2_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient
from tests.support.grpc_client import command, connect
from tests.support.processes import free_port, serve_until_exit, wait_until_serving
from tests.support.waiting import eventually

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _serve(address: str, database_url: str, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "service", "serve", "--listen", address, "--database-url", database_url, *extra]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_two_processes_share_one_port_and_stop_together(postgres_url: str) -> None:
    address = f"127.0.0.1:{free_port()}"
    parent = _serve(address, postgres_url, "--processes", "2")
    try:
        wait_until_serving(address)
        assert len(_children(parent.pid)) == 2
        # New connections land on either process; every command is served.
        for i in range(20):
            async with connect(address) as client:
                response = await client.submit(command(f"acc-{i}", bank.OpenAccount(owner="ann")))
                assert response.version == 1
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(30) == 0
        assert _children(parent.pid) == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


def test_several_processes_need_a_fixed_port() -> None:
    result = serve_until_exit("--database-url", "memory://", "--processes", "2")
    assert result.returncode != 0
    assert "fixed port" in result.stderr


@pytest.mark.parametrize("store", ["memory://", "sqlite:///{tmp}/events.db"], ids=["memory", "sqlite"])
@pytest.mark.parametrize("sharing", [("--processes", "2"), ("--reuse-port",)], ids=["processes", "reuse-port"])
def test_several_processes_on_a_store_that_serves_one_are_refused(
    tmp_path: Path, store: str, sharing: tuple[str, ...]
) -> None:
    # Each process would hold every lease: memory:// would even give each
    # process data of its own, and one aggregate could be opened twice.
    url = store.format(tmp=tmp_path)
    result = serve_until_exit("--database-url", url, *sharing, listen=f"127.0.0.1:{free_port()}")
    assert result.returncode == 2, result.stderr
    assert "ONE_PROCESS_STORE" in result.stderr and "serves one process" in result.stderr
    assert result.stderr.count("ONE_PROCESS_STORE") == 1  # said once, not by each process


def test_without_reuse_port_a_second_server_cannot_take_the_port() -> None:
    address = f"127.0.0.1:{free_port()}"
    first = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--listen", address, "--database-url", "memory://"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_serving(address)
        second = subprocess.run(
            [sys.executable, "-m", "service", "serve", "--listen", address, "--database-url", "memory://"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert "cannot listen" in second.stderr
    finally:
        first.terminate()
        first.wait(20)


async def test_each_process_is_a_member_on_a_port_of_its_own_and_routing_clients_reach_it(postgres_url: str) -> None:
    shared = f"127.0.0.1:{free_port()}"
    # Leases of 10 s: nothing here is taken over, and a 3 s lease lapsed
    # (leaving partitions without an owner mid-test) when the machine was
    # busy enough to hold a process's heartbeats back.
    parent = _serve(shared, postgres_url, "--processes", "2", "--lease-seconds", "10")
    try:
        wait_until_serving(shared)

        def topology_at(address: str) -> cluster_service_pb2.Topology | None:
            """The topology as the process at ``address`` sees it; None while
            it does not listen yet (a process joins the cluster, and so
            appears in the others' topology, just before it starts serving)."""
            with grpc.insecure_channel(address) as channel:
                stub = cluster_service_pb2_grpc.ClusterServiceStub(channel)
                try:
                    response: cluster_service_pb2.GetTopologyResponse = stub.GetTopology(
                        cluster_service_pb2.GetTopologyRequest(), timeout=5
                    )
                except grpc.RpcError as error:
                    if error.code() is grpc.StatusCode.UNAVAILABLE:
                        return None
                    raise
                return response.topology

        def split() -> bool:
            # As each process sees it, at its own port: a process's view is
            # up to a heartbeat (a third of the lease) old, and the routing
            # client may take its topology from either.
            seen = topology_at(shared)
            if seen is None or len(seen.members) != 2:
                return False
            for member in seen.members:
                topology = topology_at(member.address)
                if topology is None:
                    return False
                owners = list(topology.partition_owners)
                counts = sorted(owners.count(m.member_id) for m in topology.members)
                if len(topology.members) != 2 or counts != [32, 32]:
                    return False
            return True

        await eventually(split, within=30, what="two processes owning 32 partitions each")
        client = ChronicleClient.connect(shared, routing=True)
        async with client:
            routes = client.routes
            assert routes is not None and routes.topology is not None
            addresses = {m.address for m in routes.topology.members}
            # Each process advertises its own port, not the shared one.
            assert len(addresses) == 2 and shared not in addresses
            for n in range(40):
                await client.submit(f"acc-{n}", bank.OpenAccount(owner="ann"))
            assert {routes.owner_of(f"acc-{n}") for n in range(40)} == addresses
            assert routes.not_owner == 0  # every command went straight to its owner
        # Plain clients keep the shared port.
        async with connect(shared) as plain:
            assert (await plain.submit(command("acc-0", bank.Deposit(amount=1)))).version == 2
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(30) == 0
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
