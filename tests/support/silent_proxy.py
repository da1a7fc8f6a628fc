"""A TCP proxy that can fall silent: the connections stay open, nothing
goes through any more, as when a client's host vanishes or the network
between is cut (no FIN, no RST reaches the server). It can also hold back
only the target's answers (what the client sends still arrives, and a
database still commits it) and then cut every connection: a network that
fails after the commit. It counts the connections it was asked for.
``target_port`` may be set after it started (a server that advertises the
proxy's address starts after it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class SilentProxy:
    def __init__(self, target_port: int = 0) -> None:
        self.target_port = target_port
        self._open = asyncio.Event()
        self._open.set()
        self._answering = asyncio.Event()
        self._answering.set()
        self._links: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self.port = 0
        self.connections = 0
        # Counts cuts: a connection whose upstream was being opened while one
        # happened is cut too (it was opened to the target of before).
        self._cuts = 0

    def silence(self) -> None:
        """From now on, forward nothing (and close nothing)."""
        self._open.clear()

    def hold_answers(self) -> None:
        """From now on, forward what the client sends but not the answers."""
        self._answering.clear()

    async def cut(self) -> None:
        """Close every connection through the proxy at once, both sides, what
        it held never delivered; later connections go through."""
        self._cuts += 1
        for writer in self._links:
            writer.transport.abort()
        self._links.clear()
        await self._stop_pumps()
        self._answering.set()

    async def _stop_pumps(self) -> None:
        pumps = list(self._pumps)
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, answers: bool) -> None:
        while data := await source.read(65536):
            await self._open.wait()  # silenced: hold what came, forever
            if answers:
                await self._answering.wait()
            sink.write(data)
            await sink.drain()
        sink.close()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        cuts = self._cuts
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        if self._cuts != cuts:  # cut while it connected: it never went through
            upstream_writer.transport.abort()
            writer.transport.abort()
            return
        self._links += [writer, upstream_writer]
        for source, sink, answers in ((reader, upstream_writer, False), (upstream_reader, writer, True)):
            task = asyncio.ensure_future(self._pump(source, sink, answers=answers))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SilentProxy]:
        self._server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            await self._stop_pumps()
            await self._server.wait_closed()
