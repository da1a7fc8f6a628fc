"""``ListParked`` in pages when an upcaster split stored events: the pieces
share the stored event's position, so paging by position passed over the
rest of a split event once a page ended between its pieces (five parked,
three listed in pages of one). Pages follow ``next_page_token`` (position
and event id): the raw RPC, the Python client's ``groups.parked``,
against a real server over a real socket serving the ledger test plugin,
which splits a stored AccountOpened v2 into AccountOpened v3 +
MoneyDeposited; and ``chronicle group NAME --parked``, which asks for pages
of 1,000, against a scripted server holding a split event across its first
page's end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import grpc
import pytest

from chronicle.v1 import subscription_group_service_pb2 as pb
from chronicle.v1 import subscription_group_service_pb2_grpc as pb_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.client import ChronicleClient
from service.plugins.registry import Registry
from service.store.memory import MemoryStore
from tests.support import plugins
from tests.support.events import new_event
from tests.support.grpc_client import TEST_SETTINGS, Client, running_server
from tests.support.processes import cli, free_port
from tests.support.waiting import eventually

GROUP = "pieces"
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def opened(owner: str) -> object:
    payload = bank.AccountOpened(owner=owner).SerializeToString()
    return new_event("bank.v1.AccountOpened", aggregate_type="Book", payload=payload, schema_version=2)


def deposited(amount: int) -> object:
    payload = bank.MoneyDeposited(amount=amount).SerializeToString()
    return new_event("bank.v1.MoneyDeposited", aggregate_type="Book", payload=payload, schema_version=1)


@pytest.fixture
async def served() -> AsyncIterator[tuple[Application, Client, pb_grpc.SubscriptionGroupServiceStub]]:
    """Five events read from three stored ones (two split in two), every one
    parked by a consumer that parks what it is given."""
    store = MemoryStore()
    await store.append("book-1", [opened("ann"), deposited(3)], 0)  # type: ignore[list-item]
    await store.append("book-2", [opened("bob")], 0)  # type: ignore[list-item]
    settings = replace(TEST_SETTINGS, anonymous_admin=True, poll_seconds=0.05)
    async with running_server(store, settings=settings, registry=Registry([plugins.ledger])) as (app, raw):
        stub = pb_grpc.SubscriptionGroupServiceStub(raw.channel)
        await stub.CreateGroup(pb.CreateGroupRequest(name=GROUP, segments=1))
        call = stub.Consume()
        await call.write(pb.ConsumeRequest(start=pb.ConsumeStart(group=GROUP, consumer="parker")))
        parked = 0
        while parked < 5:
            message = await asyncio.wait_for(call.read(), 20)
            assert message is not grpc.aio.EOF, "the stream ended"
            ids = [d.event.event_id for d in message.deliveries.deliveries]
            if ids:
                nack = pb.Nack(event_ids=ids, reason="park", action=pb.NACK_ACTION_PARK)
                await call.write(pb.ConsumeRequest(nack=nack))
                parked += len(ids)
        call.cancel()

        async def all_parked() -> bool:
            return len((await stub.ListParked(pb.ListParkedRequest(group=GROUP))).parked) == 5

        await eventually(all_parked, what="five events parked")
        yield app, raw, stub


async def test_pages_of_any_size_list_every_piece_once_and_the_last_page_has_no_token(
    served: tuple[Application, Client, pb_grpc.SubscriptionGroupServiceStub],
) -> None:
    _, _, stub = served
    whole = await stub.ListParked(pb.ListParkedRequest(group=GROUP))
    everything = [(p.position, p.event_id) for p in whole.parked]
    assert whole.next_page_token == ""
    assert everything == sorted(everything) and len({p for p, _ in everything}) == 3  # two positions hold two
    for size in (1, 2, 3, 5):
        listed, token, pages = [], "", 0
        while True:
            page = await stub.ListParked(pb.ListParkedRequest(group=GROUP, limit=size, page_token=token))
            pages += 1
            listed += [(p.position, p.event_id) for p in page.parked]
            token = page.next_page_token
            if not token:
                break
            assert len(page.parked) == size  # a page short of the limit is the last
        assert listed == everything, f"pages of {size}"
        assert pages == -(-5 // size)  # the last page, even a full one, has no token


async def test_after_position_still_works_and_tokens_are_checked(
    served: tuple[Application, Client, pb_grpc.SubscriptionGroupServiceStub],
) -> None:
    _, _, stub = served
    everything = (await stub.ListParked(pb.ListParkedRequest(group=GROUP))).parked
    first_position = everything[0].position
    after = await stub.ListParked(pb.ListParkedRequest(group=GROUP, after_position=first_position))
    assert [p.event_id for p in after.parked] == [p.event_id for p in everything if p.position > first_position]
    first = await stub.ListParked(pb.ListParkedRequest(group=GROUP, limit=1))
    # With a token, after_position is ignored: the page goes on after the token's event.
    second = await stub.ListParked(
        pb.ListParkedRequest(group=GROUP, limit=1, after_position=10**6, page_token=first.next_page_token)
    )
    assert [p.event_id for p in second.parked] == [everything[1].event_id]

    async def refused(request: pb.ListParkedRequest) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListParked(request)
        reasons = [d for d in caught.value.trailing_metadata() or () if d[0] == "grpc-status-details-bin"]
        assert reasons, "no rich status"
        from google.rpc import error_details_pb2, status_pb2

        status = status_pb2.Status.FromString(reasons[0][1])
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        return caught.value.code(), info.reason

    assert await refused(pb.ListParkedRequest(group=GROUP, page_token="not a token")) == (INVALID, "INVALID_PAGE_TOKEN")
    await stub.CreateGroup(pb.CreateGroupRequest(name="other"))
    elsewhere = pb.ListParkedRequest(group="other", page_token=first.next_page_token)
    assert await refused(elsewhere) == (INVALID, "PAGE_TOKEN_MISMATCH")


async def test_the_python_client_and_the_cli_list_every_piece(
    served: tuple[Application, Client, pb_grpc.SubscriptionGroupServiceStub],
) -> None:
    app, _, stub = served
    everything = [p.event_id for p in (await stub.ListParked(pb.ListParkedRequest(group=GROUP))).parked]
    async with ChronicleClient.connect(app.address) as client:
        for size in (1, 2):
            assert [p.event_id for p in await client.groups.parked(GROUP, page_size=size)] == everything
        assert [p.event_id for p in await client.groups.parked(GROUP, page_size=1, limit=3)] == everything[:3]


# -- chronicle group NAME --parked: pages of 1,000, so a scripted server --------------------------

# 1,002 parked events; the 1,000th and 1,001st are two pieces of one split event.
SCRIPTED = [(n if n <= 1000 else n - 1, f"e-{n:04}") for n in range(1, 1003)]


class ScriptedParked(pb_grpc.SubscriptionGroupServiceServicer):
    """ListParked over ``SCRIPTED`` as the server pages it (a page token
    holds the index of the next event), or, ``with_tokens`` off, as a server
    from before page tokens (by position only)."""

    def __init__(self, *, with_tokens: bool) -> None:
        self.with_tokens = with_tokens
        self.requests: list[tuple[int, str]] = []

    def ListParked(self, request: Any, context: Any) -> pb.ListParkedResponse:
        self.requests.append((request.after_position, request.page_token))
        by_token = bool(request.page_token) and self.with_tokens
        start = int(request.page_token) if by_token else 0
        rest = [e for e in SCRIPTED[start:] if by_token or e[0] > request.after_position]
        page = rest[: request.limit or 100]
        more = self.with_tokens and len(rest) > len(page)
        return pb.ListParkedResponse(
            parked=[pb.GroupParkedEvent(position=p, event_id=e) for p, e in page],
            next_page_token=str(SCRIPTED.index(page[-1]) + 1) if more else "",
        )


@contextmanager
def scripted(servicer: ScriptedParked) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_SubscriptionGroupServiceServicer_to_server(servicer, server)
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    server.start()
    try:
        yield address
    finally:
        server.stop(grace=None)


@pytest.mark.slow  # a CLI process
def test_the_cli_follows_page_tokens_across_a_split_event() -> None:
    servicer = ScriptedParked(with_tokens=True)
    with scripted(servicer) as address:
        result = cli("group", GROUP, "--parked", server=address)
    assert [json.loads(line)["event_id"] for line in result.stdout.splitlines()] == [e for _, e in SCRIPTED]
    assert servicer.requests == [(0, ""), (0, "1000")]


@pytest.mark.slow  # a CLI process
def test_the_cli_pages_a_server_from_before_page_tokens_by_position() -> None:
    servicer = ScriptedParked(with_tokens=False)
    with scripted(servicer) as address:
        result = cli("group", GROUP, "--parked", server=address)
    listed = [json.loads(line)["event_id"] for line in result.stdout.splitlines()]
    assert listed == [e for _, e in SCRIPTED if e != "e-1001"]  # all such a server can give
    assert servicer.requests == [(0, ""), (1000, "")]  # a full page, then the short last one
