"""Safe by default, over real sockets and real server processes: a server
reachable from the network does not start with authentication off unless
the operator says so, and anonymous callers are never administrators."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import event_service_pb2
from chronicle.v1 import projection_service_pb2 as projection
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins.registry import Registry
from service.store.encryption import new_master_key
from service.store.memory import MemoryStore
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.plugins import openings
from tests.support.processes import (
    ROOT,
    cli,
    dockerfile_command,
    dockerfile_environment,
    free_port,
    serve_until_exit,
    server_process,
    wait_until_serving,
)
from tests.support.security import POLICY, api_key_file, write

# -- listening beyond loopback ------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "db-host.internal:0"])
def test_the_server_refuses_to_listen_beyond_loopback_without_auth(listen: str) -> None:
    result = serve_until_exit("--database-url", "memory://", listen=listen)
    assert result.returncode == 2
    assert "error: INSECURE_LISTEN: refusing to listen on" in result.stderr
    assert "--auth" in result.stderr and "--insecure" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_of_its_own_beyond_loopback_is_refused_too() -> None:
    """One of several processes also listens on --process-listen: that
    address counts as much as --listen."""
    result = serve_until_exit("--database-url", "memory://", "--process-listen", "0.0.0.0:0")
    assert result.returncode == 2
    assert result.stderr.startswith("error: INSECURE_LISTEN: refusing to listen on 0.0.0.0:0 with authentication off")


def test_the_environment_alone_cannot_expose_an_unauthenticated_server() -> None:
    """CHRONICLE_LISTEN=0.0.0.0:… and no other setting."""
    result = serve_until_exit(listen=None, env={"CHRONICLE_LISTEN": "0.0.0.0:0", "CHRONICLE_DATABASE_URL": "memory://"})
    assert result.returncode == 2
    assert "INSECURE_LISTEN" in result.stderr


def output_of_a_served_start(*extra: str, port: int | None = None, env: dict[str, str] | None = None) -> str:
    """Start a server with ``extra`` settings, wait until it serves (health
    answers on loopback), stop it cleanly and return what it printed."""
    extra = ("--shutdown-drain", "0", *extra)
    with server_process("memory://", extra=extra, port=port, env=env) as server:
        assert server.stop(signal.SIGTERM) == 0
        assert server.process.stdout is not None
        return server.process.stdout.read()


def test_insecure_serves_beyond_loopback_and_says_so() -> None:
    port = free_port()
    output = output_of_a_served_start("--listen", f"0.0.0.0:{port}", "--insecure", port=port)
    assert f"--insecure: authentication is off and 0.0.0.0:{port} may be reachable from other machines" in output


def test_authentication_over_plaintext_beyond_loopback_warns(tmp_path: Path) -> None:
    port = free_port()
    auth = [
        "--auth",
        "--policy-file", write(tmp_path / "policy.toml", POLICY),
        "--api-keys-file", api_key_file(tmp_path / "keys.toml", [("chr_root-key-000000000000", "root", [])]),
    ]  # fmt: skip
    beyond = output_of_a_served_start("--listen", f"0.0.0.0:{port}", *auth, port=port)
    assert f"authentication is on but 0.0.0.0:{port} serves plaintext beyond loopback" in beyond
    assert "serves plaintext" not in output_of_a_served_start(*auth)  # on loopback


def test_metrics_beyond_loopback_are_served_with_a_warning() -> None:
    metrics = free_port()
    beyond = output_of_a_served_start("--metrics-listen", f"0.0.0.0:{metrics}")
    assert f"metrics on 0.0.0.0:{metrics} may be reachable from other machines and need no credentials" in beyond
    assert "need no credentials" not in output_of_a_served_start("--metrics-listen", f"127.0.0.1:{free_port()}")


def test_tenants_counted_with_no_metrics_served_warn_at_start() -> None:
    """Before: accepted in silence, and nothing was counted."""
    alone = output_of_a_served_start(env={"CHRONICLE_METRICS_TENANTS": "5"})
    assert "--metrics-tenants 5 counts nothing: there are no metrics without --metrics-listen" in alone, alone
    served = output_of_a_served_start("--metrics-tenants", "5", "--metrics-listen", f"127.0.0.1:{free_port()}")
    assert "counts nothing" not in served


def test_the_environment_variable_says_insecure_too() -> None:
    port = free_port()
    output = output_of_a_served_start("--listen", f"0.0.0.0:{port}", port=port, env={"CHRONICLE_INSECURE": "true"})
    assert "--insecure: authentication is off" in output


def test_anonymous_administrators_are_refused_beyond_loopback_even_with_insecure() -> None:
    """--anonymous-admin is for a developer's own machine: on the network,
    anyone could forget aggregates irreversibly."""
    result = serve_until_exit("--database-url", "memory://", "--insecure", "--anonymous-admin", listen="0.0.0.0:0")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ANONYMOUS_ADMIN_EXPOSED: refusing to listen on 0.0.0.0:0 with")
    assert "Traceback" not in result.stderr
    with server_process("memory://", extra=["--anonymous-admin", "--shutdown-drain", "0"]) as server:
        assert server.stop(signal.SIGTERM) == 0  # on loopback it serves


# -- the Docker image -----------------------------------------------------------


def run_as_the_image(
    command: list[str],
    home: Path,
    port: int,
    *,
    mounts: dict[str, str] | None = None,
    environment: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """``command`` (the image's, or ``chronicle …`` as the docs run it) in a
    process with the Dockerfile's environment and none of ours, in a home
    with the image's ``data`` directory, its port 50051 moved to ``port``
    and its mounts' container paths moved to their host folders."""
    (home / "data").mkdir(parents=True, exist_ok=True)
    image = {name: value.replace(":50051", f":{port}") for name, value in dockerfile_environment().items()}
    clean = {name: value for name, value in os.environ.items() if not name.startswith("CHRONICLE_")}
    arguments = []
    for argument in command[1:]:
        for container_path, host_path in (mounts or {}).items():
            argument = argument.replace(container_path, host_path)
        arguments.append(argument)
    assert command[0] == "chronicle", command
    return subprocess.Popen(
        [sys.executable, "-m", "service", *arguments],
        cwd=home,
        env={**clean, **image, **(environment or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_docker_images_default_command_refuses_to_start(tmp_path: Path) -> None:
    """A bare ``docker run chronicle``: the Dockerfile's ENV, ENTRYPOINT and CMD."""
    assert dockerfile_environment()["CHRONICLE_LISTEN"].startswith("0.0.0.0:")  # a published port must reach it
    process = run_as_the_image(dockerfile_command(), tmp_path, free_port())
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2, output
    assert output.startswith("error: INSECURE_LISTEN: refusing to listen on 0.0.0.0:")


def test_the_image_serves_no_example_plugins_unless_told(tmp_path: Path) -> None:
    """`docker run chronicle plugins`: before the fix it listed the bank,
    box and users examples, which every image then served."""
    bare = run_as_the_image(["chronicle", "plugins"], tmp_path, free_port())
    output, _ = bare.communicate(timeout=60)
    assert bare.returncode == 0, output
    assert not {"bank_account", "box", "users"} & set(re.findall(r"[a-z_]+", output)), output
    told = run_as_the_image(
        ["chronicle", "plugins"], tmp_path, free_port(), environment={"CHRONICLE_EXAMPLE_PLUGINS": "true"}
    )
    output, _ = told.communicate(timeout=60)
    assert told.returncode == 0 and "bank_account" in output, output


def the_documented_docker_run_line() -> tuple[list[str], dict[str, str]]:
    """docs/deployment.md's one line that serves beyond loopback with
    authentication: the image's arguments (ENTRYPOINT first) and its
    bind mounts (container path: host path relative to the working directory)."""
    markdown = (ROOT / "docs" / "deployment.md").read_text()
    (line,) = [line for line in markdown.splitlines() if line.startswith("docker run") and "--auth" in line]
    words = shlex.split(line)[2:]
    mounts = {}
    while words[0].startswith("-"):
        option = words.pop(0)
        if option in ("-p", "-v", "-e"):
            value = words.pop(0)
            if option == "-v" and value.startswith("$PWD/"):
                host, container = value.removeprefix("$PWD/").split(":")[:2]
                mounts[container] = host
    assert words[0] == "chronicle", line  # the image, whose entry point is `chronicle`
    return ["chronicle", *words[1:]], mounts


def test_the_documented_line_serves_the_image_beyond_loopback_with_authentication(tmp_path: Path) -> None:
    command, mounts = the_documented_docker_run_line()
    assert "--insecure" not in command and "--auth" in command
    (secrets,) = mounts.values()
    (tmp_path / secrets).mkdir()
    write(tmp_path / secrets / "policy.toml", "[roles.operator]\nsubmit = ['*']\nread = ['*']\nadmin = true\n")
    made = subprocess.run(  # `chronicle apikey ops --role operator >secrets/keys.toml`, as the docs make it
        [sys.executable, "-m", "service", "apikey", "ops", "--role", "operator"], capture_output=True, text=True
    )
    write(tmp_path / secrets / "keys.toml", made.stdout)
    key = made.stderr.rsplit(": ", 1)[1].strip()
    port = free_port()
    server = run_as_the_image(
        command,
        tmp_path,
        port,
        mounts={container: str(tmp_path / host) for container, host in mounts.items()},
        environment={"CHRONICLE_EXAMPLE_PLUGINS": "true"},  # the bank stands for the domains installed on top
    )
    try:
        address = f"127.0.0.1:{port}"
        wait_until_serving(address, process=server)
        anonymous = cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=address, check=False)
        assert "UNAUTHENTICATED NO_CREDENTIALS" in anonymous.stderr
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', "--token", key, server=address)
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate(timeout=10)
    assert f"authentication is on but 0.0.0.0:{port} serves plaintext beyond loopback" in output
    assert (tmp_path / "data" / "chronicle.db").exists()  # the image's SQLite, in the mounted volume


# -- anonymous callers --------------------------------------------------------


async def refusal(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    details = details_of(raised.value)
    return details.code, details.reason


@pytest.fixture(params=[False, True], ids=["default", "anonymous-admin"])
async def anonymous(request: pytest.FixtureRequest) -> AsyncIterator[tuple[bool, Client]]:
    """A server with authentication off and encryption on (so that forgetting
    could work), with or without --anonymous-admin."""
    registry = Registry([bank_account.plugin, openings])
    settings = {"master_keys": f"k1:{new_master_key()}", "anonymous_admin": request.param}
    async with running_server(MemoryStore(), registry=registry, **settings) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        yield request.param, client


async def test_anonymous_callers_administer_only_with_the_operators_opt_in(anonymous: tuple[bool, Client]) -> None:
    opted_in, client = anonymous
    calls = {
        "forget": client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acc-1")),
        "rewrap": client.admin.RewrapKeys(admin.RewrapKeysRequest()),
        "audit": client.admin.QueryAudit(admin.QueryAuditRequest()),
        "projection of every aggregate type": client.projections.GetProjection(
            projection.GetProjectionRequest(name="openings.every_opening")
        ),
    }
    for name, call in calls.items():
        if opted_in:
            await call
        else:
            assert await refusal(call) == (grpc.StatusCode.PERMISSION_DENIED, "ANONYMOUS_ADMIN_DENIED"), name
    state = client.events.GetAggregate(event_service_pb2.GetAggregateRequest(aggregate_id="acc-1"))
    if opted_in:
        assert await refusal(state) == (grpc.StatusCode.FAILED_PRECONDITION, "AGGREGATE_FORGOTTEN")
    else:
        account = bank.Account()
        assert (await state).state.Unpack(account)
        assert account.owner == "ann"  # nothing was forgotten


async def test_anonymous_callers_still_submit_read_subscribe_and_read_projections(
    anonymous: tuple[bool, Client],
) -> None:
    _, client = anonymous
    await client.submit(command("acc-1", bank.Deposit(amount=5)))
    events = [
        e async for e in client.events.ReadAggregate(event_service_pb2.ReadAggregateRequest(aggregate_id="acc-1"))
    ]
    assert [e.version for e in events] == [1, 2]
    status = await client.projections.GetProjection(projection.GetProjectionRequest(name="bank.balances_by_owner"))
    assert status.aggregate_types == ["Account"]
    stream = client.events.Subscribe(event_service_pb2.SubscribeRequest())
    async for response in stream:
        if response.HasField("caught_up"):
            break
    stream.cancel()


async def test_the_refusal_says_why_and_what_to_do() -> None:
    async with running_server(MemoryStore()) as (_, client):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.admin.QueryAudit(admin.QueryAuditRequest())
    details = details_of(raised.value)
    assert details.message.startswith("anonymous callers may not query the audit log: authentication is off")
    assert "--auth" in details.message and "--anonymous-admin" in details.message
    assert details.metadata == {"principal": "", "action": "query the audit log"}


def test_a_developers_server_serves_the_cli_but_not_its_admin_commands(tmp_path: Path) -> None:
    """``make run``: loopback, authentication off, no other setting."""
    with server_process(f"sqlite:///{tmp_path}/events.db") as server:
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "ann"}', server=server.address)
        cli("submit", "acc-1", "bank.v1.Deposit", '{"amount": 7}', server=server.address)
        assert json.loads(cli("get", "acc-1", server=server.address).stdout)["state"]["balance"] == "7"
        assert len(cli("read", "acc-1", server=server.address).stdout.splitlines()) == 2
        refused = [
            cli(*admin_command, server=server.address, check=False)
            for admin_command in (["forget", "acc-1"], ["audit"])
        ]
        server.stop()
        assert server.process.stdout is not None
        banner = server.process.stdout.read()
    for result in refused:
        assert result.returncode == 1
        assert "error: PERMISSION_DENIED ANONYMOUS_ADMIN_DENIED: anonymous callers may not" in result.stderr
    assert (
        "authentication OFF: anonymous callers may submit, read and subscribe to everything (not administer)" in banner
    )


# -- master keys on the command line ------------------------------------------


def test_master_keys_on_the_command_line_warn_and_in_the_environment_do_not() -> None:
    key = f"k1:{new_master_key()}"
    flagged = output_of_a_served_start("--master-keys", key)
    assert "--master-keys on the command line is visible to every user of this machine" in flagged
    from_the_environment = output_of_a_served_start(env={"CHRONICLE_MASTER_KEYS": key})
    assert "payloads encrypted at rest" in from_the_environment
    assert "--master-keys" not in from_the_environment
    assert key.split(":")[1] not in flagged + from_the_environment
