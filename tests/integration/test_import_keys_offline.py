"""``chronicle import FILE --database-url URL`` and the master keys
(docs/export-format.md, "Encryption at rest"): an export of a store
encrypted at rest is refused, with nothing written, when the command is
given no master keys, as a server without them refuses it; given them with
``--master-key-file`` (serve's flag), it is imported and a server with those
keys reads it. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from chronicle.v1 import event_service_pb2 as ev
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service import cli
from service.store.base import StoreAdapter
from service.store.postgres import PostgresStore
from service.store.records import LogFilter
from service.store.sqlite import SqliteStore
from tests.integration.test_import_encryption import EMAIL, KEYS, encrypted_export, write_export
from tests.support.grpc_client import running_server


class Target:
    """An empty store the command imports into: its URL, and how to open it."""

    def __init__(self, url: str, opened: Callable[[], StoreAdapter]) -> None:
        self.url = url
        self.opened = opened

    @asynccontextmanager
    async def store(self) -> AsyncIterator[StoreAdapter]:
        store = self.opened()
        await store.open()
        try:
            yield store
        finally:
            await store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "sqlite":
        path = tmp_path / "target.db"
        return Target(f"sqlite:///{path}", lambda: SqliteStore(path))
    url: str = request.getfixturevalue("postgres_url")
    return Target(url, lambda: PostgresStore(url))


@pytest.fixture
def without_keys_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The walkthrough's `env -u CHRONICLE_MASTER_KEY_FILE`: no keys but those given on the command line."""
    monkeypatch.delenv("CHRONICLE_MASTER_KEY_FILE", raising=False)
    monkeypatch.delenv("CHRONICLE_MASTER_KEYS", raising=False)


async def export_file(tmp_path: Path) -> Path:
    path = tmp_path / "backup.chronicle"
    await asyncio.to_thread(write_export, path, await encrypted_export())
    return path


def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "master.keys"
    path.touch(mode=0o600)
    path.write_text(KEYS + "\n")
    return path


def served_without_keys(target: Target) -> AbstractAsyncContextManager[object]:
    return running_server(target.opened(), anonymous_admin=True)


@pytest.mark.usefixtures("without_keys_in_environment")
async def test_an_encrypted_export_is_refused_with_nothing_written_without_master_keys(
    target: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the fix: "import: done: 2 events written", exit 0, and a
    store no server without the keys would start on
    (ENCRYPTED_STORE_WITHOUT_KEYS)."""
    path = await export_file(tmp_path)

    status = await asyncio.to_thread(cli.main, ["import", str(path), "--database-url", target.url, "--quiet"])

    err = capsys.readouterr().err
    assert status == 1, err
    assert err.startswith("error: ENCRYPTED_EXPORT_WITHOUT_KEYS: record[1]: "), err
    assert "the command was given no master keys" in err and "--master-key-file" in err
    async with target.store() as store:
        assert await store.data_keys_page("", 100) == []
        assert not (await store.read_log(0, LogFilter(), 100)).events
    async with served_without_keys(target):
        pass  # starts: the store holds nothing sealed


@pytest.mark.usefixtures("without_keys_in_environment")
async def test_an_encrypted_export_is_imported_with_the_master_key_file_it_is_given(
    target: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = await export_file(tmp_path)
    keys = key_file(tmp_path)

    argv = ["import", str(path), "--database-url", target.url, "--master-key-file", str(keys), "--quiet"]
    status = await asyncio.to_thread(cli.main, argv)

    out, err = capsys.readouterr()
    assert status == 0, err
    assert json.loads(out)["events_written"] == 2
    async with running_server(target.opened(), anonymous_admin=True, master_keys=KEYS) as (_, client):
        state = await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="usr-alice"))
        user = users.User()
        assert state.state.Unpack(user) and user.email == EMAIL


def test_import_offers_serve_s_master_key_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["import", "--help"])
    said = capsys.readouterr().out
    assert "--master-key-file" in said and "CHRONICLE_MASTER_KEY_FILE" in said
