"""A server whose key files and policy are read again every 50 ms
(--auth-reload-seconds), with the files in the test's folder to change; and
readers of the streams such a change ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from service.app import Application
from service.store.base import StoreAdapter
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
    store: StoreAdapter | None = None,
) -> AsyncIterator[Served]:
    """A server on ``store`` (a new memory store), authenticating ``keys``
    (key, principal, roles) and JWTs of a new issuer, under ``policy``."""
    issuer = JwtIssuer()
    keys_file, policy_file, jwt_key = tmp_path / "keys.toml", tmp_path / "policy.toml", tmp_path / "jwt.pem"
    api_key_file(keys_file, keys)
    write(policy_file, policy)
    write(jwt_key, issuer.public_key)
    async with running_server(
        MemoryStore() if store is None else store,
        auth=True,
        api_keys_file=str(keys_file),
        policy_file=str(policy_file),
        jwt_key_file=str(jwt_key),
        jwt_issuer=issuer.issuer,
        auth_reload_seconds=0.05,
        jwt_leeway_seconds=jwt_leeway_seconds,
    ) as (app, _):
        yield Served(app, keys_file, policy_file, jwt_key, issuer)


async def caught_up(call: Any) -> None:
    """Read until the subscription ``call`` reports it has caught up: it is open."""
    async with asyncio.timeout(20):
        while (message := await call.read()) is not grpc.aio.EOF:
            if message.WhichOneof("kind") == "caught_up":
                return
    raise AssertionError("the subscription ended before it caught up")


async def end_of(call: Any) -> grpc.aio.AioRpcError:
    """Read ``call`` to its end, which must be an error status."""
    async with asyncio.timeout(20):
        try:
            while await call.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError as ended:
            return ended
    raise AssertionError("the stream ended without an error")
