"""Client interceptors that break calls the way a network does, for the
Python client's retry and resume tests: an answer lost after the server ran
the call, a stream cut after some messages, a stream call that answers as
scripted."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc


def lost(details: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> grpc.aio.AioRpcError:
    """What a client sees when a connection drops before the answer arrives."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class ScriptedCall:
    """A Consume stream that answers with ``messages`` (an exception is
    raised where it stands), then ends."""

    def __init__(self, *messages: Any) -> None:
        self._messages = list(messages)
        self.written: list[Any] = []

    async def write(self, request: Any) -> None:
        self.written.append(request)

    async def read(self) -> Any:
        if not self._messages:
            return grpc.aio.EOF
        message = self._messages.pop(0)
        if isinstance(message, BaseException):
            raise message
        return message

    def cancel(self) -> bool:
        return True

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return not self._messages

    async def done_writing(self) -> None:
        pass

    async def code(self) -> None:
        pass


def _events_in(message: Any) -> Any:
    """The repeated items a paged message carries (an EventPage, a
    SubscribeResponse holding one, a SubmitResultPage's results), or None
    for a message of one item."""
    if message.DESCRIPTOR.name == "EventPage":
        return message.events
    if message.DESCRIPTOR.name == "SubmitResultPage":
        return message.results
    if message.DESCRIPTOR.name == "SubscribeResponse" and message.WhichOneof("kind") == "page":
        return message.page.events
    return None


async def _broken_after(call: Any, after: int, code: grpc.StatusCode) -> AsyncIterator[Any]:
    """The call's items, then ``code`` after the ``after``-th. Items are
    messages, or the events of a page: a page that would go past ``after``
    arrives cut short, as if the server had sent smaller pages, so a test's
    break falls between the same two events whether the stream is paged or not."""
    received = 0
    async for message in call:
        events = _events_in(message)
        if events is not None and received + len(events) > after:
            kept = after - received
            if message.DESCRIPTOR.name == "SubscribeResponse":
                # Cut inside a split event's pieces, it no longer ends its position.
                message.completes_position = events[kept - 1].position != events[kept].position
            del events[kept:]
        received += 1 if events is None else len(events)
        yield message
        if received >= after:
            call.cancel()
            raise lost("stream broken (simulated)", code)


class LoseFirstAnswers(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Lets each call reach the server and complete there, but replaces the
    first ``count`` answers with UNAVAILABLE: a response lost on the way.
    Records every request."""

    def __init__(self, count: int = 1) -> None:
        self.count = count
        self.requests: list[Any] = []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.requests.append(request)
        call = await continuation(details, request)
        if len(self.requests) <= self.count:
            await call  # the server ran the command and answered
            raise lost("connection reset before the response arrived (simulated)")
        return call


class BreakFirstStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Records every request; the first stream breaks (with ``code``) after
    ``after`` messages."""

    def __init__(
        self, after: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, *, method: str | None = None
    ) -> None:
        self.after = after
        self.code = code
        self.method = method  # only calls of this method (its last part), if given
        self.requests: list[Any] = []

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        called = details.method.decode() if isinstance(details.method, bytes) else details.method
        if self.method is not None and called.rpartition("/")[2] != self.method:
            return await continuation(details, request)
        self.requests.append(request)
        call = await continuation(details, request)
        if len(self.requests) > 1:
            return call
        return _broken_after(call, self.after, self.code)


class BreakFirstCommandStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Records every SubmitRequest sent (each of a SubmitPage's, for
    SubmitStreamPages); the first call breaks (UNAVAILABLE) after ``after``
    results, as a dropped connection would."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.calls: list[list[Any]] = []

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        sent: list[Any] = []
        self.calls.append(sent)

        async def recorded() -> AsyncIterator[Any]:
            async for request in request_iterator:
                sent.extend(request.requests if request.DESCRIPTOR.name == "SubmitPage" else [request])
                yield request

        call = await continuation(details, recorded())
        if len(self.calls) > 1:
            return call
        return _broken_after(call, self.after, grpc.StatusCode.UNAVAILABLE)


class _WithoutMethod:
    """Sends calls of ``missing`` (a method's last part) to a method the
    server does not have, so the server answers UNIMPLEMENTED as one from
    before it would. Records the methods called (of the shape the
    interceptor sees: grpc.aio gives each interceptor one)."""

    def __init__(self, missing: str) -> None:
        self.missing = missing
        self.methods: list[str] = []

    def _details(self, details: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        service, _, name = method.rpartition("/")
        self.methods.append(name)
        return details._replace(method=f"{service}/NoSuchMethod".encode()) if name == self.missing else details


class WithoutPagedReads(_WithoutMethod, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """A server from before ReadAggregatePages."""

    def __init__(self) -> None:
        super().__init__("ReadAggregatePages")

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class WithoutStreamPages(_WithoutMethod, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    """A server from before SubmitStreamPages."""

    def __init__(self) -> None:
        super().__init__("SubmitStreamPages")

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


class WritesAfterTheEnd(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Holds up the first call's messages after its first one by blocking
    the event loop (as a busy client's loop is), so that a status the server
    sends early reaches gRPC's core before grpc.aio writes the next message:
    that write fails, and grpc.aio loses the server's status
    (grpc/grpc#36066). Counts the calls."""

    def __init__(self, hold: float = 0.2) -> None:
        self.hold = hold
        self.calls = 0

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        self.calls += 1
        if self.calls > 1:
            return await continuation(details, request_iterator)

        async def held() -> AsyncIterator[Any]:
            first = True
            async for request in request_iterator:
                if not first:
                    time.sleep(self.hold)  # noqa: ASYNC251 (the loop itself is held: that is the point)
                first = False
                yield request

        return await continuation(details, held())
