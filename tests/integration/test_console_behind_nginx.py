"""The nginx example of docs/console.md (Behind a reverse proxy), taken
from the page as it is written and run: TLS ends at a real nginx, which
passes the console's paths under the prefix to a console on plain HTTP
with ``--console-path-prefix`` and ``--console-public-origin``. Through
it: the login from the public origin (a Secure cookie under the prefix),
an aggregate whose id holds an encoded "/" (the path passed still
encoded), a form's redirect, and the live tail's events as they come.

Skipped where nginx is not installed (``apt-get install nginx-light``)."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application, start
from service.store.memory import MemoryStore
from tests.support.console import FORM, console, session_cookie
from tests.support.grpc_client import TEST_SETTINGS, command, connect
from tests.support.http import Answer, request
from tests.support.security import POLICY, Authority, api_key_file, bearer, server_tls_files, write
from tests.support.waiting import eventually

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")

DOC = Path(__file__).parents[2] / "docs" / "console.md"
PREFIX = "/chronicle"
ROOT_KEY = "nginx-root-key-0123456789"
ODD_ID = "acc/1 ü"  # an encoded "/" and a non-ASCII letter in the path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def documented_config() -> str:
    """The nginx example of console.md, as the page gives it."""
    section = DOC.read_text().partition("## Behind a reverse proxy")[2].partition("\n## ")[0]
    (config,) = re.findall(r"```nginx\n(.*?)```", section, re.S)
    return str(config)


@dataclass
class Proxy:
    address: str  # 127.0.0.1:port, where nginx serves TLS
    origin: str  # https://ops.example.com:port, as a browser there names it
    tls: ssl.SSLContext


@pytest.fixture
def nginx_port() -> int:
    return free_port()


@pytest.fixture
async def app(tmp_path: Path, nginx_port: int) -> AsyncIterator[Application]:
    settings = replace(
        TEST_SETTINGS,
        auth=True,
        policy_file=write(tmp_path / "policy.toml", POLICY),
        api_keys_file=api_key_file(tmp_path / "keys.toml", [(ROOT_KEY, "root", ["operator", "teller"])]),
        console_listen="127.0.0.1:0",
        console_path_prefix=PREFIX,
        console_public_origin=f"https://ops.example.com:{nginx_port}",
    )
    started = await start(settings, store=MemoryStore())
    try:
        async with connect(started.address, interceptors=bearer(ROOT_KEY)) as client:
            await client.submit(command(ODD_ID, bank.OpenAccount(owner="ann")))
        yield started
    finally:
        await started.stop(grace=0.5, drain=0)


@pytest.fixture
def proxy(app: Application, tmp_path: Path, nginx_port: int) -> Iterator[Proxy]:
    assert NGINX is not None
    authority = Authority()
    cert_file, key_file = server_tls_files(tmp_path, authority)
    config = documented_config()
    # The page's addresses and files, made this test's: nginx on a free port, the console where it listens.
    config = config.replace("listen 443 ssl;", f"listen 127.0.0.1:{nginx_port} ssl;")
    config = config.replace("listen 80;", f"listen 127.0.0.1:{free_port()};")
    config = config.replace("/etc/nginx/tls/ops.example.com.pem", cert_file)
    config = config.replace("/etc/nginx/tls/ops.example.com.key", key_file)
    config = config.replace("127.0.0.1:8081", console(app))
    temp = tmp_path / "nginx"
    temp.mkdir()
    (temp / "nginx.conf").write_text(
        f"daemon off;\nmaster_process off;\npid {temp}/nginx.pid;\nerror_log {temp}/error.log;\n"
        "events {}\n"
        f"http {{\naccess_log off;\nclient_body_temp_path {temp}/body;\nproxy_temp_path {temp}/proxy;\n"
        f"fastcgi_temp_path {temp}/fastcgi;\nuwsgi_temp_path {temp}/uwsgi;\nscgi_temp_path {temp}/scgi;\n"
        f"{config}\n}}\n"
    )
    process = subprocess.Popen([NGINX, "-p", str(temp), "-c", str(temp / "nginx.conf")], stderr=subprocess.PIPE)
    try:
        trusting = ssl.create_default_context(cadata=authority.certificate.decode())
        trusting.check_hostname = False  # the certificate is localhost's; the host names ops.example.com
        yield Proxy(f"127.0.0.1:{nginx_port}", f"https://ops.example.com:{nginx_port}", trusting)
    finally:
        process.terminate()
        process.wait(timeout=10)


async def through(
    proxy: Proxy, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes = b""
) -> Answer:
    """A request to the console through nginx, as a browser at the public origin sends it."""
    host = f"ops.example.com:{proxy.address.rpartition(':')[2]}"
    # Connection: close, or nginx keeps the connection open and the answer has no end to read to.
    wanted = {"Connection": "close", **(headers or {})}
    return await request(proxy.address, method, path, headers=wanted, body=body, host=host, tls=proxy.tls)


async def listening(proxy: Proxy) -> None:
    async def answers() -> bool:
        try:
            return (await through(proxy, "GET", f"{PREFIX}/login")).status == 200
        except OSError:
            return False

    await eventually(answers, within=10, what="nginx to answer")


async def test_the_documented_nginx_config_serves_the_console_under_its_prefix_over_tls(proxy: Proxy) -> None:
    await listening(proxy)
    body = urlencode({"credential": ROOT_KEY}).encode()
    logged_in = await through(proxy, "POST", f"{PREFIX}/login", headers={**FORM, "Origin": proxy.origin}, body=body)
    assert (logged_in.status, logged_in.header("location")) == (303, f"{PREFIX}/log")
    (set_cookie,) = logged_in.all("set-cookie")
    assert set_cookie.endswith(f"; Path={PREFIX}; HttpOnly; SameSite=Strict; Secure")
    assert logged_in.header("strict-transport-security") == "max-age=31536000"
    cookie = {"Cookie": session_cookie(logged_in)}

    log = await through(proxy, "GET", f"{PREFIX}/log", headers=cookie)
    link = f'href="{PREFIX}/aggregates/{quote(ODD_ID, safe="")}"'
    assert log.status == 200 and link in log.text
    aggregate = await through(proxy, "GET", f"{PREFIX}/aggregates/{quote(ODD_ID, safe='')}", headers=cookie)
    assert aggregate.status == 200 and "<h1>acc/1 ü</h1>" in aggregate.text

    token = re.search(r'name="csrf_token" value="([^"]+)"', log.text)
    assert token is not None
    logged_out = await through(
        proxy,
        "POST",
        f"{PREFIX}/logout",
        headers={**FORM, "Origin": proxy.origin, **cookie},
        body=urlencode({"csrf_token": token.group(1)}).encode(),
    )
    assert (logged_out.status, logged_out.header("location")) == (303, f"{PREFIX}/login")
    outside = await through(proxy, "GET", "/log")
    assert outside.status == 404  # nginx's own: nothing outside the prefix reaches the console


async def test_through_the_documented_nginx_config_the_live_tail_streams_its_events_as_they_come(
    proxy: Proxy, app: Application
) -> None:
    await listening(proxy)
    body = urlencode({"credential": ROOT_KEY}).encode()
    logged_in = await through(proxy, "POST", f"{PREFIX}/login", headers={**FORM, "Origin": proxy.origin}, body=body)
    host, _, port = proxy.address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=proxy.tls)
    try:
        writer.write(
            f"GET {PREFIX}/tail/events?after=0 HTTP/1.1\r\nHost: ops.example.com:{port}\r\n"
            f"Cookie: {session_cookie(logged_in)}\r\n\r\n".encode()
        )
        await writer.drain()
        seen = b""
        async with asyncio.timeout(15):
            while b'"version": 1' not in seen:
                seen += await reader.read(4096)
            assert seen.startswith(b"HTTP/1.1 200 ")
            # An event written now arrives while the stream is open: nothing holds it back.
            async with connect(app.address, interceptors=bearer(ROOT_KEY)) as client:
                await client.submit(command(ODD_ID, bank.Deposit(amount=5)))
            while b'"version": 2' not in seen:
                seen += await reader.read(4096)
    finally:
        writer.close()
