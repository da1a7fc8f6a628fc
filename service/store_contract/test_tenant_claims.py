"""Claims scopes unique per tenant over every store (docs/plugins.md,
"Unique per tenant"; docs/security.md, "Per-tenant keys"). The executor
stores a tenant's claims under ``claim_scopes.tenant_scope(scope, tenant)``;
here: the store's unique key then decides per tenant, with encryption at
rest each tenant's values are hashed under a key of (scope, tenant) that
its own master key wraps, so destroying that key leaves its claims
untestable (the shared key opens no key that hashed them) and answers for
them as for its aggregates (TENANT_SHREDDED), and other tenants' claims
work on."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.claim_scopes import refuse_scopes_switched, tenant_scope, undeclared_tenant_scopes
from service.errors import AggregateForgotten, ClaimScopeSwitched, NotUnique, TenantShredded
from service.store.base import Store, StoreAdapter
from service.store.encryption import Keyring, MasterKeys, claims_key_id, hidden_claim_value, new_master_key
from service.store.master_keys import TENANT_OWNED_MARK
from service.store.records import ClaimChange, HeldClaim
from service.store_contract.records import new_event
from service.store_contract.test_encrypted import Encrypted, sealed_over

pytestmark = pytest.mark.asyncio

SHARED = f"k1:{new_master_key()}"
ACME = f"acme:2026-01:{new_master_key()}"
GLOBEX = f"globex:2026-01:{new_master_key()}"
ACME_DESTROYED = "acme:2026-01:destroyed"
EMAIL = "members.email"  # per tenant
ANN = "ann@x.example"


def encrypting(store: StoreAdapter, *entries: str) -> Encrypted:
    return sealed_over(store, Keyring(store, MasterKeys.parse(",".join(entries), source="test")))


def claim(tenant: str, value: str = ANN) -> ClaimChange:
    return ClaimChange(tenant_scope(EMAIL, tenant), value)


async def stored_claims(store: StoreAdapter) -> list[HeldClaim]:
    return await Store.of(store).transfer.claims_page(("", ""), 100)


async def test_the_mark_is_the_one_master_keys_read_the_tenant_after() -> None:
    assert tenant_scope(EMAIL, "acme") == EMAIL + TENANT_OWNED_MARK + "acme"


@pytest.mark.parametrize("at_rest", ["clear", "hidden"])
async def test_two_tenants_hold_one_value_and_one_tenant_holds_it_once(store: StoreAdapter, at_rest: str) -> None:
    roles = Store.of(store) if at_rest == "clear" else encrypting(store, SHARED, ACME, GLOBEX).roles
    await roles.events.append("acme:m-1", [new_event()], 0, claims=[claim("acme")])
    await roles.events.append("globex:m-1", [new_event()], 0, claims=[claim("globex")])
    with pytest.raises(NotUnique) as taken:
        await roles.events.append("acme:m-2", [new_event()], 0, claims=[claim("acme")])
    assert taken.value.metadata == {"scope": EMAIL, "tenant": "acme"}  # the scope as declared, not as stored
    assert "'members.email' of tenant 'acme'" in taken.value.message
    assert await roles.events.read_aggregate("acme:m-2") == []
    assert await roles.claims.claim_owner(tenant_scope(EMAIL, "acme"), ANN) == "acme:m-1"
    assert await roles.claims.claim_owner(tenant_scope(EMAIL, "globex"), ANN) == "globex:m-1"
    assert await roles.claims.claim_owner(tenant_scope(EMAIL, "initech"), ANN) is None
    assert await roles.claims.claim_owner(EMAIL, ANN) is None  # the global scope of that name holds nothing
    await roles.events.append("acme:m-1", [new_event()], 1, claims=[ClaimChange(claim("acme").scope, ANN, True)])
    await roles.events.append("acme:m-2", [new_event()], 0, claims=[claim("acme")])  # released: free in acme
    assert await roles.claims.claim_owner(tenant_scope(EMAIL, "acme"), ANN) == "acme:m-2"


async def test_a_tenants_claims_are_hashed_under_a_key_its_master_key_wraps(store: StoreAdapter) -> None:
    sealed = encrypting(store, SHARED, ACME, GLOBEX)
    await sealed.roles.events.append("acme:m-1", [new_event()], 0, claims=[claim("acme")])
    await sealed.roles.events.append("globex:m-1", [new_event()], 0, claims=[claim("globex")])
    await sealed.roles.events.append("u-1", [new_event()], 0, claims=[ClaimChange("users.email", ANN)])
    wrapped_by = {
        key_id: (await store.load_data_key(key_id)).master_key_id  # type: ignore[union-attr]
        for key_id in (claims_key_id(tenant_scope(EMAIL, "acme")), claims_key_id(tenant_scope(EMAIL, "globex")))
    }
    assert wrapped_by == {
        claims_key_id(tenant_scope(EMAIL, "acme")): "acme:2026-01",
        claims_key_id(tenant_scope(EMAIL, "globex")): "globex:2026-01",
    }
    assert (await store.load_data_key(claims_key_id("users.email"))).master_key_id == "k1"  # type: ignore[union-attr]
    assert await store.load_data_key(claims_key_id(EMAIL)) is None  # no key of the scope alone
    rows = await stored_claims(store)
    assert ANN not in {row.value for row in rows}
    assert {row.scope for row in rows} == {tenant_scope(EMAIL, "acme"), tenant_scope(EMAIL, "globex"), "users.email"}


async def test_a_shredded_tenants_claims_are_untestable_and_answer_as_forgotten(store: StoreAdapter) -> None:
    sealed = encrypting(store, SHARED, ACME, GLOBEX)
    await sealed.roles.events.append("acme:m-1", [new_event()], 0, claims=[claim("acme")])
    await sealed.roles.events.append("globex:m-1", [new_event()], 0, claims=[claim("globex")])
    await sealed.roles.events.append("u-1", [new_event()], 0, claims=[ClaimChange("users.email", ANN)])  # global
    acme_row = next(row for row in await stored_claims(store) if row.scope == tenant_scope(EMAIL, "acme"))

    # What the shared key opens (every data key it wraps) tests no guess of acme's value.
    shared_only = MasterKeys.parse(SHARED, source="attacker")
    opened = [
        AESGCM(shared_only.unwrap(key))
        for key in await store.data_keys_to_rewrap("", 100)
        if key.master_key_id == shared_only.active
    ]
    assert len(opened) == 2  # u-1's key and the global scope's: what the shared key wraps
    guesses = {hidden_claim_value(c, s, ANN) for c in opened for s in (EMAIL, acme_row.scope, "users.email")}
    assert acme_row.value not in guesses
    # The same guess does find the global scope's row: the attack is real, the tenant's key is what stops it.
    assert next(row for row in await stored_claims(store) if row.scope == "users.email").value in guesses
    # acme's own key, while it lives, does: the hash is of the value under the tenant's scope key.
    acme_key = await store.load_data_key(claims_key_id(acme_row.scope))
    assert acme_key is not None
    acme_cipher = AESGCM(MasterKeys.parse(f"{SHARED},{ACME}", source="test").unwrap(acme_key))
    assert hidden_claim_value(acme_cipher, acme_row.scope, ANN) == acme_row.value

    shredded = encrypting(store, SHARED, ACME_DESTROYED, GLOBEX)
    with pytest.raises(TenantShredded) as forgotten:
        await shredded.roles.claims.claim_owner(acme_row.scope, ANN)
    assert (forgotten.value.reason, forgotten.value.metadata) == ("TENANT_SHREDDED", {"scope": EMAIL, "tenant": "acme"})
    with pytest.raises(AggregateForgotten):
        await shredded.roles.events.append("acme:m-2", [new_event()], 0, claims=[claim("acme")])
    # globex's claims work on.
    assert await shredded.roles.claims.claim_owner(tenant_scope(EMAIL, "globex"), ANN) == "globex:m-1"
    with pytest.raises(NotUnique):
        await shredded.roles.events.append("globex:m-2", [new_event()], 0, claims=[claim("globex")])
    await shredded.roles.events.append("globex:m-2", [new_event()], 0, claims=[claim("globex", "bob@x.example")])
    assert await shredded.roles.claims.claim_owner(tenant_scope(EMAIL, "globex"), "bob@x.example") == "globex:m-2"


async def test_a_scope_declared_per_tenant_over_global_claims_is_refused(store: StoreAdapter) -> None:
    transfer = Store.of(store).transfer
    await store.append("acme:m-1", [new_event()], 0, claims=[claim("acme")])
    await store.append("u-1", [new_event()], 0, claims=[ClaimChange(EMAIL + ".old", ANN)])
    await refuse_scopes_switched(transfer, frozenset({EMAIL}))  # tenants' claims, and another scope's: fine
    await store.append("acme:m-2", [new_event()], 0, claims=[ClaimChange(EMAIL, "old@x.example")])
    with pytest.raises(ClaimScopeSwitched) as switched:
        await refuse_scopes_switched(transfer, frozenset({EMAIL}))
    assert (switched.value.reason, switched.value.metadata) == (
        "CLAIM_SCOPE_SWITCHED",
        {"scope": EMAIL, "declared": "per_tenant"},
    )


async def test_a_scope_declared_global_over_its_tenants_claims_is_refused(store: StoreAdapter) -> None:
    """Neighbours in any order are not the scope's tenants' claims: its own
    global ones, a longer scope's, another per-tenant scope it prefixes."""
    transfer = Store.of(store).transfer
    neighbours = [EMAIL, EMAIL + "acme", EMAIL + "\x1facme", EMAIL + ".old\x1eacme", "members\x1eacme"]
    for n, scope in enumerate(neighbours):
        await store.append(f"acme:n-{n}", [new_event()], 0, claims=[ClaimChange(scope, ANN)])
    await refuse_scopes_switched(transfer, frozenset(), frozenset({EMAIL}))
    await store.append("acme:m-1", [new_event()], 0, claims=[claim("acme")])
    with pytest.raises(ClaimScopeSwitched) as switched:
        await refuse_scopes_switched(transfer, frozenset(), frozenset({EMAIL}))
    assert (switched.value.reason, switched.value.metadata) == (
        "CLAIM_SCOPE_SWITCHED",
        {"scope": EMAIL, "declared": "global"},
    )
    assert "declared global, but holds its tenants' claims" in switched.value.message


