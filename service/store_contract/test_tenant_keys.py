"""Tenants' own master keys over every store (docs/security.md, "Per-tenant
keys"): a tenant's key wraps its new aggregates' data keys, rewrap-keys
moves a tenant's older ones onto it, and a key marked destroyed shreds what
it wrapped: read as forgotten, not as a key missing."""

from __future__ import annotations

import pytest

from service.errors import AggregateForgotten, MasterKeysUnfit, TenantShredded
from service.store.base import StoreAdapter
from service.store.encryption import Keyring, MasterKeys, check_master_keys, claims_key_id, new_master_key
from service.store.records import ClaimChange, DataKey, Snapshot
from service.store_contract.records import new_event
from service.store_contract.test_encrypted import Encrypted, sealed_over

pytestmark = pytest.mark.asyncio

SHARED = f"k1:{new_master_key()}"
ACME = f"acme:2026-01:{new_master_key()}"
ACME_NEXT = f"acme:2026-02:{new_master_key()}"
GLOBEX = f"globex:2026-01:{new_master_key()}"
ACME_DESTROYED = "acme:2026-01:destroyed"


def encrypting(store: StoreAdapter, *entries: str) -> Encrypted:
    return sealed_over(store, Keyring(store, MasterKeys.parse(",".join(entries), source="test")))


async def master_key_of(store: StoreAdapter, aggregate_id: str) -> str | None:
    key = await store.load_data_key(aggregate_id)
    assert key is not None
    return key.master_key_id


async def payloads(sealed: Encrypted, aggregate_id: str) -> list[tuple[bool, bytes]]:
    return [(e.redacted, e.payload) for e in await sealed.roles.events.read_aggregate(aggregate_id)]


async def test_a_tenants_key_wraps_its_new_aggregates_keys_and_no_one_elses(store: StoreAdapter) -> None:
    sealed = encrypting(store, SHARED, ACME, GLOBEX)
    for aggregate_id in ("acme:acc-1", "globex:acc-1", "initech:acc-1", "acc-1", "acme2:acc-1"):
        await sealed.roles.events.append(aggregate_id, [new_event(payload=b"\x08\x01")], 0)
    await sealed.roles.events.append("u-1", [new_event()], 0, claims=[ClaimChange("users.email", "a@x.example")])
    assert await master_key_of(store, "acme:acc-1") == "acme:2026-01"
    assert await master_key_of(store, "globex:acc-1") == "globex:2026-01"
    for shared in ("initech:acc-1", "acc-1", "acme2:acc-1", claims_key_id("users.email")):
        assert await master_key_of(store, shared) == "k1", shared  # a tenant without keys, none, a scope
    assert await payloads(sealed, "acme:acc-1") == [(False, b"\x08\x01")]


async def test_a_tenants_first_key_is_its_active_one(store: StoreAdapter) -> None:
    await encrypting(store, SHARED, ACME).roles.events.append("acme:acc-1", [new_event()], 0)
    rotated = encrypting(store, SHARED, ACME_NEXT, ACME)
    await rotated.roles.events.append("acme:acc-2", [new_event()], 0)
    assert await master_key_of(store, "acme:acc-2") == "acme:2026-02"
    assert await master_key_of(store, "acme:acc-1") == "acme:2026-01"  # until rewrapped
    assert len(await rotated.roles.events.read_aggregate("acme:acc-1")) == 1


async def test_rewrap_moves_a_tenants_keys_onto_its_key_and_rotates_within_it(store: StoreAdapter) -> None:
    before = encrypting(store, SHARED)  # no tenant has a key yet
    for aggregate_id in ("acme:acc-1", "acme:acc-2", "acme:acc-3", "acc-1", "globex:acc-1"):
        await before.roles.events.append(aggregate_id, [new_event(payload=b"\x08\x05")], 0)
    given = encrypting(store, SHARED, ACME)
    assert await given.keyring.rewrap(batch=2) == 3  # pages past keys already in place
    assert await given.keyring.rewrap(batch=2) == 0
    assert [await master_key_of(store, f"acme:acc-{n}") for n in (1, 2, 3)] == ["acme:2026-01"] * 3
    assert await master_key_of(store, "acc-1") == "k1"
    assert await master_key_of(store, "globex:acc-1") == "k1"
    rotated = encrypting(store, SHARED, ACME_NEXT, ACME)
    assert await rotated.keyring.rewrap() == 3
    assert await rotated.keyring.rewrap() == 0
    retired = encrypting(store, SHARED, ACME_NEXT)  # the tenant's old key removed
    assert await payloads(retired, "acme:acc-2") == [(False, b"\x08\x05")]
    assert await payloads(retired, "globex:acc-1") == [(False, b"\x08\x05")]


