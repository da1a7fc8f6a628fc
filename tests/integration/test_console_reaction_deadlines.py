"""A reaction's console page (``/reactions/NAME``) says how many deadlines
its processes have pending and when the soonest is due, and how many fired
(GetReaction's ``deadlines_fired``), over a real socket with a real server
(the saga of tests/support/deadline_saga.py)."""

from __future__ import annotations

import calendar
import re
import time
from pathlib import Path

import pytest

from chronicle.v1 import reaction_service_pb2 as reaction_pb
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.plugins.registry import Registry
from service.store.memory import MemoryStore
from tests.support import deadline_saga, failing_deadline
from tests.support.deadline_saga import REACTION
from tests.support.grpc_client import command, running_server
from tests.support.http import request
from tests.support.waiting import eventually


def _said(page: str) -> str:
    found = re.search(r'<p class="summary" id="reaction-deadlines">(.*?)</p>', page, re.S)
    assert found is not None, page
    return re.sub(r"<[^>]+>", "", found.group(1))


async def test_a_reactions_page_counts_its_pending_deadlines_and_says_the_soonest() -> None:
    async with running_server(
        MemoryStore(),
        registry=Registry([deadline_saga.plugin]),
        anonymous_admin=True,
        console_listen="127.0.0.1:0",
        poll_seconds=0.05,
    ) as (app, client):
        assert app.console is not None
        address, page = app.console.address, "/reactions/" + REACTION
        assert _said((await request(address, "GET", page)).text).startswith("0 deadline(s) of its processes pending (")
        await client.submit(command("o-1", box.CreateBox(name="book")))
        await client.submit(command("o-2", box.CreateBox(name="after-1200000")))  # 20 minutes

        async def scheduled() -> bool:
            return _said((await request(address, "GET", page)).text).startswith("2 deadline(s)")

        await eventually(scheduled, what="two deadlines scheduled")
        said = _said((await request(address, "GET", page)).text)
    # The soonest: o-1's, 10 minutes after it was placed (to the second, in UTC).
    due = re.search(r"the soonest due at (\S+ \S+)", said)
    assert due is not None, said
    seconds = calendar.timegm(time.strptime(due.group(1), "%Y-%m-%d %H:%M:%SZ"))
    assert 9 * 60 < seconds - time.time() <= 10 * 60 + 1


def _counters(page: str) -> str:
    found = re.search(r'<p class="summary" id="reaction-counters">(.*?)</p>', page, re.S)
    assert found is not None, page
    return re.sub(r"<[^>]+>", "", found.group(1))


async def test_a_reactions_page_counts_the_deadlines_fired() -> None:
    async with running_server(
        MemoryStore(),
        registry=Registry([deadline_saga.plugin]),
        anonymous_admin=True,
        console_listen="127.0.0.1:0",
        poll_seconds=0.05,
    ) as (app, client):
        assert app.console is not None
        address, page = app.console.address, "/reactions/" + REACTION
        assert "; 0 deadline(s) of its processes fired." in _counters((await request(address, "GET", page)).text)
        await client.submit(command("o-1", box.CreateBox(name="after-1")))  # due a millisecond after

        async def fired() -> bool:
            return "; 1 deadline(s) of its processes fired." in _counters((await request(address, "GET", page)).text)

        await eventually(fired, what="o-1's deadline fired and counted")
        status = await client.reactions.GetReaction(reaction_pb.GetReactionRequest(name=REACTION))
        assert (status.deadlines_fired, status.deadlines) == (1, 0)


async def test_a_reactions_page_shows_a_parked_deadline_by_its_process_and_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = tmp_path / "bug"
    flag.touch()
    monkeypatch.setenv(failing_deadline.FLAG_ENV, str(flag))
    async with running_server(
        MemoryStore(),
        registry=Registry([failing_deadline.parks]),
        anonymous_admin=True,
        console_listen="127.0.0.1:0",
        poll_seconds=0.05,
    ) as (app, client):
        assert app.console is not None
        address, page = app.console.address, "/reactions/" + failing_deadline.PARKS
        await client.submit(command("bad-1", box.CreateBox(name="after-50")))

        async def parked() -> bool:
            return "deadline payment of process bad-1" in (await request(address, "GET", page)).text

        await eventually(parked, what="the deadline parked, shown by its process and name")
        shown = (await request(address, "GET", page)).text
    assert "RuntimeError: the bug of order bad-1" in shown
    assert 'href="/aggregates/bad-1"' in shown  # the scheduling event's aggregate