async def test_the_scopes_holding_tenants_claims_are_listed_once_each_and_no_neighbours(store: StoreAdapter) -> None:
    transfer = Store.of(store).transfer
    neighbours = [EMAIL, EMAIL + "acme", EMAIL + "\x1facme", "a.global", "z.global"]
    for n, scope in enumerate(neighbours):
        await store.append(f"acme:n-{n}", [new_event()], 0, claims=[ClaimChange(scope, ANN)])
    assert await undeclared_tenant_scopes(transfer, frozenset()) == []
    # Several tenants of one scope, one of another, a scope EMAIL prefixes.
    taken = [claim("acme"), claim("globex"), claim("initech", "bob@x.example")]
    taken += [ClaimChange(tenant_scope(EMAIL + ".old", "acme"), ANN), ClaimChange(tenant_scope("m", "acme"), ANN)]
    for n, change in enumerate(taken):
        await store.append(f"acme:m-{n}", [new_event()], 0, claims=[change])
    assert await undeclared_tenant_scopes(transfer, frozenset()) == ["m", EMAIL, EMAIL + ".old"]
    assert await undeclared_tenant_scopes(transfer, frozenset({EMAIL, "m", "a.global"})) == [EMAIL + ".old"]


async def test_rewrap_moves_a_tenants_key_of_a_scope_onto_the_tenants_master_key(store: StoreAdapter) -> None:
    before = encrypting(store, SHARED)  # acme has no key yet: the shared one wraps its key of the scope
    await before.roles.events.append("acme:m-1", [new_event()], 0, claims=[claim("acme")])
    key_id = claims_key_id(tenant_scope(EMAIL, "acme"))
    assert (await store.load_data_key(key_id)).master_key_id == "k1"  # type: ignore[union-attr]
    given = encrypting(store, SHARED, ACME)
    assert await given.keyring.rewrap() == 2  # the aggregate's key and its tenant's key of the scope
    assert (await store.load_data_key(key_id)).master_key_id == "acme:2026-01"  # type: ignore[union-attr]
    assert await given.roles.claims.claim_owner(tenant_scope(EMAIL, "acme"), ANN) == "acme:m-1"
    with pytest.raises(TenantShredded):
        await encrypting(store, SHARED, ACME_DESTROYED).roles.claims.claim_owner(tenant_scope(EMAIL, "acme"), ANN)


