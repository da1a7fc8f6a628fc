"""The console's pages agree with one another and with what a GET says
(docs/console.md): a POST to an address that is neither an action nor a
page (``/groups/NAME/nope``) answers 404 as a GET of it does, not 405; a
POST to a page answers 405 with ``Allow: GET``. A real server, a real HTTP
client, with a session's CSRF token (the refusal is not the form's)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode

import pytest

from service.app import Application, describe, start
from service.client import ChronicleClient
from service.store.memory import MemoryStore
from tests.support.console import FORM, authenticated, console
from tests.support.grpc_client import TEST_SETTINGS
from tests.support.http import request


@pytest.fixture
async def app() -> AsyncIterator[Application]:
    settings = replace(TEST_SETTINGS, console_listen="127.0.0.1:0", anonymous_admin=True)
    served = await start(settings, store=MemoryStore())
    try:
        async with ChronicleClient.connect(served.address) as client:
            await client.groups.create("billing", aggregate_types=["Account"])
        yield served
    finally:
        await served.stop(grace=0.5, drain=0)


async def session_of(address: str) -> tuple[str, str]:
    """An anonymous session's cookie and CSRF token."""
    page = await request(address, "GET", "/projections")
    (cookie,) = page.all("set-cookie")
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None
    return cookie.split(";")[0], found.group(1)


@pytest.mark.parametrize("path", ["/groups/billing/nope", "/reactions/some.reaction/nope", "/nowhere"])
async def test_a_post_to_an_address_that_is_no_action_and_no_page_is_not_found_as_its_get_is(
    app: Application, path: str
) -> None:
    address = console(app)
    cookie, token = await session_of(address)
    headers = {**FORM, "Cookie": cookie, "Origin": f"http://{address}"}
    posted = await request(address, "POST", path, headers=headers, body=urlencode({"csrf_token": token}).encode())
    got = await request(address, "GET", path, headers={"Cookie": cookie})
    assert (posted.status, got.status) == (404, 404), posted.text


async def test_a_post_to_a_page_is_a_wrong_method(app: Application) -> None:
    address = console(app)
    cookie, token = await session_of(address)
    headers = {**FORM, "Cookie": cookie, "Origin": f"http://{address}"}
    for path in ("/log", "/groups/billing", "/groups/billing/confirm"):
        posted = await request(address, "POST", path, headers=headers, body=urlencode({"csrf_token": token}).encode())
        assert (posted.status, posted.header("allow")) == (405, "GET"), path


async def test_the_startup_lines_give_a_console_address_an_operator_can_open(tmp_path: Path) -> None:
    """A console bound to every interface was announced as
    ``http://0.0.0.0:PORT/``, which no browser opens: it says it listens on
    all interfaces, with the URL at the host this replica is advertised at."""
    wide = await start(authenticated(tmp_path, console_listen="0.0.0.0:0"), store=MemoryStore())
    try:
        port = console(wide).rpartition(":")[2]
        host = wide.leases.member.address.rpartition(":")[0]
        wide_lines = describe(wide).splitlines()
    finally:
        await wide.stop(grace=0.5, drain=0)
    narrow = await start(replace(TEST_SETTINGS, console_listen="127.0.0.1:0"), store=MemoryStore())
    try:
        narrow_lines = describe(narrow).splitlines()
        narrow_address = console(narrow)
    finally:
        await narrow.stop(grace=0.5, drain=0)
    assert f"  console on all interfaces, port {port}: http://{host}:{port}/" in wide_lines
    assert not any("0.0.0.0" in line for line in wide_lines if "console" in line)
    assert f"  console on http://{narrow_address}/" in narrow_lines


async def test_the_startup_lines_set_the_commands_only_reactions_send_apart() -> None:
    """The banner listed the bank's CompleteTransfer, FailTransfer and
    RecordRefund with the commands clients send, though every client's is
    refused (COMMAND_INTERNAL): they are named apart, as ListTypes does."""
    app = await start(TEST_SETTINGS, store=MemoryStore())
    try:
        lines = describe(app).splitlines()
    finally:
        await app.stop(grace=0.5, drain=0)
    (transfer,) = [line for line in lines if line.startswith("    Transfer: ")]
    sent, _, only = transfer.removeprefix("    Transfer: ").partition(" (reactions only: ")
    assert "bank.v1.TransferMoney" in sent.split(", ")
    assert not {"bank.v1.CompleteTransfer", "bank.v1.FailTransfer", "bank.v1.RecordRefund"} & set(sent.split(", "))
    assert only.rstrip(")").split(", ") == ["bank.v1.CompleteTransfer", "bank.v1.FailTransfer", "bank.v1.RecordRefund"]
