"""Running the real server as a separate process, as a user would."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Ports for the servers a test starts, below the kernel's ephemeral range
# (net.ipv4.ip_local_port_range, 32768-60999 by default). A port the kernel
# hands out for a bind to 0 comes from that range, where every outgoing
# connection also takes its source port: between choosing it and the
# server's bind, another worker's connection to PostgreSQL could take it
# ("Address already in use"; seen once with three workers). Each
# pytest-xdist worker has a block of its own, so two workers never choose
# the same port either; within a block, ports are handed out in turn.
# Processes outside pytest-xdist (two benchmarks, a probe beside a test run)
# share block 0, and between one's check and its server's bind the other
# could choose the same port. So each starts its turn at a place of its own,
# spread out from its process id (``_first_offset``).
_PORT_BASE = 20_000
_PORT_BLOCK = 1_000
_PORT_BLOCKS = 12  # 20000-31999
# Of all strides, the one that keeps the turns of processes whose ids are
# within 20 of each other (started one after another) furthest apart: at
# least 47 ports.
_OFFSET_STRIDE = 619


def _first_offset(pid: int) -> int:
    """Where in its block a process with this id starts handing out ports."""
    return pid * _OFFSET_STRIDE % _PORT_BLOCK


_next_offset = _first_offset(os.getpid())  # where in the block the next search starts


def _port_block() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    number = worker[2:]
    index = int(number) if worker.startswith("gw") and number.isdigit() else 0
    return _PORT_BASE + (index % _PORT_BLOCKS) * _PORT_BLOCK


def free_port() -> int:
    """A loopback port nothing listens on, for a server about to start."""
    global _next_offset
    start = _port_block()
    for step in range(_PORT_BLOCK):
        offset = (_next_offset + step) % _PORT_BLOCK
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", start + offset))
            except OSError:
                continue  # in use (or in TIME_WAIT): the next one
        _next_offset = (offset + 1) % _PORT_BLOCK
        return start + offset
    raise RuntimeError(f"no free port in {start}-{start + _PORT_BLOCK - 1}")


def wait_until_serving(address: str, timeout: float = 20.0, process: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                output = process.stdout.read() if process.stdout else "(see its log)"
                raise RuntimeError(f"server exited with {process.returncode}: {output}")
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"no server serving on {address} after {timeout}s")


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    address: str

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


@dataclass(frozen=True)
class Footprint:
    """What a process holds: resident memory and open file descriptors."""

    rss_bytes: int
    open_fds: int


def footprint(pid: int) -> Footprint:
    """Read from /proc (Linux), as an operator's tools would."""
    with open(f"/proc/{pid}/status") as status:
        rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return Footprint(rss_bytes=rss_kib * 1024, open_fds=len(os.listdir(f"/proc/{pid}/fd")))