async def test_a_shredded_tenants_claims_taken_in_the_clear_are_hidden_under_nothing(store: StoreAdapter) -> None:
    """Taken before encryption was on, by a tenant shredded since: no key
    hashes them, and left in the clear they would stop every claim from
    being hidden; stored as a value nothing hashes to, other tenants' claims
    work on."""
    await store.append("acme:m-1", [new_event()], 0, claims=[claim("acme")])
    await store.append("globex:m-1", [new_event()], 0, claims=[claim("globex")])
    shredded = encrypting(store, SHARED, ACME_DESTROYED, GLOBEX)
    assert await shredded.roles.claims.claim_owner(tenant_scope(EMAIL, "globex"), ANN) == "globex:m-1"
    rows = {row.scope: row for row in await stored_claims(store)}
    assert ANN not in {row.value for row in rows.values()}
    assert rows[tenant_scope(EMAIL, "acme")].aggregate_id == "acme:m-1"  # still held, by its holder
    with pytest.raises(NotUnique):
        await shredded.roles.events.append("globex:m-2", [new_event()], 0, claims=[claim("globex")])


async def test_a_tenants_key_of_a_scope_under_its_destroyed_old_key_is_made_again(store: StoreAdapter) -> None:
    """acme rotated to a new key and destroyed the old one before
    rewrap-keys moved its key of the scope: its next claim there makes a
    new key under the new master key, as a read model's documents do; what
    the old key hashed is checked no more (its aggregates went with it)."""
    await encrypting(store, SHARED, ACME).roles.events.append("acme:m-1", [new_event()], 0, claims=[claim("acme")])
    acme_next = f"acme:2026-02:{new_master_key()}"
    rotated = encrypting(store, SHARED, acme_next, ACME_DESTROYED)
    await rotated.roles.events.append("acme:m-2", [new_event()], 0, claims=[claim("acme", "bob@x.example")])
    key = await store.load_data_key(claims_key_id(tenant_scope(EMAIL, "acme")))
    assert key is not None and key.master_key_id == "acme:2026-02"
    assert await rotated.roles.claims.claim_owner(tenant_scope(EMAIL, "acme"), "bob@x.example") == "acme:m-2"
    with pytest.raises(NotUnique):
        await rotated.roles.events.append("acme:m-3", [new_event()], 0, claims=[claim("acme", "bob@x.example")])
