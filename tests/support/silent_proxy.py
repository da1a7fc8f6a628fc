"""A TCP proxy that can fall silent: the connections stay open, nothing
goes through any more, as when a client's host vanishes or the network
between is cut (no FIN, no RST reaches the server). It counts the
connections it was asked for. ``target_port`` may be set after it
started (a server that advertises the proxy's address starts after it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class SilentProxy:
    def __init__(self, target_port: int = 0) -> None:
        self.target_port = target_port
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self.port = 0
        self.connections = 0

    def silence(self) -> None:
        """From now on, forward nothing (and close nothing)."""
        self._open.clear()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            await self._open.wait()  # silenced: hold what came, forever
            sink.write(data)
            await sink.drain()
        sink.close()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.ensure_future(self._pump(source, sink))
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
            for task in list(self._pumps):
                task.cancel()
            await asyncio.gather(*self._pumps, return_exceptions=True)
            await self._server.wait_closed()
