"""PostgreSQL's optional JSON copy of each event's payload
(--postgres-json-events): written with the event, in Protobuf's JSON
mapping of the plugin's type, queryable in SQL; never beside encrypted
payloads, only on PostgreSQL; a database from before the option gains the
column with its rows untouched."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import build_registry
from service.processing.payload_json import payload_json
from service.store.postgres import PostgresStore
from service.store.postgres.migrations import SCHEMA, known_migrations
from service.store.records import ClaimChange, NewEvent
from tests.support.events import new_event, recorded_event
from tests.support.grpc_client import TEST_SETTINGS, command, running_server
from tests.support.processes import serve_until_exit
from tests.support.schema_versions import build_postgres

pytestmark = pytest.mark.postgres


def deposited(amount: int) -> NewEvent:
    return new_event(
        "bank.v1.MoneyDeposited",
        aggregate_type="Account",
        payload=bank.MoneyDeposited(amount=amount).SerializeToString(),
    )


async def test_each_event_is_kept_as_json_too_and_queried_in_sql(postgres_url: str) -> None:
    registry = build_registry(TEST_SETTINGS)
    store = PostgresStore(postgres_url, pool_size=2, json_of=payload_json(registry))
    async with running_server(store) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await client.submit(command("acc-1", bank.Deposit(amount=70)))
        # the precise path (claims) and an import write it too
        await store.append("u-1", [deposited(5)], 0, claims=[ClaimChange("s", "v")])
        await store.import_events([recorded_event("acc-9", 1, event_type="unknown.v1.Thing")])
        with psycopg.connect(postgres_url) as conn:
            rows = conn.execute(
                "SELECT aggregate_id, event_type, payload_json FROM chronicle.events ORDER BY position"
            ).fetchall()
            found = conn.execute(
                "SELECT aggregate_id FROM chronicle.events WHERE payload_json->>'owner' = 'ann'"
            ).fetchall()
    assert rows == [
        ("acc-1", "bank.v1.AccountOpened", {"owner": "ann"}),
        ("acc-1", "bank.v1.MoneyDeposited", {"amount": "70"}),
        ("u-1", "bank.v1.MoneyDeposited", {"amount": "5"}),
        ("acc-9", "unknown.v1.Thing", None),  # no plugin declares it: no copy
    ]
    assert found == [("acc-1",)]


async def test_without_the_option_there_is_no_copy(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, pool_size=2)
    await store.open()
    try:
        await store.append("acc-1", [deposited(1)], 0)
        with psycopg.connect(postgres_url) as conn:
            assert conn.execute("SELECT payload_json FROM chronicle.events").fetchall() == [(None,)]
    finally:
        await store.close()


async def test_a_database_from_before_gains_the_column_and_keeps_its_events(postgres_url: str) -> None:
    (json_migration,) = [m for m in known_migrations() if m.name == "payload_json"]
    # As a Chronicle from before the column left it, with every kind of row.
    await build_postgres(postgres_url, json_migration.version - 1, filled=True)
    with psycopg.connect(postgres_url) as conn:
        before = conn.execute(f"SELECT event_id, payload FROM {SCHEMA}.events ORDER BY position").fetchall()
    assert before
    # force_migration: the old rows hold a live replica of the old schema,
    # which would otherwise stop a migration that raises the floor.
    reopened = PostgresStore(
        postgres_url, pool_size=2, json_of=payload_json(build_registry(TEST_SETTINGS)), force_migration=True
    )
    await reopened.open()
    try:
        await reopened.append("acc-new", [deposited(4)], 0)
        with psycopg.connect(postgres_url) as conn:
            after = conn.execute(
                f"SELECT event_id, payload, payload_json FROM {SCHEMA}.events ORDER BY position"
            ).fetchall()
    finally:
        await reopened.close()
    assert [(event_id, payload) for event_id, payload, _ in after[:-1]] == before  # kept as they were
    assert [copy for _, _, copy in after] == [None] * len(before) + [{"amount": "4"}]


def test_the_option_is_refused_with_encryption_at_rest_and_off_postgresql(tmp_path: Path) -> None:
    with_keys = serve_until_exit("--postgres-json-events", "--master-keys", "k1:" + "A" * 43 + "=")
    assert with_keys.returncode != 0 and "not with encryption at rest" in with_keys.stdout + with_keys.stderr
    on_sqlite = serve_until_exit("--postgres-json-events", "--database-url", f"sqlite:///{tmp_path}/x.db")
    assert on_sqlite.returncode != 0 and "only PostgreSQL keeps a JSON copy" in on_sqlite.stdout + on_sqlite.stderr