async def test_a_destroyed_tenant_key_reads_as_forgotten_and_the_check_passes(store: StoreAdapter) -> None:
    sealed = encrypting(store, SHARED, ACME, GLOBEX)
    for aggregate_id in ("acme:acc-1", "globex:acc-1", "acc-1"):
        await sealed.roles.events.append(aggregate_id, [new_event(payload=b"\x08\x09")], 0)
    await sealed.roles.snapshots.save_snapshot(Snapshot("acme:acc-1", "Thing", 1, "test.v1.State", 1, b"\x08\x01"))
    shredded = encrypting(store, SHARED, ACME_DESTROYED, GLOBEX)
    await shredded.keyring.check()  # the start-up sample does not stop the server for the shred
    await check_master_keys(store, MasterKeys.parse(f"{SHARED},{ACME_DESTROYED}", source="t"))
    assert await payloads(shredded, "acme:acc-1") == [(True, b"")]
    assert await shredded.roles.snapshots.load_snapshot("acme:acc-1") is None
    assert await payloads(shredded, "globex:acc-1") == [(False, b"\x08\x09")]
    assert await payloads(shredded, "acc-1") == [(False, b"\x08\x09")]
    with pytest.raises(AggregateForgotten) as forgotten:
        await shredded.roles.events.append("acme:acc-1", [new_event()], 1)
    assert forgotten.value.reason == "AGGREGATE_FORGOTTEN"
    with pytest.raises(TenantShredded) as refused:  # a tenant whose every key is destroyed gets no new aggregate
        await shredded.roles.events.append("acme:acc-9", [new_event()], 0)
    assert (refused.value.reason, refused.value.metadata["tenant"]) == ("TENANT_SHREDDED", "acme")
    assert await store.load_data_key("acme:acc-9") is None
    assert await shredded.keyring.rewrap() == 0  # nothing opens it: left as it is


async def test_a_tenant_key_merely_missing_stays_master_key_missing(store: StoreAdapter) -> None:
    await encrypting(store, SHARED, ACME).roles.events.append("acme:acc-1", [new_event()], 0)
    missing = encrypting(store, SHARED)  # removed from the file, not marked destroyed: a mistake
    with pytest.raises(MasterKeysUnfit) as unfit:
        await missing.keyring.check()  # the sample: nothing it holds opens
    assert (unfit.value.reason, unfit.value.metadata) == (
        "MASTER_KEY_MISSING",
        {"master_key_ids": "acme:2026-01", "tenants": "acme"},
    )
    await encrypting(store, SHARED, ACME).roles.events.append("acc-1", [new_event()], 0)
    beside = encrypting(store, SHARED)  # a key that opens beside it: the server starts, the call says
    with pytest.raises(MasterKeysUnfit) as unfit:
        await beside.roles.events.read_aggregate("acme:acc-1")
    assert (unfit.value.reason, unfit.value.metadata) == (
        "MASTER_KEY_MISSING",
        {"master_key_id": "acme:2026-01", "tenants": "acme"},
    )


async def test_a_shredded_tenants_keys_still_under_the_shared_key_read_as_forgotten(store: StoreAdapter) -> None:
    """Its key given and destroyed before rewrap-keys moved them: the
    server reads them no more (a backup's copy still opens with the shared
    key, which docs/security.md says)."""
    await encrypting(store, SHARED).roles.events.append("acme:acc-1", [new_event()], 0)
    shredded = encrypting(store, SHARED, ACME_DESTROYED)
    assert await payloads(shredded, "acme:acc-1") == [(True, b"")]


async def test_destroying_a_tenant_key_on_a_running_keyring_drops_its_cached_keys(store: StoreAdapter) -> None:
    sealed = encrypting(store, SHARED, ACME)
    await sealed.roles.events.append("acme:acc-1", [new_event(payload=b"\x08\x02")], 0)
    assert await payloads(sealed, "acme:acc-1") == [(False, b"\x08\x02")]  # cached now
    await sealed.keyring.use_master_keys(MasterKeys.parse(f"{SHARED},{ACME_DESTROYED}", source="t"))
    assert await payloads(sealed, "acme:acc-1") == [(True, b"")]


async def test_the_check_samples_each_tenants_keys(store: StoreAdapter) -> None:
    """The first ids by themselves (16 of no tenant, 16 of tenant abc's)
    would not reach tenant zed's: a wrong zed key is found all the same."""
    abc, zed = f"abc:1:{new_master_key()}", f"zed:1:{new_master_key()}"
    keys = MasterKeys.parse(f"{SHARED},{abc},{zed}", source="t")
    for aggregate_id in [f"a-{n:02}" for n in range(17)] + [f"abc:{n:02}" for n in range(17)] + ["zed:1"]:
        await store.create_data_key(DataKey(aggregate_id, *keys.wrap(b"k" * 32, aggregate_id)))
    await check_master_keys(store, keys)
    edited = zed.rsplit(":", 1)[0] + f":{new_master_key()}"  # zed's key id, other bytes
    with pytest.raises(MasterKeysUnfit) as unfit:
        await check_master_keys(store, MasterKeys.parse(f"{SHARED},{abc},{edited}", source="t"))
    assert unfit.value.reason == "MASTER_KEY_MISMATCH"
    assert unfit.value.metadata == {"master_key_ids": "zed:1"}
