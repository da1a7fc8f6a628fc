"""A feature the servers turn on for good once no live server of a version
before it is left (service/store/features.py), each by its own migration,
on the stores that record them (SQLite, PostgreSQL; the memory store
serves one process), and the one it gates: a tenant_keyed read model's documents under tenants' keys, which
Chronicle 0.3.0 does not read (service/store/document_ciphers.py,
docs/deployment.md "Upgrading and rolling back")."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from service.errors import DocumentForgotten
from service.store.base import Store, StoreAdapter
from service.store.encrypted import encrypted
from service.store.encryption import Keyring, MasterKeys, new_master_key, projection_key_id, tenant_projection_key_id
from service.store.features import (
    FEATURES,
    TENANT_DOCUMENT_KEYS,
    ClusterFeatures,
    Feature,
    FeatureReader,
    UnknownFeature,
    feature_schemas,
    feature_since,
)
from service.store.grouping import consumer_group
from service.store.leasing import LeaseMember
from service.store.postgres.migrations import known_migrations
from service.store.postgres.store import PostgresStore
from service.store.sql_common import Migration
from service.store.sqlite.migrations import MIGRATIONS
from service.store.sqlite.store import SqliteStore
from service.store_contract.test_encrypted import Encrypted
from service.store_contract.test_tenant_documents import OWNERS, put

pytestmark = pytest.mark.asyncio

SHARED = f"k1:{new_master_key()}"
ACME = f"acme:2026-01:{new_master_key()}"
TTL = 30.0


def features_of(store: StoreAdapter) -> ClusterFeatures:
    if not isinstance(store, ClusterFeatures):
        pytest.skip("the store records no features (one process: every feature on)")
    return store


def migrations_of(store: StoreAdapter) -> list[Migration]:
    return known_migrations() if isinstance(store, PostgresStore) else MIGRATIONS


def since(store: StoreAdapter, feature: str = TENANT_DOCUMENT_KEYS) -> int:
    """The schema from which servers honour ``feature`` (tenant_document_keys:
    the features table's; 0.3.0's servers know the one before)."""
    return feature_since(feature, migrations_of(store))


def declare_two(store: StoreAdapter, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """Two features declared for the test, as a later version would add
    them: the first since this store's migration before its newest, the
    second since its newest (as if a version after it made the migration)."""
    before_newest, newest = migrations_of(store)[-2:]
    for name, migration in (("early_marks", before_newest), ("later_marks", newest)):
        monkeypatch.setitem(FEATURES, name, Feature(name, since=migration.name, behind=f"it reads {name} as absent"))
    return "early_marks", "later_marks"


async def _update_member(
    store: StoreAdapter, group: str, member_id: str, *, postgres: str, sqlite: str, values: tuple[int, ...] = ()
) -> None:
    """Changes ``member_id``'s row as its store would not (an older
    server's, a lapse): ``postgres`` / ``sqlite``, the SET clause (a
    constant of this module), ``values`` its parameters."""
    if isinstance(store, PostgresStore):
        async with await psycopg.AsyncConnection.connect(store.url) as session:
            await session.execute(
                f"UPDATE chronicle.lease_members SET {postgres} WHERE lease_group = %s AND member_id = %s",
                (*values, group, member_id),
            )
            await session.commit()
    else:
        assert isinstance(store, SqliteStore)
        with sqlite3.connect(store._path) as db:
            db.execute(
                f"UPDATE lease_members SET {sqlite} WHERE lease_group = ? AND member_id = ?",
                (*values, group, member_id),
            )
        db.close()


async def join(store: StoreAdapter, group: str, member_id: str, *, schema: int | None = None) -> None:
    """``member_id`` beats in ``group``, as a server whose code knows
    ``schema`` (None: this one's) would: a store writes the schema its own
    code knows, so an older server's is set in its row afterwards."""
    await store.renew_leases(group, LeaseMember(member_id, f"{member_id}:50051"), [], TTL)
    if schema is not None:
        await _update_member(
            store, group, member_id, postgres="schema_version = %s", sqlite="schema_version = ?", values=(schema,)
        )


async def lapse(store: StoreAdapter, group: str, member_id: str) -> None:
    """``member_id``'s membership lapses, as a server's that died without
    leaving does a lease time after its last heartbeat."""
    await _update_member(
        store, group, member_id, postgres="expires_at = now() - interval '1 second'", sqlite="expires_at_us = 0"
    )


async def test_every_declared_feature_is_honoured_from_a_migration_of_both_stores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each store finds it by name (a server would not start otherwise:
    its watch of members behind reads them all)."""
    assert feature_schemas(known_migrations()).keys() == feature_schemas(MIGRATIONS).keys() == FEATURES.keys()
    monkeypatch.setitem(
        FEATURES, "postgres_only", Feature("postgres_only", since="claims_per_tenant_code_points", behind="-")
    )
    assert feature_since("postgres_only", known_migrations()) > feature_since(TENANT_DOCUMENT_KEYS, known_migrations())
    with pytest.raises(UnknownFeature, match="claims_per_tenant_code_points"):
        feature_since("postgres_only", MIGRATIONS)


async def test_the_table_came_with_the_newest_migration_but_none_before() -> None:
    # What an older server knows is below it: 0.3.0 knew PostgreSQL's 28 and SQLite's 24.
    assert feature_since(TENANT_DOCUMENT_KEYS, known_migrations()) > 28
    assert feature_since(TENANT_DOCUMENT_KEYS, MIGRATIONS) > 24


async def test_a_feature_waits_for_every_older_server_and_stays_on_once_on(store: StoreAdapter) -> None:
    features = features_of(store)
    await join(store, "projections", "old", schema=since(store) - 1)  # 0.3.0's
    await join(store, "partitions", "new")
    assert not await features.enable_feature(TENANT_DOCUMENT_KEYS)
    assert not await features.enable_feature(TENANT_DOCUMENT_KEYS)  # asked again: still not
    await store.leave_group("projections", "old")
    assert await features.enable_feature(TENANT_DOCUMENT_KEYS)
    # Never off again: an older server back (a rollback) does not turn it off.
    await join(store, "projections", "old", schema=since(store) - 1)
    assert await features.enable_feature(TENANT_DOCUMENT_KEYS)


async def test_a_feature_of_a_later_migration_waits_for_the_servers_that_honour_only_earlier_ones(
    store: StoreAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each feature by its own migration: a server that honours the
    features of its version holds back only those added after it (0.4.0,
    schema 30 on PostgreSQL, holds back a feature of 0.5.0's migration 31)."""
    features = features_of(store)
    early, later = declare_two(store, monkeypatch)
    await join(store, "projections", "older", schema=since(store, later) - 1)
    assert since(store, early) <= since(store, later) - 1  # it honours the early one
    assert await features.enable_feature(early)
    assert not await features.enable_feature(later)
    await lapse(store, "projections", "older")  # died: a lease time later, not live
    assert await features.enable_feature(later)


async def test_an_undeclared_feature_is_a_mistake_in_the_code_and_turns_nothing_on(store: StoreAdapter) -> None:
    features = features_of(store)
    with pytest.raises(UnknownFeature, match="another"):
        await features.enable_feature("another")
    assert isinstance(store, FeatureReader)
    assert await store.features_on() == frozenset()


async def test_the_features_on_are_read_with_the_schema_below_which_a_server_does_not_honour_them(
    store: StoreAdapter,
) -> None:
    """``FeatureReader``: what the newer servers check the live members
    against (service/cluster/features_behind.py)."""
    features = features_of(store)
    assert isinstance(store, FeatureReader)
    assert store.feature_schemas() == {TENANT_DOCUMENT_KEYS: since(store)}
    assert await store.features_on() == frozenset()
    assert await features.enable_feature(TENANT_DOCUMENT_KEYS)
    assert await store.features_on() == {TENANT_DOCUMENT_KEYS}


async def test_a_server_of_a_version_before_member_versions_holds_it_back(store: StoreAdapter) -> None:
    features = features_of(store)
    await join(store, "projections", "older", schema=0)  # a version from before members' versions
    assert not await features.enable_feature(TENANT_DOCUMENT_KEYS)


async def test_a_subscription_groups_consumers_are_not_servers(store: StoreAdapter) -> None:
    features = features_of(store)
    await join(store, consumer_group("orders"), "consumer-1", schema=0)  # a client's consumer
    assert await features.enable_feature(TENANT_DOCUMENT_KEYS)


def encrypting(store: StoreAdapter, *, tenant_keyed: frozenset[str], features: ClusterFeatures | None) -> Encrypted:
    keyring = Keyring(store, MasterKeys.parse(f"{SHARED},{ACME}", source="test"))
    return Encrypted(encrypted(Store.of(store), keyring, tenant_keyed=tenant_keyed, features=features), keyring)


async def test_tenant_keyed_documents_are_written_as_0_3_0_reads_them_while_one_is_live(store: StoreAdapter) -> None:
    features = features_of(store)
    new = encrypting(store, tenant_keyed=frozenset({OWNERS}), features=features)
    # 0.3.0 knows no tenant_keyed read model: it reads every document under the read model's key.
    old = encrypting(store, tenant_keyed=frozenset(), features=None)
    await join(store, "projections", "old", schema=since(store) - 1)
    await put(new, OWNERS, ("acme:acc-1", b"ann"))
    assert [d.data for d in await old.roles.projections.load_documents(OWNERS, ["acme:acc-1"])] == [b"ann"]
    assert await store.load_data_key(tenant_projection_key_id(OWNERS, "acme")) is None
    await put(old, OWNERS, ("acme:acc-1", b"ann, as the old replica wrote"))  # the old one took the lease
    assert [d.data for d in await new.roles.projections.load_documents(OWNERS, ["acme:acc-1"])] == [
        b"ann, as the old replica wrote"
    ]

    await store.leave_group("projections", "old")  # the last old replica gone
    await put(new, OWNERS, ("acme:acc-1", b"ann, moved"), ("acme:acc-2", b"amy"))
    assert await store.load_data_key(tenant_projection_key_id(OWNERS, "acme")) is not None
    assert await store.load_data_key(projection_key_id(OWNERS)) is not None
    assert await old.roles.projections.load_documents(OWNERS, ["acme:acc-1", "acme:acc-2"]) == []
    found = await new.roles.projections.load_documents(OWNERS, ["acme:acc-1", "acme:acc-2"])
    assert sorted(d.data for d in found) == [b"amy", b"ann, moved"]


class Switch:
    """A store's features as a switch the test turns, counting the asks."""

    def __init__(self) -> None:
        self.on = False
        self.asked = 0

    async def enable_feature(self, name: str) -> bool:
        assert name == TENANT_DOCUMENT_KEYS
        self.asked += 1
        return self.on


async def test_the_feature_is_asked_at_each_commit_until_on_then_never_again(store: StoreAdapter) -> None:
    switch = Switch()
    sealed = encrypting(store, tenant_keyed=frozenset({OWNERS}), features=switch)
    await put(sealed, OWNERS, ("acme:acc-1", b"ann"))
    await put(sealed, OWNERS, ("acme:acc-1", b"ann again"))
    assert switch.asked == 2  # a replica that took the lease over asks after the one that turned it on
    assert await store.load_data_key(tenant_projection_key_id(OWNERS, "acme")) is None
    switch.on = True
    await put(sealed, OWNERS, ("acme:acc-1", b"ann, moved"))
    await put(sealed, OWNERS, ("acme:acc-2", b"amy"))
    assert switch.asked == 3
    assert await store.load_data_key(tenant_projection_key_id(OWNERS, "acme")) is not None
    found = await sealed.roles.projections.load_documents(OWNERS, ["acme:acc-1", "acme:acc-2"])
    assert sorted(d.data for d in found) == [b"amy", b"ann, moved"]
    await put(sealed, "bank.totals", ("acme:acc-1", b"1"))  # not tenant_keyed: nothing to ask
    assert switch.asked == 3


async def test_a_shredded_tenants_documents_are_refused_while_written_as_0_3_0_reads_them(store: StoreAdapter) -> None:
    switch = Switch()  # off: an older replica live
    keys = Keyring(store, MasterKeys.parse(f"{SHARED},{ACME}", source="test"))
    sealed = Encrypted(encrypted(Store.of(store), keys, tenant_keyed=frozenset({OWNERS}), features=switch), keys)
    await put(sealed, OWNERS, ("acme:acc-1", b"ann"))
    shredded_keys = Keyring(store, MasterKeys.parse(f"{SHARED},acme:2026-01:destroyed", source="test"))
    shredded = Encrypted(
        encrypted(Store.of(store), shredded_keys, tenant_keyed=frozenset({OWNERS}), features=switch), shredded_keys
    )
    await shredded.keyring.check()
    with pytest.raises(DocumentForgotten):
        await shredded.roles.projections.load_document(OWNERS, "acme:acc-1")
    with pytest.raises(DocumentForgotten):
        await put(shredded, OWNERS, ("acme:acc-2", b"amy"))
