"""A ``tenant_keyed`` read model's documents under tenants' keys, over every
store (docs/security.md, "Per-tenant keys"): each tenant's documents are
sealed under a data key of (read model, tenant) that its own master key
wraps, so destroying that key shreds them too (DOCUMENT_FORGOTTEN); other
read models keep one key wrapped by the shared key; documents stored under
that one key before stay readable and move on their next write."""

from __future__ import annotations

import pytest

from service.errors import DocumentForgotten, DocumentInTwoForms, MasterKeysUnfit
from service.store.base import Store, StoreAdapter
from service.store.encrypted import encrypted
from service.store.encryption import (
    Keyring,
    MasterKeys,
    new_master_key,
    projection_key_id,
    refuse_if_sealed,
    tenant_projection_key_id,
)
from service.store.records import DocumentRange, DocumentWrite, StoredDocument
from service.store_contract.test_encrypted import Encrypted

pytestmark = pytest.mark.asyncio

SHARED = f"k1:{new_master_key()}"
ACME = f"acme:2026-01:{new_master_key()}"
GLOBEX = f"globex:2026-01:{new_master_key()}"
ACME_DESTROYED = "acme:2026-01:destroyed"
OWNERS = "tenants.owners"  # declared tenant_keyed
TOTALS = "bank.totals"  # not


def encrypting(store: StoreAdapter, *entries: str, tenant_keyed: frozenset[str] = frozenset({OWNERS})) -> Encrypted:
    keyring = Keyring(store, MasterKeys.parse(",".join(entries), source="test"))
    return Encrypted(encrypted(Store.of(store), keyring, tenant_keyed=tenant_keyed), keyring)


async def put(sealed: Encrypted, projection: str, *documents: tuple[str, bytes | None]) -> None:
    projections = sealed.roles.projections
    position = await projections.projection_position(projection)
    writes = [DocumentWrite(key, "t.Doc", data) for key, data in documents]
    await projections.commit_projection(
        projection, expected_position=position, new_position=position + 1, writes=writes
    )


async def master_key_of(store: StoreAdapter, key_id: str) -> str | None:
    key = await store.load_data_key(key_id)
    return None if key is None else key.master_key_id


async def test_each_tenants_documents_are_sealed_under_a_key_its_own_master_key_wraps(store: StoreAdapter) -> None:
    sealed = encrypting(store, SHARED, ACME, GLOBEX)
    documents = [("acme:acc-1", b"ann"), ("globex:acc-1", b"gus"), ("initech:acc-1", b"ida"), ("totals", b"3")]
    await put(sealed, OWNERS, *documents)
    await put(sealed, TOTALS, ("acme:acc-1", b"ann"))
    assert await master_key_of(store, tenant_projection_key_id(OWNERS, "acme")) == "acme:2026-01"
    assert await master_key_of(store, tenant_projection_key_id(OWNERS, "globex")) == "globex:2026-01"
    assert await master_key_of(store, tenant_projection_key_id(OWNERS, "initech")) == "k1"  # a tenant without keys
    assert await master_key_of(store, projection_key_id(OWNERS)) == "k1"  # a key of no tenant: the promise broken
    assert await master_key_of(store, projection_key_id(TOTALS)) == "k1"
    assert await master_key_of(store, tenant_projection_key_id(TOTALS, "acme")) is None  # not tenant_keyed
    found = await sealed.roles.projections.load_documents(OWNERS, [key for key, _ in documents] + ["acme:nope"])
    assert sorted((d.key, d.data) for d in found) == sorted(documents)
    assert await sealed.roles.projections.load_document(OWNERS, "acme:acc-1") == StoredDocument(
        "acme:acc-1", "t.Doc", b"ann"
    )
    stored = [await store.load_document(OWNERS, key) for key, _ in documents]
    assert stored == [None] * 4  # under keyed hashes, not their keys


