"""docs/security.md's "Certificates and tokens for a trial", run as
printed: its OpenSSL commands, its policy, its token script, its server
and its two calls; and what the CLI says to the callers it describes
without the right certificate."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.processes import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PRINTED_ADDRESS = "localhost:50051"


def recipe() -> str:
    doc = (ROOT / "docs" / "security.md").read_text()
    start = doc.index("### Certificates and tokens for a trial")
    return doc[start : doc.index("\n## ", start)]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def commands(block: str) -> list[str]:
    """The block's commands, continuation lines joined, comments left out."""
    joined = block.replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def wait_serving(address: str, directory: Path, server: subprocess.Popen[str]) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(directory / "ca.pem").read_bytes(),
        private_key=(directory / "batch.key").read_bytes(),
        certificate_chain=(directory / "batch.pem").read_bytes(),
    )
    deadline = time.monotonic() + 30
    with grpc.secure_channel(address, credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise TimeoutError(f"the recipe's server did not serve on {address}")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], list[str], str]]:
    """The recipe's files made in ``tmp_path`` and its server serving them;
    yields the directory, the environment, the client commands (on the
    server's port) and the address."""
    text = recipe()
    (make,) = blocks(text, "sh")[:1]
    (policy,) = blocks(text, "toml")
    (mint,) = blocks(text, "python")
    serve, *calls = commands(blocks(text, "sh")[1])
    # `chronicle` and `python` as a user's shell finds them in an activated environment.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    made = run(make, tmp_path, env)
    assert made.returncode == 0, made.stderr
    (tmp_path / "policy.toml").write_text(policy)
    (tmp_path / "mint_token.py").write_text(mint)

    port = free_port()
    address = f"localhost:{port}"
    env["CHRONICLE_LISTEN"] = f"127.0.0.1:{port}"
    server = subprocess.Popen(
        ["bash", "-c", f"exec {serve} --database-url sqlite:///{tmp_path}/events.db"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_serving(address, tmp_path, server)
        yield tmp_path, env, [call.replace(PRINTED_ADDRESS, address) for call in calls], address
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)
        if server.stdout:
            server.stdout.close()


def test_the_recipe_serves_mutual_tls_and_tokens_and_its_calls_act_as_it_says(
    served: tuple[Path, dict[str, str], list[str], str],
) -> None:
    directory, env, calls, _ = served
    assert [call.split()[:3] for call in calls] == [["chronicle", "submit", "acc-1"]] * 2
    users = []
    for call in calls:
        done = run(call, directory, env)
        assert done.returncode == 0, done.stderr
        users.append([event["user_id"] for event in json.loads(done.stdout)["events"]])
    assert users == [["CN=batch,O=Acme"], ["alice"]]  # as the doc says


def test_callers_without_the_right_certificate_are_told_what_is_missing(
    served: tuple[Path, dict[str, str], list[str], str],
) -> None:
    directory, env, _, address = served
    rogue = run(
        "openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2"
        " -subj /CN=rogue -keyout rogue.key -out rogue.pem",
        directory,
        env,
    )
    assert rogue.returncode == 0, rogue.stderr
    get = f"chronicle get acc-1 --server {address}"
    told = {
        name: run(f"{get} {flags}", directory, env)
        for name, flags in {
            "no certificate": "--tls-ca ca.pem",
            "another CA's": "--tls-ca ca.pem --tls-cert rogue.pem --tls-key rogue.key",
            "no TLS": "",
        }.items()
    }
    assert {name: done.returncode for name, done in told.items()} == dict.fromkeys(told, 1)
    hints = {name: done.stderr.splitlines()[-1] for name, done in told.items()}
    assert "asks for a client certificate" in hints["no certificate"]
    assert "--tls-cert CERT_FILE --tls-key KEY_FILE" in hints["no certificate"]
    assert "did not accept --tls-cert" in hints["another CA's"]
    assert "needs --tls-ca" in hints["no TLS"]
