"""Links between the consoles of a cluster, and every replica's lease
expiries on the Cluster page (docs/console.md, Cluster; scaling.md). Two
replicas on one PostgreSQL: ``near`` with its console on loopback (as an
operator reaches it through an SSH tunnel), ``far`` with its console on
every address (``--auth``) and advertised as ``replica-far.internal``.

- each replica advertises its console's URL with its membership, and
  ClusterService names it (``Member.console_address``; "" for a replica
  that serves none);
- a replica's pages link to another's console when a browser elsewhere can
  follow the link, and show a loopback console's address as text;
- the Cluster page shows how long every replica's leases and membership
  have left, not only this replica's."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from chronicle.v1 import cluster_service_pb2 as pb
from chronicle.v1 import cluster_service_pb2_grpc as pb_grpc
from domain_plugins import bank_account
from service.app import Application
from service.plugins.registry import Registry
from service.store.memory import MemoryStore
from tests.support.cluster import LEASE, replica, runners_of, settled
from tests.support.console import console, log_in, session_cookie, text_of
from tests.support.grpc_client import Client, running_server
from tests.support.http import request
from tests.support.security import POLICY, api_key_file, write
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

REGISTRY = Registry([bank_account.plugin])
FAR_HOST = "replica-far.internal"
FAR_KEY = "far-key-0123456789abcdef"


async def topology_of(client: Client) -> pb.Topology:
    stub = pb_grpc.ClusterServiceStub(client.channel)
    response: pb.GetTopologyResponse = await stub.GetTopology(pb.GetTopologyRequest(), timeout=10)
    return response.topology


@pytest.fixture
async def near_and_far(postgres_url: str, tmp_path: Path) -> AsyncIterator[tuple[Application, Client, Application]]:
    async with AsyncExitStack() as stack:
        near, client = await stack.enter_async_context(
            replica(postgres_url, registry=REGISTRY, console_listen="127.0.0.1:0")
        )
        far, _ = await stack.enter_async_context(
            replica(
                postgres_url,
                registry=REGISTRY,
                console_listen="0.0.0.0:0",
                advertise_address=f"{FAR_HOST}:50051",
                auth=True,
                policy_file=write(tmp_path / "policy.toml", POLICY),
                api_keys_file=api_key_file(tmp_path / "keys.toml", [(FAR_KEY, "root", ["teller"])]),
            )
        )

        async def both_known_with_leases() -> bool:
            topology = await topology_of(client)
            owners = set(topology.partition_owners)
            return len(topology.members) == 2 and {near.leases.member_id, far.leases.member_id} <= owners

        await eventually(both_known_with_leases, within=20, what="both replicas holding partitions")
        yield near, client, far


def far_console(far: Application) -> str:
    port = console(far).rpartition(":")[2]
    return f"http://{FAR_HOST}:{port}"


async def test_each_replica_advertises_its_consoles_url_and_cluster_service_names_it(
    near_and_far: tuple[Application, Client, Application],
) -> None:
    near, client, far = near_and_far
    members = {m.member_id: (m.address, m.console_address) for m in (await topology_of(client)).members}
    assert members == {
        near.leases.member_id: (near.address, f"http://{console(near)}"),
        # A wildcard console host stands for the replica's advertised host.
        far.leases.member_id: (f"{FAR_HOST}:50051", far_console(far)),
    }


async def test_a_replica_without_a_console_advertises_none() -> None:
    async with running_server(MemoryStore()) as (app, client):
        (member,) = (await topology_of(client)).members
    assert (member.address, member.console_address) == (app.address, "")


def members_rows(page: str) -> dict[str, list[str]]:
    body = page.partition('<table id="members">')[2].partition("</table>")[0].partition("<tbody>")[2]
    found = {}
    for row in re.findall(r"<tr>(.*?)</tr>", body, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        found[text_of(cells[0])] = cells
    return found


LAPSE = re.compile(r"(\d+\.\d) s")


def seconds(cell: str) -> float:
    match = LAPSE.fullmatch(text_of(cell))
    assert match is not None, cell
    return float(match.group(1))


async def test_the_cluster_page_links_to_a_reachable_console_and_shows_every_replicas_lease_expiry(
    near_and_far: tuple[Application, Client, Application],
) -> None:
    near, _, far = near_and_far
    page = (await request(console(near), "GET", "/cluster")).text
    rows = members_rows(page)
    mine, theirs = rows[near.leases.member_id], rows[far.leases.member_id]
    # member, address, partitions, this replica?, soonest lease lapses in, membership lapses in, console
    assert text_of(mine[3]) == "this replica" and text_of(mine[6]) == "this console"
    assert f'<a href="{far_console(far)}"' in theirs[6] and text_of(theirs[6]) == "its console"
    # The other replica's expiries, as the store keeps them: within one lease time.
    for cell in (theirs[4], theirs[5], mine[4], mine[5]):
        assert 0 <= seconds(cell) <= LEASE
    # Projection and reaction leases: each held one's lapse, whoever holds it.
    leases = page.partition('<table id="projection-leases">')[2].partition("</table>")[0].partition("<tbody>")[2]
    held = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in re.findall(r"<tr>(.*?)</tr>", leases, re.S)]
    assert held and all(0 <= seconds(row[3]) <= LEASE for row in held if text_of(row[1]) != "nobody")


async def test_a_projection_run_by_the_far_replica_links_to_its_console_and_one_run_near_shows_its_address_as_text(
    near_and_far: tuple[Application, Client, Application],
) -> None:
    """The Projections page of the replica that does not run it names the
    runner's console: a link to the far one; the near one's loopback
    address as text (from the operator's browser it would be the
    operator's own machine)."""
    near, _, far = near_and_far
    name = "bank.balances_by_owner"
    await eventually(lambda: len(runners_of([near, far], name)) == 1, within=20, what="one replica running it")
    (runner,) = runners_of([near, far], name)

    async def row_elsewhere() -> list[str]:
        if runner is far:
            page = await request(console(near), "GET", "/projections")
        else:
            far_address = f"127.0.0.1:{console(far).rpartition(':')[2]}"
            cookie = session_cookie(await log_in(far_address, FAR_KEY))
            page = await request(far_address, "GET", "/projections", headers={"Cookie": cookie})
        assert page.status == 200, page.text
        body = page.text.partition('<table id="projections">')[2]
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S):
            cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
            if cells and text_of(cells[0]) == name:
                return cells
        raise AssertionError(f"no row for {name}")

    async def named() -> bool:
        return text_of((await row_elsewhere())[5]) == "runs on another replica"

    await eventually(named, what="the runner named on the other replica's page")
    runs_on = (await row_elsewhere())[6]
    if runner is far:
        assert f'<a href="{far_console(far)}"' in runs_on and "its console" in text_of(runs_on)
    else:
        assert "<a" not in runs_on
        assert text_of(runs_on).endswith(f"console on http://{console(near)} (from that machine only)")


async def test_the_cluster_page_names_each_partition_owner_by_its_member_id_and_address_as_the_replicas_table(
    near_and_far: tuple[Application, Client, Application],
) -> None:
    """Partition owners were labelled r1, r2 by their index in the list,
    matching nothing else on the page: each is its member id's first eight
    characters (as the other pages name a replica), titled with its whole
    id and its address."""
    near, _, far = near_and_far

    await settled([near, far])
    page = (await request(console(near), "GET", "/cluster")).text
    members = members_rows(page)
    owners = re.findall(
        r'<li[^>]*title="([^"]*)"><span class="partition">\d+</span><span class="owner">([^<]*)</span>', page
    )
    assert len(owners) == 64
    expected = {
        app.leases.member_id: f"{app.leases.member_id} ({text_of(members[app.leases.member_id][1])})"
        for app in (near, far)
    }
    assert {label for _, label in owners} == {member_id[:8] for member_id in expected}
    assert all(title == expected[next(m for m in expected if m.startswith(label))] for title, label in owners)