async def test_a_destroyed_tenant_key_shreds_its_documents_and_no_one_elses(store: StoreAdapter) -> None:
    sealed = encrypting(store, SHARED, ACME, GLOBEX)
    await put(sealed, OWNERS, ("acme:acc-1", b"ann"), ("globex:acc-1", b"gus"))
    await put(sealed, TOTALS, ("acme:acc-1", b"ann"))
    shredded = encrypting(store, SHARED, ACME_DESTROYED, GLOBEX)
    await shredded.keyring.check()  # a shred, not a key missing
    projections = shredded.roles.projections
    for read in (
        projections.load_document(OWNERS, "acme:acc-1"),
        projections.load_document(OWNERS, "acme:nope"),  # alike: no existence oracle, none can be told
        projections.load_documents(OWNERS, ["globex:acc-1", "acme:acc-1"]),
    ):
        with pytest.raises(DocumentForgotten) as forgotten:
            await read
        assert (forgotten.value.reason, forgotten.value.metadata) == (
            "DOCUMENT_FORGOTTEN",
            {"projection": OWNERS, "tenant": "acme"},
        )
    with pytest.raises(DocumentForgotten):
        await put(shredded, OWNERS, ("acme:acc-2", b"amy"))
    assert await projections.load_document(OWNERS, "globex:acc-1") == StoredDocument("globex:acc-1", "t.Doc", b"gus")
    # A read model not declared tenant_keyed keeps one key, the shared one's: unchanged.
    assert await projections.load_document(TOTALS, "acme:acc-1") == StoredDocument("acme:acc-1", "t.Doc", b"ann")
    assert await shredded.keyring.rewrap() == 0  # nothing opens it: left as it is


async def test_a_shredded_tenant_without_a_key_of_the_read_model_reads_as_forgotten(store: StoreAdapter) -> None:
    """Its documents stored before under the read model's own key (which
    the shared key wraps) are refused by the server as its aggregates are."""
    await put(encrypting(store, SHARED, tenant_keyed=frozenset()), OWNERS, ("acme:acc-1", b"ann"))
    shredded = encrypting(store, SHARED, ACME_DESTROYED)
    with pytest.raises(DocumentForgotten):
        await shredded.roles.projections.load_document(OWNERS, "acme:acc-1")


async def test_documents_under_the_read_models_own_key_stay_readable_and_move_on_their_next_write(
    store: StoreAdapter,
) -> None:
    before = encrypting(store, SHARED, ACME, tenant_keyed=frozenset())  # an older server, or not declared yet
    await put(before, OWNERS, ("acme:acc-1", b"ann"), ("acme:acc-2", b"amy"), ("globex:acc-1", b"gus"))
    old_rows = {d.key for d in await store.list_documents(OWNERS, DocumentRange(limit=10))}
    assert len(old_rows) == 3 and all(key.startswith("k:") for key in old_rows)  # the read model's own key's
    after = encrypting(store, SHARED, ACME)
    found = await after.roles.projections.load_documents(OWNERS, ["acme:acc-1", "acme:acc-2", "globex:acc-1"])
    assert sorted(d.data for d in found) == [b"amy", b"ann", b"gus"]
    await put(after, OWNERS, ("acme:acc-1", b"ann v2"))
    rows = {d.key for d in await store.list_documents(OWNERS, DocumentRange(limit=10))}
    assert len(rows - old_rows) == 1 and len(old_rows - rows) == 1  # moved: the old row deleted in the commit
    assert all(key.startswith("t:") for key in rows - old_rows)  # the tenant's key's
    assert await after.roles.projections.load_document(OWNERS, "acme:acc-1") == StoredDocument(
        "acme:acc-1", "t.Doc", b"ann v2"
    )
    await put(after, OWNERS, ("acme:acc-2", None))  # a delete reaches the old row too
    assert await after.roles.projections.load_document(OWNERS, "acme:acc-2") is None
    assert await store.count_documents(OWNERS, "", limit=10) == 2
    # Moved documents are acme's to shred; one not moved yet is refused by the server all the same.
    shredded = encrypting(store, SHARED, ACME_DESTROYED)
    with pytest.raises(DocumentForgotten):
        await shredded.roles.projections.load_document(OWNERS, "acme:acc-1")


