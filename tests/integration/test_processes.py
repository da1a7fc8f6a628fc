"""Several server processes on one port (SO_REUSEPORT)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import cluster_service_pb2, cluster_service_pb2_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient
from service.processes import START_SECONDS
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
    # On memory:// each process would hold every lease and keep data of its
    # own (one aggregate could be opened twice); a SQLite file shares its
    # leases but takes one writer at a time: the processes would only queue.
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


def test_settings_every_process_would_refuse_are_refused_once_before_any_starts(postgres_url: str) -> None:
    result = serve_until_exit("--database-url", postgres_url, "--processes", "3", listen=f"0.0.0.0:{free_port()}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("INSECURE_LISTEN") == 1


def _wait_for_children(parent: subprocess.Popen[bytes], count: int, without: int | None = None) -> list[int]:
    def there() -> list[int] | None:
        children = _children(parent.pid)
        return children if len(children) == count and without not in children else None

    found = wait_for(there, timeout=30.0)
    assert found is not None, (_children(parent.pid), parent.poll())
    return found


def wait_for(probe: Callable[[], list[int] | None], *, timeout: float) -> list[int] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.1)
    return None


def test_a_process_that_dies_is_replaced_and_the_port_serves_on(postgres_url: str) -> None:
    address = f"127.0.0.1:{free_port()}"
    parent = _serve(address, postgres_url, "--processes", "2")
    try:
        wait_until_serving(address)
        victim, _ = _wait_for_children(parent, 2)
        # Past START_SECONDS: it served, so it is replaced, not a failed start.
        time.sleep(max(0.0, START_SECONDS + 0.5 - _age(victim)))
        os.kill(victim, signal.SIGKILL)
        _wait_for_children(parent, 2, without=victim)
        wait_until_serving(address)
        assert parent.poll() is None
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(30) == 0
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


def test_a_process_that_ends_right_after_its_start_stops_the_others(postgres_url: str) -> None:
    address = f"127.0.0.1:{free_port()}"
    parent = _serve(address, postgres_url, "--processes", "2")
    try:
        victim, other = _wait_for_children(parent, 2)
        os.kill(victim, signal.SIGKILL)
        assert parent.wait(30) == 1  # not started again and again: the supervisor gives up
        assert not Path(f"/proc/{other}").exists()  # stopped and reaped
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


def _age(pid: int) -> float:
    """Seconds since process ``pid`` started."""
    ticks = int((Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")
