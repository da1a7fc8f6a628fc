"""A reaction with ``on_failure="park"`` counts a command's failures (for a
plugin's bug) in the store, not in the memory of the server that met them:
a server that restarts between two failures (a crash loop, a rolling
update) goes on from the stored count, so the poison command is parked at
its ``max_attempts``-th failure in total and the reaction moves on. Over a
real socket, on each store, each server a new one on the same database; and
on PostgreSQL, the count going on on the replica the reaction's lease moves
to when the one running it dies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path

import pytest

from chronicle.v1 import reaction_service_pb2 as pb
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.app import Application
from service.plugins import CommandContext, Plugin, ProjectedEvent, Send
from service.plugins.registry import Registry
from service.processing.reaction_failures import FAILURES_KEY
from service.store.base import StoreAdapter
from service.store.memory import MemoryStore
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore
from tests.support.cluster import replica
from tests.support.grpc_client import Client, command, running_server, submit_retrying
from tests.support.waiting import eventually

REACTION = "poison.relay"
MAX_ATTEMPTS = 3
# Names of boxes whose sink handler raises (a bug only a fixed plugin
# cures), and how many times the handler met each.
BROKEN: set[str] = set()
MET: dict[str, int] = {}


def poison_plugin(retry_seconds: float) -> Plugin:
    """Boxes created in a "Feed" are relayed as a RenameBox to the "Sink"
    aggregate sink-<name>; the sink's handler raises on the names in
    BROKEN. A failed command is tried again ``retry_seconds`` later."""
    plugin = Plugin("poison")
    feed = plugin.aggregate("Feed", state=box.Box)
    sink = plugin.aggregate("Sink", state=box.Box)

    @feed.command(box.CreateBox)
    def create(command: box.CreateBox, state: box.Box, context: CommandContext) -> box.BoxCreated:
        return box.BoxCreated(name=command.name)

    @feed.apply(box.BoxCreated)
    def _created(state: box.Box, event: box.BoxCreated) -> None:
        state.name = event.name

    @sink.command(box.RenameBox)
    def rename(command: box.RenameBox, state: box.Box, context: CommandContext) -> box.BoxRenamed:
        MET[command.name] = MET.get(command.name, 0) + 1
        if command.name in BROKEN:
            raise RuntimeError(f"a bug in the sink on {command.name!r}")
        return box.BoxRenamed(name=command.name)

    @sink.apply(box.BoxRenamed)
    def _renamed(state: box.Box, event: box.BoxRenamed) -> None:
        state.name = event.name

    relay = plugin.reaction(
        REACTION, aggregate_types=["Feed"], on_failure="park", max_attempts=MAX_ATTEMPTS, retry_seconds=retry_seconds
    )

    @relay.on(box.BoxCreated)
    def pass_on(event: box.BoxCreated, envelope: ProjectedEvent, state: None) -> Send:
        return Send(f"sink-{event.name}", box.RenameBox(name=event.name))

    return plugin


Database = Callable[[], AbstractAsyncContextManager[StoreAdapter]]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """Opens the test's database anew for each server (the memory store:
    the same one, as an application restarted in its process keeps it)."""
    BROKEN.clear()
    MET.clear()
    memory = MemoryStore()
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""

    @asynccontextmanager
    async def opened() -> AsyncIterator[StoreAdapter]:
        if request.param == "memory":
            yield memory
            return
        store: StoreAdapter = PostgresStore(url, pool_size=2) if url else SqliteStore(tmp_path / "events.db")
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    await memory.open()
    yield opened
    await memory.close()


@asynccontextmanager
async def server(database: Database, *, retry_seconds: float = 60.0) -> AsyncIterator[tuple[StoreAdapter, Client]]:
    """A server over the database, opened anew. Its failed commands are
    tried again a minute later unless told: longer than a test's server
    lives, so each server meets a failing command once, when it starts."""
    registry = Registry([poison_plugin(retry_seconds)])
    async with (
        database() as store,
        running_server(store, registry=registry, anonymous_admin=True, poll_seconds=0.05) as (_, client),
    ):
        yield store, client


async def status(client: Client) -> pb.ReactionStatus:
    found: pb.ReactionStatus = await client.reactions.GetReaction(pb.GetReactionRequest(name=REACTION))
    return found


async def parked(client: Client) -> list[pb.ParkedCommand]:
    listed = await client.reactions.ListParkedCommands(pb.ListParkedCommandsRequest(reaction=REACTION))
    return list(listed.commands)


async def failed_there(client: Client, name: str, times: int) -> None:
    """Wait until the sink has met ``name`` ``times`` times in all and the
    reaction stands stopped at it (its failure committed, when counted)."""

    async def stopped() -> bool:
        return MET.get(name, 0) >= times and "HANDLER_FAILED" in (await status(client)).error

    await eventually(stopped, what=f"the reaction stopped at {name!r}'s failure number {times}")


async def caught_up(client: Client) -> pb.ReactionStatus:
    async def there() -> bool:
        now = await status(client)
        return bool(now.position == now.log_head and not now.error)

    await eventually(there, what="the reaction caught up")
    return await status(client)


async def test_a_command_failing_once_per_server_is_parked_at_max_attempts_in_total(database: Database) -> None:
    BROKEN.add("poison")
    for lifetime in range(1, MAX_ATTEMPTS):
        async with server(database) as (_, client):
            if lifetime == 1:
                await client.submit(command("feed-poison", box.CreateBox(name="poison")))
            await failed_there(client, "poison", lifetime)
            assert MET["poison"] == lifetime  # once per server: each starts by trying it again
            assert await parked(client) == []
    async with server(database) as (store, client):
        now = await caught_up(client)  # its third failure, the first of this server's: parked
        assert MET["poison"] == MAX_ATTEMPTS
        (command_parked,) = await parked(client)
        assert (command_parked.aggregate_id, command_parked.reason) == ("sink-poison", "HANDLER_FAILED")
        assert now.parked == 1
        # The count went with the event it was for: nothing left to take.
        assert await store.load_document(REACTION, FAILURES_KEY) is None


async def test_the_count_is_written_on_failure_and_deleted_with_its_event(database: Database) -> None:
    BROKEN.add("flaky")
    async with server(database, retry_seconds=0.2) as (store, client):
        await client.submit(command("feed-flaky", box.CreateBox(name="flaky")))
        await failed_there(client, "flaky", 1)
        assert await store.load_document(REACTION, FAILURES_KEY) is not None
        BROKEN.discard("flaky")  # a fixed plugin: tried again, it goes through
        await caught_up(client)
        assert MET["flaky"] == 2
        assert await parked(client) == []
        # Deleted by the commit that moved the checkpoint past its event.
        assert await store.load_document(REACTION, FAILURES_KEY) is None


def running_it(apps: list[Application]) -> list[Application]:
    return [app for app in apps if app.reactions.runners[REACTION].holds_lease]


async def die(app: Application) -> None:
    """The replica dies without giving its leases up."""
    await app.reactions.stop()
    await app.projections.stop()
    await app.leases.stop(leave=False)
    await app.server.stop(0)


def stopped_on_its_runner(apps: list[Application], failures: int) -> bool:
    """The command failed ``failures`` times in all, and the one replica
    running the reaction stands stopped at it."""
    holders = running_it(apps)
    return (
        MET.get("poison", 0) == failures
        and len(holders) == 1
        and bool(holders[0].reactions.runners[REACTION].error_now)
    )


@pytest.mark.postgres
async def test_the_count_goes_on_on_the_replica_the_lease_moves_to(postgres_url: str) -> None:
    # Three replicas: the one running the reaction meets the command once,
    # then dies; the next takes the reaction over after the lease time,
    # meets it once and dies; the third parks it at its first failure.
    BROKEN.clear()
    MET.clear()
    BROKEN.add("poison")
    registry = Registry([poison_plugin(60.0)])
    async with AsyncExitStack() as stack:
        cluster = [await stack.enter_async_context(replica(postgres_url, registry=registry)) for _ in range(3)]
        alive = [app for app, _ in cluster]
        await eventually(lambda: len(running_it(alive)) == 1, within=20, what="one replica running the reaction")
        await submit_retrying(cluster[0][1], command("feed-poison", box.CreateBox(name="poison")))
        for failures in range(1, MAX_ATTEMPTS):
            await eventually(
                partial(stopped_on_its_runner, alive, failures),
                within=20,
                what=f"failure {failures}, on the replica running the reaction",
            )
            (holder,) = running_it(alive)
            await die(holder)
            alive.remove(holder)
        (last,) = alive
        client = next(c for app, c in cluster if app is last)
        now = await caught_up(client)
        assert MET["poison"] == MAX_ATTEMPTS  # once on each replica
        assert now.parked == 1
        assert [p.reason for p in await parked(client)] == ["HANDLER_FAILED"]
