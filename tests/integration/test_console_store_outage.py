"""The console while the store is down (docs/console.md, "Cluster"): the
Cluster page is what an operator opens then, and its replicas, partition
owners and "last heard from the store" are in this replica's memory, so it
is shown (200), only the table of projection and reaction leases left out
with a note (which of them the caller may see is decided through the
store). A page that does need the store answers 503 headed as
unavailability, not as a refusal. The outage is real: the replica reaches
PostgreSQL through a proxy that then cuts every connection and refuses new
ones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from service.app import Application
from tests.support.cluster import replica
from tests.support.console import console, text_of
from tests.support.http import request
from tests.support.processes import free_port
from tests.support.silent_proxy import SilentProxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))


@pytest.fixture
async def proxied(postgres_url: str) -> AsyncIterator[tuple[Application, SilentProxy]]:
    port = urlsplit(postgres_url).port
    assert port is not None
    proxy = SilentProxy(port)
    async with proxy.running(), replica(through(postgres_url, proxy.port), console_listen="127.0.0.1:0") as (app, _):
        yield app, proxy
        proxy.target_port = port  # the store back, for the replica's stop


async def store_gone(proxy: SilentProxy) -> None:
    proxy.target_port = free_port()  # nothing listens there: each new connection is closed at once
    await proxy.cut()


async def test_the_cluster_page_is_shown_while_the_store_is_down_without_the_leases_it_cannot_filter(
    proxied: tuple[Application, SilentProxy],
) -> None:
    app, proxy = proxied
    address = console(app)

    async def leases_listed() -> bool:
        return 'id="projection-leases"' in (await request(address, "GET", "/cluster")).text

    await eventually(leases_listed, within=20, what="the cluster page listing leases")
    await store_gone(proxy)

    async def log_unavailable() -> bool:
        return (await request(address, "GET", "/log")).status == 503

    await eventually(log_unavailable, within=20, what="the log page unavailable")
    refused = await request(address, "GET", "/log")
    assert "<h1>Unavailable</h1>" in refused.text and "STORE_UNAVAILABLE" in refused.text

    answer = await request(address, "GET", "/cluster")
    assert answer.status == 200, answer.text
    page = text_of(answer.text)
    assert "this replica last heard from the store" in page
    assert app.leases.member_id in page  # the replicas' table, from memory
    assert 'id="projection-leases"' not in answer.text
    assert "Not shown: the store is unavailable" in page
