"""A plain L4 (TCP) balancer, as a Kubernetes Service is: each connection
goes to the next of its backends in turn, and stays there; a backend taken
out (a pod terminating, its endpoint removed) gets no new connection, while
those it has go on. It counts the connections each backend got."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator


class RoundRobinBalancer:
    def __init__(self, backend_ports: list[int]) -> None:
        self.backends = list(backend_ports)
        self.connections: Counter[int] = Counter()
        self._turn = itertools.count()
        self._pumps: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    def take_out(self, port: int) -> None:
        """New connections go to the other backends from now on."""
        self.backends.remove(port)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = self.backends[next(self._turn) % len(self.backends)]
        self.connections[port] += 1
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        self._writers += [writer, upstream_writer]
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.ensure_future(self._pump(source, sink))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RoundRobinBalancer]:
        server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for writer in self._writers:
                writer.transport.abort()
            for task in list(self._pumps):
                task.cancel()
            await asyncio.gather(*self._pumps, return_exceptions=True)
            await server.wait_closed()
