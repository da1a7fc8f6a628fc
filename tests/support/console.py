"""The console over HTTP in tests: a server with authentication and the
console on, its address, logging in with a credential, the session cookie."""

from __future__ import annotations

import asyncio
import html
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from service.app import Application
from service.settings import Settings
from tests.support.grpc_client import with_jwt_auth
from tests.support.http import Answer, request
from tests.support.security import JwtIssuer, api_key_file

KEY = "console-http-key-0123456789"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def authenticated(tmp_path: Path, **overrides: object) -> Settings:
    return replace(
        with_jwt_auth(tmp_path, JwtIssuer()),
        api_keys_file=api_key_file(tmp_path / "keys.toml", [(KEY, "root", ["teller"])]),
        **{"console_listen": "127.0.0.1:0", **overrides},  # type: ignore[arg-type]
    )


def console(app: Application) -> str:
    assert app.console is not None
    return app.console.address


async def log_in(address: str, credential: str) -> Answer:
    return await request(
        address,
        "POST",
        "/login",
        headers={**FORM, "Origin": f"http://{address}"},
        body=urlencode({"credential": credential}).encode(),
    )


def text_of(markup: str) -> str:
    """What a browser shows of ``markup``: its text, entities resolved."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


async def row_of(app: Application, page: str, name: str) -> list[str]:
    """The row of ``name`` (its first cell) in the table of ``app``'s console
    page ``page`` (``/projections``: the table ``projections``), each cell
    as markup."""
    answer = await request(console(app), "GET", page)
    assert answer.status == 200
    body = answer.text.partition(f'<table id="{page.strip("/")}">')[2].partition("</table>")[0]
    for row in re.findall(r"<tr>(.*?)</tr>", body, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        if cells and text_of(cells[0]) == name:
            return cells
    raise AssertionError(f"no row for {name} on {page}")


def session_cookie(answer: Answer) -> str:
    (cookie,) = answer.all("set-cookie")
    return cookie.split(";")[0]


async def server_sent(address: str, path: str, count: int, cookie: str = "") -> list[tuple[str, Any, str]]:
    """The first ``count`` messages (event name, data, id) of the console's
    stream at ``path``, read as a browser's EventSource reads them, then
    the connection closed (as a stream cut between two messages)."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        extra = f"Cookie: {cookie}\r\n" if cookie else ""
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {address}\r\n{extra}\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        seen: list[tuple[str, Any, str]] = []
        async with asyncio.timeout(20):  # a broken build fails, not hangs
            while len(seen) < count:
                raw = (await reader.readuntil(b"\n\n")).decode()
                lines = [line for line in raw.strip().split("\n") if not line.startswith(":")]
                fields = dict(line.partition(": ")[::2] for line in lines)
                if "event" in fields:
                    seen.append((fields["event"], json.loads(fields["data"]), fields.get("id", "")))
        return seen
    finally:
        writer.close()
