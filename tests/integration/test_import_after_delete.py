"""Importing again after an administrator deleted an imported aggregate
(docs/coming-from.md: a tombstone, "the id can never be used again"): the
migration's next run is refused AGGREGATE_DELETED naming the aggregate,
with or without --overwrite, and writes nothing of it; only
--restore-deleted brings it back. Over a real server and through
``chronicle import --database-url``, on SQLite and PostgreSQL. Before:
AGGREGATE_NOT_EMPTY "holds other events at that version (import with
overwriting ...)", and --overwrite then resurrected the deleted aggregate
(its audit showing only the delete)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from service.store.base import StoreAdapter
from service.store.records import is_tombstone
from tests.integration.test_import_what_commands_could_carry import jsonl, opened, stream
from tests.support.grpc_client import details_of, running_server
from tests.support.import_claims import chronicle
from tests.support.processes import cli, server_process
from tests.support.stores import STORES, store_site
from tests.support.transfer import imported


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    async with STORES[request.param](store_site(request, tmp_path)) as opened_store:
        yield opened_store


async def test_a_deleted_aggregate_is_aggregate_deleted_overwriting_or_not_and_restored_only_on_purpose(
    store: StoreAdapter,
) -> None:
    records = stream(opened("acct-1"), opened("acct-2"))
    async with running_server(store, anonymous_admin=True) as (_, client):
        await imported(client, records)
        await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="acct-2", reason="erasure"))
        for overwrite in (False, True):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await imported(client, records, overwrite=overwrite)
            details = details_of(refused.value)
            assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "AGGREGATE_DELETED")
            assert details.metadata["aggregate_id"] == "acct-2" and details.metadata["record"] == "2"
            assert "was deleted here" in details.message and "--restore-deleted" in details.message
            (held,) = await store.read_aggregate("acct-2")
            assert is_tombstone(held), held  # not resurrected

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await imported(client, records, restore_deleted=True, read_models_wait_ms=60_001)
        details = details_of(refused.value)
        assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "WAIT_TOO_LONG")
        assert details.field_violations == ["options.read_models_wait_ms"]
        # Right after the delete: the bank's read model may be milliseconds
        # short of the tombstone, which the restore waits for (it was refused
        # READ_MODELS_BEHIND for that lag: test_import_read_models' is one
        # stopped, which it does not wait for).
        restored = await imported(client, records, restore_deleted=True)
        assert restored.aggregates_replaced == 1
        (back,) = await store.read_aggregate("acct-2")
        assert back.event_id == records[2].event.event.event_id


def test_import_database_url_says_deleted(tmp_path: Path) -> None:
    """The walkthrough's incremental migration run, on SQLite (the store's
    check is the same SQL on PostgreSQL: the server test above)."""
    url = f"sqlite:///{tmp_path}/chronicle.db"
    export = jsonl(
        tmp_path / "k.jsonl",
        ("4a1b0000-0000-4000-8000-000000000001", "acct-1", "ann"),
        ("4a1b0000-0000-4000-8000-000000000002", "acct-2", "bob"),
    )
    chronicle("import", str(export), "--quiet", "--database-url", url)
    with server_process(url, extra=["--anonymous-admin"]) as server:
        cli("delete", "acct-2", "--reason", "erasure request 42", server=server.address)
    for extra in ((), ("--overwrite",)):
        done = chronicle("import", str(export), "--quiet", "--database-url", url, *extra, check=False)
        assert done.returncode == 1 and done.stdout == "", done.stderr
        assert done.stderr.startswith("error: AGGREGATE_DELETED: record[2]: event "), done.stderr
        assert "'acct-2'" in done.stderr and "was deleted here" in done.stderr, done.stderr
    # The server's read model may not have reached the tombstone when it
    # stopped (READ_MODELS_BEHIND): what that means is test_import_read_models'.
    restore = ("--restore-deleted", "--even-if-read-models-behind")
    done = chronicle("import", str(export), "--quiet", "--database-url", url, *restore)
    assert json.loads(done.stdout)["aggregates_replaced"] == 1
