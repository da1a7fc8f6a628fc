"""A server whose key files and policy are read again every 50 ms
(--auth-reload-seconds), with the files in the test's folder to change."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from service.app import Application
from service.store.memory import MemoryStore
from tests.support.grpc_client import running_server
from tests.support.security import JwtIssuer, api_key_file, write


@dataclass
class Served:
    app: Application
    keys: Path
    policy: Path
    jwt_key: Path
    issuer: JwtIssuer


@asynccontextmanager
async def reloading_server(
    tmp_path: Path,
    *,
    keys: Sequence[tuple[str, str, Sequence[str]]],
    policy: str,
    jwt_leeway_seconds: float = 30.0,
) -> AsyncIterator[Served]:
    """A server on a memory store, authenticating ``keys`` (key, principal,
    roles) and JWTs of a new issuer, under ``policy``."""
    issuer = JwtIssuer()
    keys_file, policy_file, jwt_key = tmp_path / "keys.toml", tmp_path / "policy.toml", tmp_path / "jwt.pem"
    api_key_file(keys_file, keys)
    write(policy_file, policy)
    write(jwt_key, issuer.public_key)
    async with running_server(
        MemoryStore(),
        auth=True,
        api_keys_file=str(keys_file),
        policy_file=str(policy_file),
        jwt_key_file=str(jwt_key),
        jwt_issuer=issuer.issuer,
        auth_reload_seconds=0.05,
        jwt_leeway_seconds=jwt_leeway_seconds,
    ) as (app, _):
        yield Served(app, keys_file, policy_file, jwt_key, issuer)
