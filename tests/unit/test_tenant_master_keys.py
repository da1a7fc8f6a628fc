"""Tenants' master keys in the key file (service/store/master_keys.py):
what an entry means, what is refused, which key wraps whose data key, and
that a server which does not know them refuses the file instead of misreading it."""

from __future__ import annotations

import base64
import binascii

import pytest

from service.cli import main
from service.errors import AggregateForgotten, ConfigurationError, MasterKeysUnfit
from service.store.encryption import claims_key_id, new_master_key, projection_key_id, tenant_projection_key_id
from service.store.key_names import humanized, key_owner
from service.store.master_keys import MasterKeys, owner_tenant
from service.store.records import DataKey


def fixed_key(byte: int) -> str:
    """A master key's base64, the same in every process: these entries name
    parametrized tests, whose ids pytest-xdist's workers must agree on."""
    return base64.b64encode(bytes([byte]) * 32).decode()


SHARED = f"k2:{fixed_key(2)}"
ACME, ACME_OLD = f"acme:2026-02:{fixed_key(3)}", f"acme:2026-01:{fixed_key(4)}"


def parsed(*entries: str) -> MasterKeys:
    return MasterKeys.parse("\n".join(entries), source="test")


def test_shared_and_tenant_keys_each_have_their_first_as_active() -> None:
    keys = parsed(f"k0:{new_master_key()}", ACME, SHARED, ACME_OLD, "globex:1:destroyed")
    assert keys.active == "k0"
    assert dict(keys.tenant_active) == {"acme": "acme:2026-02"}
    assert set(keys.keys) == {"k0", "acme:2026-02", "k2", "acme:2026-01"}
    assert keys.destroyed == {"globex:1"}
    assert keys.shredded == {"globex"}


def test_a_tenant_with_a_live_key_beside_a_destroyed_one_is_not_shredded() -> None:
    keys = parsed(SHARED, "acme:2025-12:destroyed", ACME)
    assert keys.tenant_active == {"acme": "acme:2026-02"}
    assert keys.shredded == frozenset()
    assert keys.shreds(DataKey("acme:acc-1", "acme:2025-12", b"w" * 40))
    assert not keys.shreds(DataKey("acme:acc-1", "acme:2026-02", b"w" * 40))


def test_the_key_that_wraps_a_data_key_is_chosen_by_the_owners_tenant() -> None:
    keys = parsed(SHARED, ACME, "globex:1:destroyed")
    assert keys.key_id_for("acme:acc-1") == "acme:2026-02"
    assert keys.key_id_for("acme:") == "acme:2026-02"
    for shared in ("acc-1", "acme2:acc-1", "initech:acc-1", claims_key_id("acme:x"), projection_key_id("acme:p")):
        assert keys.key_id_for(shared) == "k2", shared
    with pytest.raises(AggregateForgotten):
        keys.key_id_for("globex:acc-1")
    master_key_id, wrapped = keys.wrap(b"d" * 32, "acme:acc-1")
    assert keys.unwrap(DataKey("acme:acc-1", master_key_id, wrapped)) == b"d" * 32
    assert keys.shreds(DataKey("globex:acc-1", "k2", wrapped))  # a shredded tenant's, whatever wraps it


def test_a_tenant_keyed_read_models_key_of_a_tenant_is_the_tenants() -> None:
    keys = parsed(SHARED, ACME, "globex:1:destroyed")
    assert keys.key_id_for(tenant_projection_key_id("shop.orders", "acme")) == "acme:2026-02"
    assert keys.key_id_for(tenant_projection_key_id("shop.orders", "initech")) == "k2"  # a tenant without keys
    assert keys.shreds(DataKey(tenant_projection_key_id("shop.orders", "globex"), "k2", b""))
    assert not keys.shreds(DataKey(projection_key_id("shop.orders"), "k2", b""))
    assert [owner_tenant(o) for o in ("acme:acc-1", "acc-1", claims_key_id("acme:x"), projection_key_id("a"))] == [
        "acme",
        "",
        "",
        "",
    ]


def test_a_tenants_key_of_a_read_model_is_named_for_people() -> None:
    key_id = tenant_projection_key_id("shop.orders", "acme")
    whose = "the documents of tenant 'acme' of the read model 'shop.orders'"
    assert key_owner(key_id) == whose
    assert humanized(f"the data key of {key_id!r} is wrapped") == f"the data key of {whose} is wrapped"
    assert humanized(f"the data key of {key_id}, wrapped") == f"the data key of {whose}, wrapped"
    assert key_owner(projection_key_id("shop.orders")) == "the read model 'shop.orders'"