async def test_a_document_an_older_server_wrote_again_after_the_tenants_key_had_it_is_refused_not_served(
    store: StoreAdapter,
) -> None:
    """A rollback of one replica, or a roll-forward beside an old one: the
    old server reads the tenant's form as absent and writes the old form
    anew; neither copy is right, so a read refuses both (a rebuild mends)."""
    await put(encrypting(store, SHARED, ACME), OWNERS, ("acme:acc-1", b"ann"), ("acme:acc-2", b"amy"))
    older = encrypting(store, SHARED, ACME, tenant_keyed=frozenset())  # reads and writes the read model's key only
    assert await older.roles.projections.load_document(OWNERS, "acme:acc-1") is None  # what it builds on
    await put(older, OWNERS, ("acme:acc-1", b"ann, from nothing"), ("acme:acc-3", b"ada"))
    projections = encrypting(store, SHARED, ACME).roles.projections
    for read in (
        projections.load_document(OWNERS, "acme:acc-1"),
        projections.load_documents(OWNERS, ["acme:acc-2", "acme:acc-1"]),
    ):
        with pytest.raises(DocumentInTwoForms) as refused:
            await read
        assert (refused.value.reason, refused.value.metadata) == (
            "DOCUMENT_IN_TWO_FORMS",
            {"projection": OWNERS, "tenant": "acme"},
        )
    # A document in one form, either, reads as it is.
    found = await projections.load_documents(OWNERS, ["acme:acc-2", "acme:acc-3"])
    assert sorted(d.data for d in found) == [b"ada", b"amy"]
    await projections.reset_projection(OWNERS)  # a rebuild starts from no documents: none in two forms
    assert await projections.load_document(OWNERS, "acme:acc-1") is None


async def test_rewrap_moves_a_tenants_key_of_a_read_model_onto_the_tenants_master_key(store: StoreAdapter) -> None:
    await put(encrypting(store, SHARED), OWNERS, ("acme:acc-1", b"ann"))  # acme has no key yet: the shared one
    assert await master_key_of(store, tenant_projection_key_id(OWNERS, "acme")) == "k1"
    given = encrypting(store, SHARED, ACME)
    assert await given.keyring.rewrap() == 1
    assert await master_key_of(store, tenant_projection_key_id(OWNERS, "acme")) == "acme:2026-01"
    assert await given.roles.projections.load_document(OWNERS, "acme:acc-1") == StoredDocument(
        "acme:acc-1", "t.Doc", b"ann"
    )


async def test_a_key_of_the_read_model_under_a_tenants_destroyed_old_key_is_renewed_by_the_next_write(
    store: StoreAdapter,
) -> None:
    """The tenant's old key destroyed before rewrap-keys moved the read
    model's key off it, while the tenant keeps a newer key: its documents
    read as forgotten until one is written, which does not fail (nor would
    a rebuild): a new key of the read model takes the old one's place."""
    await put(encrypting(store, SHARED, ACME), OWNERS, ("acme:acc-1", b"ann"))
    acme_next = f"acme:2026-02:{new_master_key()}"
    destroyed_early = encrypting(store, SHARED, acme_next, ACME_DESTROYED)
    projections = destroyed_early.roles.projections
    with pytest.raises(DocumentForgotten):
        await projections.load_document(OWNERS, "acme:acc-1")
    await put(destroyed_early, OWNERS, ("acme:acc-2", b"amy"))
    assert await master_key_of(store, tenant_projection_key_id(OWNERS, "acme")) == "acme:2026-02"
    assert await projections.load_document(OWNERS, "acme:acc-2") == StoredDocument("acme:acc-2", "t.Doc", b"amy")
    assert await projections.load_document(OWNERS, "acme:acc-1") is None  # sealed under the destroyed key: gone


async def test_a_server_without_master_keys_refuses_a_store_whose_documents_only_tenants_keys_seal(
    store: StoreAdapter,
) -> None:
    await put(encrypting(store, SHARED, ACME), OWNERS, ("acme:acc-1", b"ann"))
    assert await store.load_data_key(projection_key_id(OWNERS)) is None  # the read model's own key never made
    with pytest.raises(MasterKeysUnfit) as unfit:
        await refuse_if_sealed(store, store, store)
    assert unfit.value.reason == "ENCRYPTED_STORE_WITHOUT_KEYS"


async def test_reads_make_no_key(store: StoreAdapter) -> None:
    """A read of a key no document was written under (any caller's key of
    any tenant) leaves nothing behind: no key of a tenant, nor the read
    model's own, whose existence would make each write delete old rows."""
    sealed = encrypting(store, SHARED, ACME)
    assert await sealed.roles.projections.load_documents(OWNERS, ["acme:x", "initech:y", "totals"]) == []
    assert await sealed.roles.projections.load_document(OWNERS, "totals") is None
    for key_id in (projection_key_id(OWNERS), *(tenant_projection_key_id(OWNERS, t) for t in ("acme", "initech"))):
        assert await store.load_data_key(key_id) is None, key_id
