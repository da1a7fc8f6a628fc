"""A small HTTP/1.1 server on asyncio, for the console and nothing else.

One request per connection (``Connection: close``): the console serves a
handful of operators, and without keep-alive there is no pipelining, no
chunked request bodies and no connection reuse to get wrong. Requests are
bounded (head 16 KiB, body 64 KiB, 10 s from the connection's accept to
its last byte, a TLS handshake included); anything else is refused with a
plain status. A connection counts toward the cap from its accept, so
sockets that never finish a handshake or a request cannot hold descriptors
beyond it. A response is either bytes or a stream of
them (server-sent events), which ends when the handler's iterator ends, the
browser goes away or the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl, unquote_to_bytes, urlsplit

log = logging.getLogger("chronicle.console")

MAX_HEAD_BYTES = 16 * 1024
# Live tails hold their connection open: this many at once, then 503.
MAX_CONNECTIONS = 100
# Beyond this many times the cap a connection is closed at once, without
# an answer: a 503 takes a handshake and a request, up to REQUEST_SECONDS
# each, and a flood of them must not hold the process's descriptors.
HARD_CAP_FACTOR = 2
MAX_BODY_BYTES = 64 * 1024
# From the accept to the request's last byte (TLS handshake included), and
# again for the browser to take each write of the answer.
REQUEST_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # names in lower case
    body: bytes = b""
    peer: str = ""  # the client's address as gRPC spells a peer's (audited with refusals)

    @property
    def cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        with contextlib.suppress(CookieError):
            jar.load(self.headers.get("cookie", ""))
        return {name: morsel.value for name, morsel in jar.items()}

    @property
    def form(self) -> dict[str, str]:
        """A POSTed urlencoded form, the first value of each field."""
        if self.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            return {}
        return _first_values(self.body.decode("utf-8", "replace"))


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None


Handler = Callable[[Request], Awaitable[Response]]


def _first_values(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True, errors="replace"):
        fields.setdefault(name, value)
    return fields


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus, detail: str = "") -> None:
        super().__init__(status.phrase)
        self.status = status
        self.detail = detail or status.phrase


def _query(text: str) -> dict[str, str]:
    """The address's query, each name once, in UTF-8: a name given twice
    (``?version=1&version=2``) or bytes that are not UTF-8 are refused, not
    settled by taking one of them or by replacing what cannot be read."""
    fields: dict[str, str] = {}
    try:
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "the query is not UTF-8") from None
    for name, value in pairs:
        if name in fields:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, f"the query names {name!r} more than once")
        fields[name] = value
    return fields


def _target(raw: str) -> str:
    """The request target as UTF-8 text. The head is read as latin-1 (one
    character per byte); a browser sends non-ASCII in a query unencoded, as
    UTF-8 bytes, which must be read as such, not shown as mojibake."""
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "the address is not UTF-8") from None


async def _read_request(reader: asyncio.StreamReader) -> Request:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE) from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(HTTPStatus.BAD_REQUEST)
    method, target, _ = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _BadRequest(HTTPStatus.BAD_REQUEST)
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise _BadRequest(HTTPStatus.LENGTH_REQUIRED)
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise _BadRequest(HTTPStatus.BAD_REQUEST)
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise _BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    body = await reader.readexactly(length) if length else b""
    url = urlsplit(_target(target))
    if not url.path.startswith("/"):
        raise _BadRequest(HTTPStatus.BAD_REQUEST)
    try:  # the path stays percent-encoded (a name may hold "/"); what it encodes must be UTF-8
        unquote_to_bytes(url.path).decode("utf-8")
    except UnicodeDecodeError:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "the path is not UTF-8") from None
    return Request(method=method, path=url.path, query=_query(url.query), headers=headers, body=body)


def _head(response: Response, *, length: int | None) -> bytes:
    phrase = HTTPStatus(response.status).phrase
    lines = [f"HTTP/1.1 {response.status} {phrase}", f"Content-Type: {response.content_type}", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HttpServer:
    """Serves ``handler`` on ``host:port`` until ``stop``."""

    def __init__(
        self,
        handler: Handler,
        *,
        base_headers: list[tuple[str, str]] | None = None,
        max_connections: int = MAX_CONNECTIONS,
        request_seconds: float | None = None,
    ) -> None:
        self._handler = handler
        self._max_connections = max_connections
        self._request_seconds = REQUEST_SECONDS if request_seconds is None else request_seconds
        self._base_headers = base_headers or []
        self._server: asyncio.Server | None = None
        self._tls: ssl.SSLContext | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, host: str, port: int, *, tls: ssl.SSLContext | None = None) -> None:
        # TLS is begun on each connection by ``_connection``, not by the
        # server: asyncio's would run the handshake before the connection
        # is ours to count, under its own deadline (60 s), so sockets that
        # never finish one escaped the cap and the request's deadline.
        self._tls = tls
        self._server = await asyncio.start_server(self._connection, host.strip("[]"), port, limit=MAX_HEAD_BYTES)
        self.port = int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed, handshakes under way included."""
        return len(self._connections)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):  # open event streams too
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        already_open = len(self._connections)
        self._connections.add(task)
        try:
            if already_open >= self._max_connections * HARD_CAP_FACTOR:
                return  # closed unanswered: see HARD_CAP_FACTOR
            try:
                request = await self._receive(reader, writer)
            except _BadRequest as bad:
                response = Response(bad.status, bad.detail.encode(), "text/plain; charset=utf-8")
            except TimeoutError:
                return
            else:
                if already_open >= self._max_connections:
                    response = Response(503, b"Too many connections to the console", "text/plain; charset=utf-8")
                    response.headers = [("Retry-After", "5")]
                else:
                    response = await self._answer(request)
            await self._send(writer, response)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass  # the browser went away, or stopped reading
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _receive(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request:
        """The TLS handshake (when serving TLS) and the whole request, within
        one deadline from the accept. A busy server reads the request too
        before it answers 503: closing a socket with unread bytes resets it,
        and the browser would never see the answer."""
        async with asyncio.timeout(self._request_seconds):
            if self._tls is not None:
                await writer.start_tls(self._tls, ssl_handshake_timeout=self._request_seconds)
            return replace(await _read_request(reader), peer=_peer(writer))

    async def _answer(self, request: Request) -> Response:
        try:
            return await self._handler(request)
        except Exception:
            log.exception("console: %s %s failed", request.method, request.path)
            return Response(500, b"Internal Server Error", "text/plain; charset=utf-8")

    async def _send(self, writer: asyncio.StreamWriter, response: Response) -> None:
        """Each write gets the request's deadline to be taken: a browser that
        stops reading does not hold its connection longer."""
        response.headers = [*self._base_headers, *response.headers]
        if response.stream is None:
            writer.write(_head(response, length=len(response.body)) + response.body)
            async with asyncio.timeout(self._request_seconds):
                await writer.drain()
            return
        stream = response.stream
        try:
            writer.write(_head(response, length=None))
            async with asyncio.timeout(self._request_seconds):
                await writer.drain()
            async for chunk in stream:
                writer.write(chunk)
                async with asyncio.timeout(self._request_seconds):
                    await writer.drain()
        finally:
            closing = getattr(stream, "aclose", None)
            if closing is not None:
                await closing()


def _peer(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"ipv6:[{host}]:{address[1]}" if ":" in host else f"ipv4:{host}:{address[1]}"
    return ""
