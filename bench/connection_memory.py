"""Memory per idle client connection to the gRPC port (docs/security.md,
"Quotas", quotes the results): what each connection that finished its
handshake and opened no call costs a server, so that --max-connections
and --max-connection-idle-seconds can be sized.

A real server (memory store, idle closing off so that every connection
stays) gets ``--connections`` raw connections that send HTTP/2's preface
and settings, acknowledge the server's, and then nothing; its RSS is read
before and after, over plaintext and over TLS (a throwaway CA and
certificate for localhost). The connections' own side is this process.

Run::

    PYTHONPATH=$PWD .venv/bin/python -m bench.connection_memory [--connections 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import rss_bytes
from tests.support.processes import free_port
from tests.support.security import Authority, server_tls_files

# HTTP/2's client preface, an empty SETTINGS frame and a SETTINGS ACK
# (the acknowledgement of the server's, sent ahead: harmless).
HANDSHAKE = (
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    + bytes.fromhex("000000040000000000")  # SETTINGS
    + bytes.fromhex("000000040100000000")  # SETTINGS, ACK
)


async def hold_idle_connections(
    address: str, count: int, tls: ssl.SSLContext | None
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, _, port = address.rpartition(":")
    held = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(
            host, int(port), ssl=tls, server_hostname="localhost" if tls else None
        )
        writer.write(HANDSHAKE)
        await writer.drain()
        held.append((reader, writer))
    return held


async def growth_per_connection(pid: int, address: str, count: int, tls: ssl.SSLContext | None) -> float:
    """Bytes the server's RSS grows by per idle connection."""
    await hold_idle_connections(address, 50, tls)  # every code path warm first
    await asyncio.sleep(2)
    before = rss_bytes(pid)
    held = await hold_idle_connections(address, count, tls)
    await asyncio.sleep(2)
    after = rss_bytes(pid)
    for _, writer in held:
        writer.close()
    return (after - before) / count


def measure(count: int, *, tls: bool) -> tuple[float, float]:
    """The server's RSS before (MiB) and its growth per idle connection (bytes)."""
    options = ["--max-connection-idle-seconds", "0", "--max-connections", str(count + 1000)]
    with tempfile.TemporaryDirectory() as folder:
        context = None
        if tls:
            authority = Authority()
            cert_file, key_file = server_tls_files(Path(folder), authority)
            options += ["--tls-cert-file", cert_file, "--tls-key-file", key_file]
            context = ssl.create_default_context(cadata=authority.certificate.decode())
            context.set_alpn_protocols(["h2"])
        address = f"127.0.0.1:{free_port()}"
        serve = ["serve", "--listen", address, "--database-url", "memory://", "--log-level", "WARNING", *options]
        server = subprocess.Popen([sys.executable, "-m", "service", *serve], stdout=subprocess.DEVNULL)
        try:
            _wait_for_port(address)
            base = rss_bytes(server.pid)
            grown = asyncio.run(growth_per_connection(server.pid, address, count, context))
        finally:
            server.terminate()
            server.wait(30)
    return base / 2**20, grown


def _wait_for_port(address: str) -> None:
    """Until the server accepts connections, and a little more for its start to settle
    (a health check would need the TLS setup too)."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    time.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.connection_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    for tls in (False, True):
        base, grown = measure(args.connections, tls=tls)
        kind = "TLS" if tls else "plaintext"
        print(
            f"{kind}: server RSS {base:.0f} MiB before, +{grown / 1024:,.1f} KiB per idle connection"
            f" ({args.connections} held: +{grown * args.connections / 2**20:,.0f} MiB)",
            flush=True,
        )


if __name__ == "__main__":
    main()