def test_a_tenants_key_missing_says_whose_it_is_and_both_ways_out() -> None:
    """Before: "... wrapped by master key 'acme:2026-01', which is not
    configured", as for a shared key: nothing said that it is acme's, nor
    that a shred is written down by marking the key destroyed."""
    master_key_id, wrapped = parsed(SHARED, ACME_OLD).wrap(b"d" * 32, "acme:acc-1")
    with pytest.raises(MasterKeysUnfit) as unfit:
        parsed(SHARED).unwrap(DataKey("acme:acc-1", master_key_id, wrapped))
    assert (unfit.value.reason, unfit.value.metadata) == (
        "MASTER_KEY_MISSING",
        {"master_key_id": "acme:2026-01", "tenants": "acme"},
    )
    said = unfit.value.message
    assert "'acme:2026-01' is a key of tenant 'acme'" in said, said
    assert "put it back in the master-key file (acme:2026-01:BASE64" in said, said
    assert "if the tenant was shredded on purpose, mark it destroyed there (acme:2026-01:destroyed)" in said, said


def test_a_shared_key_missing_says_nothing_of_tenants() -> None:
    master_key_id, wrapped = parsed(f"k1:{fixed_key(1)}").wrap(b"d" * 32, "acme:acc-1")
    with pytest.raises(MasterKeysUnfit) as unfit:
        parsed(SHARED).unwrap(DataKey("acme:acc-1", master_key_id, wrapped))
    assert unfit.value.metadata == {"master_key_id": "k1"}
    assert "tenant" not in unfit.value.message and "destroyed" not in unfit.value.message


@pytest.mark.parametrize(
    "entries",
    [
        ["acme:2026-01:" + base64.b64encode(b"k" * 32).decode()],  # no shared key
        ["acme:2026-01:destroyed"],  # nothing but a shred
        [SHARED, "k9:destroyed"],  # a shared key is not shredded by a mark: removed, or rotated away
        [SHARED, ACME, ACME],  # the same key twice
        [SHARED, ACME, "acme:2026-02:destroyed"],  # live and destroyed at once
        [SHARED, f"acme eu:1:{new_master_key()}"],  # not a tenant id
        [SHARED, f":1:{new_master_key()}"],
        [SHARED, f"acme::{new_master_key()}"],
        [SHARED, f"a:b:c:{new_master_key()}"],
        [SHARED, "acme:1:destroyd"],
    ],
)
def test_malformed_tenant_entries_are_refused(entries: list[str]) -> None:
    with pytest.raises(ConfigurationError) as refused:
        parsed(*entries)
    assert refused.value.reason == "BAD_MASTER_KEYS"


def older_servers_rule(entry: str) -> None:
    """How a server before tenants' keys read an entry: 'id' up to the
    first ':', then 32 bytes of base64, else BAD_MASTER_KEYS."""
    key_id, separator, encoded = entry.partition(":")
    if not separator or not key_id or len(base64.b64decode(encoded, validate=True)) != 32:
        raise ValueError(entry)


@pytest.mark.parametrize("entry", [ACME, "acme:2026-01:destroyed"])
def test_an_older_server_refuses_a_tenants_entry_rather_than_misread_it(entry: str) -> None:
    with pytest.raises((binascii.Error, ValueError)):
        older_servers_rule(entry)


def test_a_tenants_entry_spelt_with_a_slash_would_be_misread_as_a_shared_key() -> None:
    older_servers_rule(ACME.replace(":", "/", 1))  # accepted: why the syntax is not 'acme/2026-02:…'


def test_masterkey_prints_a_tenants_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["masterkey", "--tenant", "acme", "2026-03"]) == 0
    entry = capsys.readouterr().out.strip()
    assert entry.startswith("acme:2026-03:")
    assert parsed(SHARED, entry).tenant_active == {"acme": "acme:2026-03"}
    assert main(["masterkey", "2026-03"]) == 0
    assert parsed(capsys.readouterr().out.strip()).active == "2026-03"
    for wrong in (["--tenant", "a:b", "k"], ["--tenant", "acme", "k:1"], ["k,1"]):
        assert main(["masterkey", *wrong]) == 2, wrong
        assert "BAD_MASTER_KEYS" in capsys.readouterr().err
