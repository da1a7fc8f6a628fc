"""Safe by default, checked on real server processes: a server reachable
from the network does not start with authentication off unless the operator
says so."""

from __future__ import annotations

import signal

import pytest

from tests.support.processes import free_port, serve_until_exit, server_process


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "db-host.internal:0"])
def test_the_server_refuses_to_listen_beyond_loopback_without_auth(listen: str) -> None:
    result = serve_until_exit("--database-url", "memory://", listen=listen)
    assert result.returncode == 2
    assert "error: INSECURE_LISTEN: refusing to listen on" in result.stderr
    assert "--auth" in result.stderr and "--insecure" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_environment_alone_cannot_expose_an_unauthenticated_server() -> None:
    """As in the Docker image: CHRONICLE_LISTEN=0.0.0.0:… and no other setting."""
    result = serve_until_exit(listen=None, env={"CHRONICLE_LISTEN": "0.0.0.0:0", "CHRONICLE_DATABASE_URL": "memory://"})
    assert result.returncode == 2
    assert "INSECURE_LISTEN" in result.stderr


def test_insecure_serves_beyond_loopback_and_says_so() -> None:
    port = free_port()
    extra = ["--listen", f"0.0.0.0:{port}", "--insecure"]
    with server_process("memory://", extra=extra, port=port) as server:  # serving: health answered on loopback
        assert server.stop(signal.SIGTERM) == 0
        assert server.process.stdout is not None
        output = server.process.stdout.read()
    assert f"--insecure: authentication is off and 0.0.0.0:{port} may be reachable from other machines" in output


def test_the_environment_variable_says_insecure_too() -> None:
    port = free_port()
    extra = ["--listen", f"0.0.0.0:{port}"]
    with server_process("memory://", extra=extra, env={"CHRONICLE_INSECURE": "true"}, port=port) as server:
        assert server.stop(signal.SIGTERM) == 0
