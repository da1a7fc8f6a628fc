"""Deadlines of a reaction's processes on a real server process, with a real
client, on PostgreSQL and SQLite (the saga of tests/support/deadline_saga.py:
an order's "payment" deadline cancels it unless it is paid first):

- a deadline scheduled before the server is killed (SIGKILL) fires once
  after it is started again, and its command is accepted once; a cancelled
  one never fires; GetProcessState and GetReaction show what is pending;
- a deadline whose answer (the payment) was committed before it was due
  does not fire, even when the reaction is behind the log past the due
  time (held on purpose by an event it fails on)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest

from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.client import ChronicleClient, RetryPolicy
from service.client.errors import NotFound
from tests.support.deadline_saga import HOLD_ENV, REACTION
from tests.support.processes import Replica, cli
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow]

FLAGS = [
    "--no-example-plugins",
    "--plugin",
    "tests.support.deadline_saga:plugin",
    "--anonymous-admin",
    "--lease-seconds",
    "1",
]
PATIENT = RetryPolicy(max_attempts=200, initial_backoff=0.05, max_backoff=0.25)


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/events.db"
    request.applymarker(pytest.mark.postgres)
    return str(request.getfixturevalue("postgres_url"))


async def _types(client: ChronicleClient, order_id: str) -> list[str]:
    return [event.envelope.event_type.removeprefix("box.v1.") async for event in client.read(order_id)]


def _us(timestamp: object) -> int:
    seconds, nanos = getattr(timestamp, "seconds"), getattr(timestamp, "nanos")  # noqa: B009
    return int(seconds) * 1_000_000 + int(nanos) // 1000


async def test_a_deadline_fires_once_after_a_kill_and_a_cancelled_one_never(database_url: str, tmp_path: Path) -> None:
    server = Replica(database_url, log_path=tmp_path / "server.log", extra=FLAGS)
    try:
        server.start()
        async with ChronicleClient.connect(server.address, retry=PATIENT) as client:
            # Due 10 s after: everything before the kill below must happen first,
            # on a loaded machine too (the status and the CLI see it pending).
            await client.submit("o-1", box.CreateBox(name="after-10000"))
            await client.submit("o-2", box.CreateBox(name="after-10000"))
            await client.submit("o-2", box.RenameBox(name="paid"))
            placed, *_ = [event async for event in client.read("o-1")]
            due_us = _us(placed.envelope.timestamp) + 10_000_000

            async def scheduled() -> bool:
                status = await client.reactions.get(REACTION)
                return status.position == status.log_head and status.deadlines == 1

            await eventually(scheduled, what="o-1's deadline scheduled and o-2's cancelled")
            state = await client.reactions.state(REACTION, "o-1")
            assert [(d.name, _us(d.due)) for d in state.deadlines] == [("payment", due_us)]
            assert _us(state.started) == _us(placed.envelope.timestamp) == _us(state.updated)
            status = await client.reactions.get(REACTION)
            assert _us(status.next_deadline) == due_us
            assert list((await client.reactions.state(REACTION, "o-2")).deadlines) == []
            shown = json.loads(
                (await asyncio.to_thread(cli, "reaction", REACTION, "--state", "o-1", server=server.address)).stdout
            )
            assert shown["deadlines"] == [{"name": "payment", "due": state.deadlines[0].due.ToJsonString()}]
            shown = json.loads((await asyncio.to_thread(cli, "reaction", REACTION, server=server.address)).stdout)
            assert (shown["deadlines"], shown["next_deadline"]) == ("1", status.next_deadline.ToJsonString())
            assert shown["deadlines_fired"] == "0"
        assert time.time_ns() // 1000 < due_us, "the kill should come before the deadline is due"
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        server.start()
        async with ChronicleClient.connect(server.address, retry=PATIENT) as client:

            async def cancelled() -> bool:
                return await _types(client, "o-1") == ["BoxCreated", "BoxArchived"]

            await eventually(cancelled, what="o-1 cancelled by its deadline")
            archived = [event async for event in client.read("o-1")][1]
            assert _us(archived.envelope.timestamp) >= due_us  # not before it was due
            assert archived.envelope.causation_id == placed.envelope.event_id
            await asyncio.sleep(1.5)  # long enough for a second firing to show
            assert await _types(client, "o-1") == ["BoxCreated", "BoxArchived"]
            assert await _types(client, "o-2") == ["BoxCreated", "BoxRenamed"]
            status = await client.reactions.get(REACTION)
            assert (status.deadlines, status.HasField("next_deadline")) == (0, False)
            assert (status.accepted, status.replayed) == (1, 0)  # its command, accepted once
            assert status.deadlines_fired == 1  # fired once, since this server started again
            shown = json.loads((await asyncio.to_thread(cli, "reaction", REACTION, server=server.address)).stdout)
            assert shown["deadlines_fired"] == "1"
            with pytest.raises(NotFound):
                await client.reactions.state(REACTION, "o-1")  # the process is over
    finally:
        if server.running:
            server.stop()


async def test_a_deadline_answered_before_it_was_due_does_not_fire_from_behind(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    monkeypatch.setenv(HOLD_ENV, str(hold))  # the server process inherits it
    server = Replica(database_url, log_path=tmp_path / "server.log", extra=FLAGS)
    try:
        server.start()
        async with ChronicleClient.connect(server.address, retry=PATIENT) as client:
            await client.submit("o-1", box.CreateBox(name="after-2000"))
            placed, *_ = [event async for event in client.read("o-1")]
            due_us = _us(placed.envelope.timestamp) + 2_000_000

            async def scheduled() -> bool:
                return (await client.reactions.get(REACTION)).deadlines == 1

            await eventually(scheduled, what="o-1's deadline scheduled")
            await client.submit("h-1", box.CreateBox(name="hold"))  # the reaction fails on it while held

            async def held() -> bool:
                return (await client.reactions.get(REACTION)).error != ""

            await eventually(held, what="the reaction held behind h-1")
            await client.submit("o-1", box.RenameBox(name="paid"))  # committed before the deadline is due
            assert time.time_ns() // 1000 < due_us
            await asyncio.sleep(max(0.0, (due_us - time.time_ns() // 1000) / 1e6) + 1.5)
            status = await client.reactions.get(REACTION)
            assert status.error != "" and status.position < status.log_head  # still behind, past due
            assert await _types(client, "o-1") == ["BoxCreated", "BoxRenamed"]
            hold.unlink()

            async def caught_up() -> bool:
                status = await client.reactions.get(REACTION)
                return status.position == status.log_head and status.error == ""

            await eventually(caught_up, what="the reaction caught up")
            await asyncio.sleep(1.5)  # long enough for a firing to show
            assert await _types(client, "o-1") == ["BoxCreated", "BoxRenamed"]  # paid: never cancelled
            state = await client.reactions.state(REACTION, "o-1")
            assert list(state.deadlines) == []
            assert '"paid"' in state.state_json
            assert (await client.reactions.get(REACTION)).deadlines == 1  # h-1's, due in 10 minutes
    finally:
        if server.running:
            server.stop()
