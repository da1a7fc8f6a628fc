"""Import each named module in a process of its own, forked from one that
has imported nothing of Chronicle's: ``python -m tests.support.import_alone
MODULE...`` (from the repository's root) prints one line per module that
does not import on its own.

The parent loads the heavy third-party libraries (gRPC, protobuf, psycopg,
the generated ``chronicle.v1`` code) once, so that each child pays only for
Chronicle's own modules: a fresh interpreter per module took four times as
long. None of those libraries imports Chronicle, so an import cycle among
Chronicle's modules shows in a child exactly as in a fresh interpreter."""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import sys

PRELOADED = (
    "asyncio",
    "importlib.metadata",
    "grpc",
    "grpc.aio",
    "grpc_health.v1.health",
    "grpc_reflection.v1alpha.reflection",
    "google.protobuf.json_format",
    "psycopg",
    "cryptography.hazmat.primitives.ciphers.aead",
    "jwt",
    "prometheus_client",
    "orjson",
)
AT_ONCE = 4
OURS = ("service", "domain_plugins")


def _preload() -> None:
    for name in PRELOADED:
        with contextlib.suppress(ImportError):  # not installed: the children import it themselves
            importlib.import_module(name)
    generated = importlib.import_module("chronicle.v1")
    for found in pkgutil.iter_modules(generated.__path__):
        importlib.import_module(f"chronicle.v1.{found.name}")
    loaded = [name for name in sys.modules if name.split(".")[0] in OURS]
    assert not loaded, f"the parent imported Chronicle's modules: {loaded}"


def _start(name: str) -> tuple[int, int]:
    """Fork a child that imports ``name``; its pid and the pipe it reports on."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
        except BaseException as error:
            os.write(write, f"{type(error).__name__}: {error}".encode())
            os._exit(1)
        os._exit(0)
    os.close(write)
    return pid, read


def main(names: list[str]) -> int:
    _preload()
    running: dict[int, tuple[str, int]] = {}
    failed: list[str] = []

    def reap() -> None:
        pid, status = os.wait()
        name, pipe = running.pop(pid)
        with os.fdopen(pipe, "rb") as report:
            message = report.read().decode(errors="replace").strip()
        if status != 0:
            failed.append(f"{name}: {message or f'exit status {status}'}")

    for name in names:
        while len(running) >= AT_ONCE:
            reap()
        pid, pipe = _start(name)
        running[pid] = (name, pipe)
    while running:
        reap()
    for line in sorted(failed):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
