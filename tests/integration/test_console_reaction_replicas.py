"""A reaction's page in a cluster (two replicas on one PostgreSQL, each with
its console): its parked commands are listed on both (they are in the
store), but only the replica that runs the reaction replays or dismisses
them (docs/console.md). The other replica's page offers no button and names
the replica that runs it; a form posted there anyway is answered with
REACTION_RUNS_ELSEWHERE naming that replica, and changes nothing."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from urllib.parse import urlencode

import pytest

from chronicle.v1 import reaction_service_pb2 as pb
from domain_plugins import bank_account
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.app import Application
from service.plugins.registry import Registry
from tests.support import plugins
from tests.support.cluster import projections_settled, replica
from tests.support.console import FORM, console, text_of
from tests.support.grpc_client import Client, command, submit_retrying
from tests.support.http import request
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

RELAY = "gates.relay"
REGISTRY = Registry([bank_account.plugin, plugins.gates])


def runs_it(apps: Sequence[Application]) -> list[Application]:
    return [app for app in apps if app.reactions.runners[RELAY].holds_lease]


@pytest.fixture
async def pair(postgres_url: str) -> AsyncIterator[list[tuple[Application, Client]]]:
    async with AsyncExitStack() as stack:
        replicas = [
            await stack.enter_async_context(
                replica(postgres_url, registry=REGISTRY, console_listen="127.0.0.1:0", anonymous_admin=True)
            )
            for _ in range(2)
        ]
        apps = [app for app, _ in replicas]

        def settled() -> bool:
            # Every lease held at its fair share: the reaction stays where it runs now.
            return projections_settled(apps, REGISTRY, "bank.balances_by_owner") and len(runs_it(apps)) == 1

        await eventually(settled, within=20, what="the leases shared out")
        yield replicas


async def test_only_the_replica_that_runs_a_reaction_offers_its_actions_and_the_other_names_it(
    pair: list[tuple[Application, Client]],
) -> None:
    apps = [app for app, _ in pair]
    (runner,) = runs_it(apps)
    other, client = next((app, client) for app, client in pair if app is not runner)
    await submit_retrying(client, command("source", box.ArchiveBox()))
    await submit_retrying(client, command("source", box.RenameBox(name="n1")))
    page = "/reactions/" + RELAY

    async def parked_on_both() -> bool:
        shown = [(await request(console(app), "GET", page)).text for app in apps]
        return all("none parked" not in text and 'id="parked"' in text for text in shown)

    await eventually(parked_on_both, within=20, what="the parked command listed on both replicas")
    (parked,) = (await client.reactions.ListParkedCommands(pb.ListParkedCommandsRequest(reaction=RELAY))).commands
    here = await request(console(runner), "GET", page)
    named = f"{runner.leases.member.address} ({runner.leases.member_id[:8]})"
    there_text = ""

    async def named_there() -> bool:
        # As the other replica's last heartbeat saw the leases.
        nonlocal there_text
        there_text = (await request(console(other), "GET", page)).text
        return named in text_of(there_text)

    await eventually(named_there, within=20, what="the runner named on the other replica's page")
    # The other replica's page: no button, and the replica that runs the reaction named.
    assert 'action="/reactions/gates.relay/replay"' in here.text
    assert "/replay" not in there_text and "/dismiss" not in there_text
    assert "Only the replica that runs this reaction replays or dismisses its parked commands" in text_of(there_text)
    # A form posted there anyway (its own session's token) is the RPC's refusal, naming the runner.
    address = console(other)
    opened = await request(address, "GET", "/projections")  # its Rebuild forms carry the session's token
    cookie = opened.all("set-cookie")[0].split(";")[0]
    token = re.search(r'name="csrf_token" value="([^"]+)"', opened.text)
    assert token is not None
    refused = await request(
        address,
        "POST",
        page + "/dismiss",
        headers={**FORM, "Origin": f"http://{address}", "Cookie": cookie},
        body=urlencode({"csrf_token": token.group(1), "command_id": parked.command_id}).encode(),
    )
    assert refused.status == 409 and "REACTION_RUNS_ELSEWHERE" in refused.text
    assert runner.leases.member.address in text_of(refused.text)
    listed = await client.reactions.ListParkedCommands(pb.ListParkedCommandsRequest(reaction=RELAY))
    assert [c.command_id for c in listed.commands] == [parked.command_id]