class Replica:
    """A server process that a test may kill and start again on the same
    port, so that its clients' channels reconnect to the new process.

    Its output goes to ``log_path`` (appended across restarts), not to a
    pipe: a pipe nobody reads fills up under a long run and blocks the
    server's logging, which is a fault of the test, not of the server.
    """

    def __init__(
        self,
        database_url: str,
        *,
        log_path: Path,
        extra: Sequence[str] = (),
        port: int | None = None,
        metrics: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """``env``: variables set over the test's own (``PYTHONPATH`` to run
        another version's code); ``cwd``: where it runs (the test's own
        directory by default)."""
        self.database_url = database_url
        self._env = None if env is None else {**os.environ, **env}
        self._cwd = cwd
        self.address = f"127.0.0.1:{port or free_port()}"
        self.log_path = log_path
        self._extra = list(extra)
        self.metrics_address = f"127.0.0.1:{free_port()}" if metrics else None
        if self.metrics_address:
            self._extra += ["--metrics-listen", self.metrics_address]
        self._process: subprocess.Popen[str] | None = None
        self.starts = 0

    @property
    def process(self) -> subprocess.Popen[str]:
        assert self._process is not None, "not started"
        return self._process

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Start the process; with ``wait``, return once it reports SERVING."""
        assert not self.running, "already running"
        command = [
            sys.executable, "-m", "service", "serve",
            "--listen", self.address, "--database-url", self.database_url, *self._extra,
        ]  # fmt: skip
        with self.log_path.open("a") as log:
            log.write(f"--- start {self.starts + 1}: {' '.join(command)}\n")
            log.flush()
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, text=True, env=self._env, cwd=self._cwd
            )
        self.starts += 1
        if wait:
            self.wait_until_serving(timeout)

    def wait_until_serving(self, timeout: float = 30.0) -> None:
        try:
            wait_until_serving(self.address, timeout=timeout, process=self.process)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}; server log:\n{self.log_tail()}") from error

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the process to exit; return its code."""
        process = self.process
        if process.poll() is None:
            process.send_signal(sig)
        return process.wait(timeout)

    def metric(self, name: str) -> float:
        """A gauge or counter without labels, as Prometheus would scrape it."""
        assert self.metrics_address, "started without metrics"
        with urllib.request.urlopen(f"http://{self.metrics_address}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(f"{name} "):
                    return float(line.split()[1])
        raise KeyError(name)

    def footprint(self) -> Footprint:
        return footprint(self.process.pid)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)


@contextmanager
def replica(
    database_url: str, *, log_path: Path, extra: Sequence[str] = (), wait: bool = True, metrics: bool = False
) -> Iterator[Replica]:
    """A started ``Replica``, killed at the end whatever happened."""
    server = Replica(database_url, log_path=log_path, extra=extra, metrics=metrics)
    try:
        server.start(wait=wait)
        yield server
    finally:
        server.close()


# Starts of a server on a free port that another process took meanwhile.
BIND_ATTEMPTS = 3


@contextmanager
def server_process(
    database_url: str,
    *,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    port: int | None = None,
) -> Iterator[ServerProcess]:
    """A server process on ``port`` (a free one if None: pass the same port
    to restart a server where its clients expect it). A free port can be
    taken by another process between ``free_port`` and the server's bind
    (the suite runs in parallel): then it starts again on another."""
    for attempt in range(BIND_ATTEMPTS):
        address = f"127.0.0.1:{port or free_port()}"
        command = [sys.executable, "-m", "service", "serve", "--listen", address, "--database-url", database_url]
        process = subprocess.Popen(
            [*command, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        try:
            wait_until_serving(address, process=process)
            break
        except RuntimeError as failed:
            if process.poll() is None:
                process.kill()
            process.wait(10)
            if process.stdout:
                process.stdout.close()
            if port is not None or "BIND_FAILED" not in str(failed) or attempt == BIND_ATTEMPTS - 1:
                raise
    server = ServerProcess(process, address)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stdout:
            process.stdout.close()


def serve_until_exit(
    *args: str, listen: str | None = "127.0.0.1:0", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``chronicle serve --listen LISTEN ARGS`` run to its end: for settings
    the server must refuse at start-up. ``listen=None`` leaves the address
    to ``env`` (``CHRONICLE_LISTEN``) or the default."""
    where = ["--listen", listen] if listen is not None else []
    return subprocess.run(
        [sys.executable, "-m", "service", "serve", *where, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def cli(
    *args: str, server: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``chronicle ARGS --server SERVER``, with ``env`` added to ours."""
    result = run_or_dump(
        [sys.executable, "-X", "faulthandler", "-m", "service", *args, "--server", server],
        timeout=30,
        env={**os.environ, **env} if env else None,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"chronicle {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def run_or_dump(
    command: Sequence[str], *, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``command`` run to its end, its output captured. One that outlives
    ``timeout`` is sent SIGABRT, so that a Python started with ``-X
    faulthandler`` writes every thread's stack to its standard error, and
    the failure shows where it was stuck (a hang seen once in a hundred
    thousand runs cannot be reproduced to be looked at)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        try:
            stdout, stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        raise AssertionError(
            f"{shlex.join(command)} still ran after {timeout} s; its output:\n{stdout}\nits standard error"
            f" (with the threads' stacks):\n{stderr}"
        ) from None
    return subprocess.CompletedProcess(list(command), process.returncode, stdout, stderr)


ROOT = Path(__file__).resolve().parents[2]


def dockerfile_instructions(keyword: str) -> list[str]:
    """The arguments of every ``keyword`` instruction of the Dockerfile's
    runtime stage (from its last FROM on), continuation lines joined."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    runtime = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    found, instruction = [], None
    for line in lines[runtime:]:
        if instruction is None and line.startswith(keyword + " "):
            instruction = line.removeprefix(keyword + " ")
        elif instruction is not None:
            instruction += " " + line.strip()
        else:
            continue
        if instruction.rstrip().endswith("\\"):
            instruction = instruction.rstrip().removesuffix("\\")
        else:
            found.append(instruction.strip())
            instruction = None
    return found


def dockerfile_healthcheck() -> list[str]:
    """The Dockerfile's HEALTHCHECK command, as Docker would run it."""
    (instruction,) = dockerfile_instructions("HEALTHCHECK")
    command = json.loads(instruction.split(" CMD ", 1)[1])
    assert isinstance(command, list) and command[0] == "chronicle", instruction
    return [str(part) for part in command]


def dockerfile_environment() -> dict[str, str]:
    """The variables the image's ENV instructions set (``NAME=value`` forms)."""
    environment: dict[str, str] = {}
    for instruction in dockerfile_instructions("ENV"):
        for assignment in shlex.split(instruction):
            name, _, value = assignment.partition("=")
            environment[name] = value
    return environment


def dockerfile_command() -> list[str]:
    """What a bare ``docker run IMAGE`` runs: ENTRYPOINT then CMD (exec forms)."""
    (entrypoint,) = dockerfile_instructions("ENTRYPOINT")
    (default,) = dockerfile_instructions("CMD")
    return [str(part) for part in json.loads(entrypoint) + json.loads(default)]


def run_healthcheck(env: dict[str, str], *, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The Dockerfile's HEALTHCHECK with ``env`` as the container's
    environment (and none of the caller's CHRONICLE_* variables)."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("CHRONICLE_")}
    return subprocess.run(
        [sys.executable, "-m", "service", *dockerfile_healthcheck()[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, **env},
    )
