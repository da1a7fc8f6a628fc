"""A policy's grants name the kinds of types their keys take, checked against
the loaded plugins at start-up, on real server processes: an event or a
command type where aggregate types go (read, subscribe), an aggregate or
event type where command types go (submit), grant nothing and stop the
server (BAD_POLICY, naming the role, the key and the entry); a name no
plugin declares (a typo, or a retired plugin's type, which may rightly be
granted) starts it with a WARNING naming the closest declared one; an API
key whose role the policy does not define stops it, as a policy principal
naming one does (docs/security.md, "The policy")."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service.app import start
from service.store.memory import MemoryStore
from tests.support.grpc_client import with_jwt_auth
from tests.support.processes import serve_until_exit
from tests.support.security import ISSUER, JwtIssuer, api_key_file, write

BASE = """
[roles.teller]
submit = ["bank.v1.Deposit"]
read = ["Account"]
"""


def refused(tmp_path: Path, policy: str, *extra: str) -> str:
    result = serve_until_exit(
        "--database-url", "memory://",
        "--auth",
        "--policy-file", write(tmp_path / "policy.toml", policy),
        "--jwt-key-file", write(tmp_path / "jwt.pem", JwtIssuer().public_key),
        "--jwt-issuer", ISSUER,
        *extra,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()[-1:]
    return line


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ('read = ["Account", "bank.v1.AccountOpened"]', "roles.x.read names 'bank.v1.AccountOpened', an event type"),
        ('subscribe = ["bank.v1.Deposit"]', "roles.x.subscribe names 'bank.v1.Deposit', a command type"),
        ('submit = ["Account"]', "roles.x.submit names 'Account', an aggregate type"),
        ('submit = ["bank.v1.MoneyDeposited"]', "roles.x.submit names 'bank.v1.MoneyDeposited', an event type"),
    ],
)
def test_a_grant_naming_the_wrong_kind_of_type_stops_the_server(tmp_path: Path, entry: str, says: str) -> None:
    line = refused(tmp_path, f"{BASE}\n[roles.x]\n{entry}\n")
    assert line.startswith("error: BAD_POLICY: ") and says in line, line
    assert "grants nothing" in line


def test_an_api_key_whose_role_the_policy_does_not_define_stops_the_server(tmp_path: Path) -> None:
    keys = api_key_file(tmp_path / "keys.toml", [("k" * 32, "alice", ["teller"]), ("j" * 32, "bob", ["tennant"])])
    line = refused(tmp_path, BASE, "--api-keys-file", keys)
    assert line.startswith("error: BAD_POLICY: ") and "'bob'" in line and "['tennant']" in line, line


async def test_a_name_no_plugin_declares_starts_the_server_with_a_warning_naming_the_closest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = BASE + '\n[roles.typo]\nread = ["Acount", "RetiredLedger"]\nsubmit = ["bank.v1.Depositt"]\n'
    settings = with_jwt_auth(tmp_path, JwtIssuer(), policy)
    with caplog.at_level(logging.WARNING, logger="chronicle"):
        app = await start(settings, store=MemoryStore())
    await app.stop(grace=0.5)
    warned = [r.getMessage() for r in caplog.records if "no loaded plugin declares" in r.getMessage()]
    assert len(warned) == 3, warned
    acount, retired, deposit = sorted(warned)  # by role.key then name: read Acount, read RetiredLedger, submit
    assert "roles.typo.read names 'Acount'" in acount and "did you mean 'Account'?" in acount
    assert "roles.typo.read names 'RetiredLedger'" in retired and "did you mean" not in retired
    assert "'bank.v1.Deposit'?" in deposit
