"""Exports and imports over gRPC, as a client does them, and stores to move
between (SQLite files and PostgreSQL databases of a test's own)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from chronicle.v1 import admin_service_pb2, export_pb2
from service.store.base import StoreAdapter
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore
from tests.support.grpc_client import Client
from tests.support.postgres import Cluster

OpenStore = Callable[[str, str], AbstractAsyncContextManager[StoreAdapter]]


def store_opener(tmp_path: Path, cluster: Callable[[], Cluster]) -> OpenStore:
    """``open(kind, name)``: a new, empty store of ``kind`` ("sqlite" or
    "postgres") that lives as long as the context; ``name`` tells a test's
    stores apart."""

    @asynccontextmanager
    async def opened(kind: str, name: str) -> AsyncIterator[StoreAdapter]:
        store: StoreAdapter
        if kind == "sqlite":
            store = SqliteStore(tmp_path / f"{name}.db")
            url = None
        else:
            url = cluster().create_database()
            store = PostgresStore(url, pool_size=4)
        await store.open()
        try:
            yield store
        finally:
            await store.close()
            if url is not None:
                cluster().drop_database(url)

    return opened


async def exported(client: Client, **request: object) -> list[export_pb2.ExportRecord]:
    """Every record of an ``ExportLog`` call."""
    call = client.admin.ExportLog(admin_service_pb2.ExportLogRequest(**request), timeout=60)  # type: ignore[arg-type]
    return [record async for record in call]


async def imported(
    client: Client,
    records: Iterable[export_pb2.ExportRecord],
    *,
    overwrite: bool = False,
    restore_deleted: bool = False,
    read_models_wait_ms: int = 0,
) -> admin_service_pb2.ImportLogResponse:
    """``ImportLog`` of ``records``, the options with the first."""

    async def requests() -> AsyncIterator[admin_service_pb2.ImportLogRequest]:
        for index, record in enumerate(records):
            request = admin_service_pb2.ImportLogRequest(record=record)
            if index == 0:
                request.options.overwrite = overwrite
                request.options.restore_deleted = restore_deleted
                request.options.read_models_wait_ms = read_models_wait_ms
            yield request

    response: admin_service_pb2.ImportLogResponse = await client.admin.ImportLog(requests(), timeout=60)
    return response


def kinds(records: Iterable[export_pb2.ExportRecord]) -> list[str]:
    return [record.WhichOneof("record") or "" for record in records]
