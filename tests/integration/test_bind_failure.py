"""``chronicle serve`` on an address it cannot have (BIND_FAILED): said once,
with what to do, and without gRPC's own log line before it when the
address is in use; gRPC's line stays when it is the only one to say why."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from service.cli import _address_in_use
from tests.support.processes import free_port, serve_until_exit, server_process

HINT = (
    "Another server may hold the port (a `make run` still running, say): stop it, or serve elsewhere with"
    " --listen HOST:PORT (env CHRONICLE_LISTEN)"
)


def in_use(address: str) -> str:
    return f"error: BIND_FAILED: cannot listen on {address}: Address already in use. {HINT}\n"


@contextmanager
def held(host: str, port: int, family: socket.AddressFamily = socket.AF_INET) -> Iterator[socket.socket]:
    """A socket listening on ``host:port``, as another program's would."""
    with socket.socket(family, socket.SOCK_STREAM) as holder:
        if family == socket.AF_INET6:
            holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        holder.bind((host, port))
        holder.listen()
        yield holder


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_a_second_server_on_the_port_of_a_running_one_says_so_once_and_what_to_do(tmp_path: Path) -> None:
    """`make run` twice: the second stops at once, with one line on stderr,
    not gRPC's core log line and then ours."""
    with server_process(f"sqlite:///{tmp_path}/events.db") as running:
        second = serve_until_exit("--database-url", "memory://", listen=running.address)
        from_environment = serve_until_exit(
            listen=None, env={"CHRONICLE_LISTEN": running.address, "CHRONICLE_DATABASE_URL": "memory://"}
        )
        assert running.process.poll() is None  # the first one serves on
    assert (second.returncode, second.stdout, second.stderr) == (2, "", in_use(running.address))
    assert (from_environment.returncode, from_environment.stderr) == (2, in_use(running.address))


@pytest.mark.slow
def test_an_address_any_program_holds_is_in_use_too() -> None:
    port = free_port()
    with held("127.0.0.1", port):
        refused = serve_until_exit("--database-url", "memory://", listen=f"127.0.0.1:{port}")
    assert (refused.returncode, refused.stdout, refused.stderr) == (2, "", in_use(f"127.0.0.1:{port}"))


@pytest.mark.slow
def test_another_cause_keeps_grpcs_line_which_alone_says_why() -> None:
    """An address this host does not have (TEST-NET-1): gRPC's bind fails,
    and its core's log line, the one place with the system's reason, is kept
    (a server's core logs at gRPC's default level) before our message."""
    address = f"192.0.2.1:{free_port()}"
    refused = serve_until_exit("--database-url", "memory://", "--insecure", listen=address)
    assert refused.returncode == 2
    assert "Cannot assign requested address" in refused.stderr  # from gRPC's core
    last = refused.stderr.splitlines()[-1]
    assert last.startswith(f"error: BIND_FAILED: cannot listen on {address}: Failed to bind to address {address}")
    assert last.endswith(HINT)


def test_an_address_is_in_use_when_another_socket_holds_it() -> None:
    port = free_port()
    assert not _address_in_use(f"127.0.0.1:{port}")
    with held("127.0.0.1", port):
        assert _address_in_use(f"127.0.0.1:{port}")
        assert _address_in_use(f"0.0.0.0:{port}")  # a wildcard takes every address's port
        assert not _address_in_use(f"127.0.0.2:{port}")  # another address of this host is free
        assert not _address_in_use(f"localhost:{port}")  # host names are gRPC's to resolve and bind
        assert not _address_in_use("127.0.0.1:0")  # any free port


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_an_ipv6_address_is_probed_as_gRPC_binds_it() -> None:
    port = free_port()
    with held("::1", port, socket.AF_INET6):
        assert _address_in_use(f"[::1]:{port}")
        # gRPC serves a wildcard on [::] or, failing that, on 0.0.0.0: IPv4 is free.
        assert not _address_in_use(f"[::]:{port}")
        assert not _address_in_use(f"0.0.0.0:{port}")
    with held("0.0.0.0", port):
        assert _address_in_use(f"[::]:{port}")  # neither a dual-stack [::] nor 0.0.0.0


@pytest.mark.slow
def test_a_process_address_it_cannot_have_is_the_one_named() -> None:
    """--process-listen (each process of --processes has one) taken: the
    refusal names that address, not the shared --listen one that bound."""
    listen, own = f"127.0.0.1:{free_port()}", free_port()
    with held("127.0.0.1", own):
        refused = serve_until_exit("--database-url", "memory://", "--process-listen", f"127.0.0.1:{own}", listen=listen)
    assert refused.returncode == 2
    last = refused.stderr.splitlines()[-1]
    assert last.startswith(f"error: BIND_FAILED: cannot listen on 127.0.0.1:{own}: ")
    assert last.endswith(HINT)
