"""The console over HTTP in tests: a server with authentication and the
console on, its address, logging in with a credential, the session cookie."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode

from service.app import Application
from service.settings import Settings
from tests.support.grpc_client import TEST_SETTINGS
from tests.support.http import Answer, request
from tests.support.security import ISSUER, POLICY, JwtIssuer, api_key_file, write

KEY = "console-http-key-0123456789"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def authenticated(tmp_path: Path, **overrides: object) -> Settings:
    issuer = JwtIssuer()
    return replace(
        TEST_SETTINGS,
        auth=True,
        policy_file=write(tmp_path / "policy.toml", POLICY),
        api_keys_file=api_key_file(tmp_path / "keys.toml", [(KEY, "root", ["teller"])]),
        jwt_key_file=write(tmp_path / "jwt.pem", issuer.public_key),
        jwt_issuer=ISSUER,
        **{"console_listen": "127.0.0.1:0", **overrides},  # type: ignore[arg-type]
    )


def console(app: Application) -> str:
    assert app.console is not None
    return app.console.address


async def log_in(address: str, credential: str) -> Answer:
    return await request(
        address,
        "POST",
        "/login",
        headers={**FORM, "Origin": f"http://{address}"},
        body=urlencode({"credential": credential}).encode(),
    )


def session_cookie(answer: Answer) -> str:
    (cookie,) = answer.all("set-cookie")
    return cookie.split(";")[0]
