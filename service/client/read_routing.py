"""A routing client's reads on any live replica.

Every replica serves reads from the shared store (a read with
``min_position`` waits for that position on whichever replica it reaches),
so with ``routing=True`` the client's read services (events, groups,
projections, reactions) are ``FailoverStub`` s: each call goes where
``Routes.reader`` says, the address given while it is not marked down, else
another live member. The call's end is booked as a routed command's is
(``routing.member_gone`` or ``unanswered``: the member is marked down;
an answer: it starts afresh), so the next attempt of a read, the reopening
of a subscription (after its last complete position) or of a group
consumer (which joins the group again) goes to a survivor. The callers
(``UnaryCalls``, ``resuming``, ``GroupConsumer``) are unchanged: a call
made through a ``FailoverStub`` behaves as the underlying ``grpc.aio`` call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Generator
from typing import Any, TypeVar, cast

import grpc

from service.client.errors import remote_error
from service.client.routing import Routes, member_gone, unanswered

S = TypeVar("S")


def failover_stub(routes: Routes, stub_of: Callable[[grpc.aio.Channel], S], own: S) -> S:
    """``own`` (a stub on the client's channel to the address given), its
    calls sent where ``routes.reader()`` says: on ``own`` to the address
    given, on a stub of ``stub_of`` over the member's channel otherwise."""
    return cast(S, FailoverStub(routes, stub_of, own))


class FailoverStub:
    def __init__(self, routes: Routes, stub_of: Callable[[grpc.aio.Channel], Any], own: Any) -> None:
        self._routes = routes
        self._stub_of = stub_of
        self._own = own
        self._members: dict[str, Any] = {}

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        getattr(self._own, method)  # an AttributeError for a method the service lacks

        def invoke(*args: Any, **kwargs: Any) -> BookedCall:
            address = self._routes.reader()
            stub = self._own if address is None or address == self._routes.seed_address else self._member(address)
            sent = self._routes.now()
            return BookedCall(getattr(stub, method)(*args, **kwargs), self._routes, address, sent)

        return invoke

    def _member(self, address: str) -> Any:
        stub = self._members.get(address)
        if stub is None:
            stub = self._members[address] = self._stub_of(self._routes.channel_of(address))
        return stub


class BookedCall:
    """A ``grpc.aio`` call (unary or stream) to member ``address`` (None: not
    booked) whose end is booked in ``routes``: a unary call as it ends, a
    stream at each message it gets (the member answered; a later failure
    counts from then, ``Routes.unreachable``'s ``sent``) and when it fails,
    reading or writing: a group consumer's first act on a stream is to
    write its start, and on a member that is gone that write is what fails
    (the connection refused), so a failure booked only on reads left the
    consumer on the dead member for ever. Anything else (``cancel``,
    ``code``, ``done_writing``...) is the call's own.
    A call the client cancels ends in ``asyncio.CancelledError``, never an
    ``AioRpcError``, so it marks no member down."""

    __slots__ = ("_address", "_call", "_messages", "_routes", "_sent")

    def __init__(self, call: Any, routes: Routes, address: str | None, sent: float) -> None:
        self._call = call
        self._routes = routes
        self._address = address
        self._sent = sent
        self._messages: AsyncIterator[Any] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            response = yield from self._call.__await__()
        except grpc.aio.AioRpcError as error:
            self._failed(error)
            raise
        self._routes.answered(self._address)
        return response

    def __aiter__(self) -> BookedCall:
        self._messages = self._call.__aiter__()
        return self

    async def __anext__(self) -> Any:
        assert self._messages is not None, "iterated without __aiter__"
        try:
            message = await self._messages.__anext__()
        except grpc.aio.AioRpcError as error:
            self._failed(error)
            raise
        self._heard()
        return message

    async def read(self) -> Any:
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as error:
            self._failed(error)
            raise
        if message is not grpc.aio.EOF:
            self._heard()
        return message

    async def write(self, request: Any) -> None:
        try:
            await self._call.write(request)
        except grpc.aio.AioRpcError as error:
            self._failed(error)
            raise

    def _heard(self) -> None:
        self._routes.answered(self._address)
        self._sent = self._routes.now()

    def _failed(self, error: grpc.aio.AioRpcError) -> None:
        failed = remote_error(error)
        if member_gone(failed) or unanswered(failed):
            self._routes.unreachable(self._address, self._sent)
