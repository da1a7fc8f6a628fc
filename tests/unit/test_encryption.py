"""Sealing payloads, master keys and their rotation, without a store."""

from __future__ import annotations

import base64

import grpc
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.api.status import rich_status, status_code
from service.errors import ConfigurationError, MasterKeysUnfit, PayloadNotDecryptable
from service.store.encryption import (
    Keyring,
    MasterKeys,
    check_master_keys,
    event_context,
    is_sealed,
    new_master_key,
    open_sealed,
    seal,
    sealed_store_without_keys,
)
from service.store.memory import MemoryStore
from service.store.records import DataKey

CIPHER = AESGCM(AESGCM.generate_key(bit_length=256))


def test_a_sealed_payload_opens_with_its_key_and_context() -> None:
    sealed = seal(CIPHER, b"\x0a\x03ann", event_context("acc-1", "e-1"))
    assert is_sealed(sealed)
    assert b"ann" not in sealed
    assert open_sealed(CIPHER, sealed, event_context("acc-1", "e-1")) == b"\x0a\x03ann"


def test_a_payload_moved_to_another_event_does_not_open() -> None:
    sealed = seal(CIPHER, b"secret", event_context("acc-1", "e-1"))
    with pytest.raises(PayloadNotDecryptable):
        open_sealed(CIPHER, sealed, event_context("acc-2", "e-1"))


def test_a_tampered_payload_does_not_open() -> None:
    sealed = bytearray(seal(CIPHER, b"secret", b"ctx"))
    sealed[-1] ^= 1
    with pytest.raises(PayloadNotDecryptable):
        open_sealed(CIPHER, bytes(sealed), b"ctx")


def test_serialized_protobuf_is_never_mistaken_for_a_sealed_payload() -> None:
    # Field number 0 does not exist, so no serialized message starts with 0x00.
    assert not is_sealed(b"\x08\x01")
    assert not is_sealed(b"")


def test_the_first_master_key_is_active_and_every_key_unwraps() -> None:
    old, new = new_master_key(), new_master_key()
    before = MasterKeys.parse(f"old:{old}", source="test")
    master_key_id, wrapped = before.wrap(b"k" * 32)
    after = MasterKeys.parse(f"new:{new}\nold:{old}", source="test")
    assert after.active == "new"
    assert after.unwrap(DataKey("a-1", master_key_id, wrapped)) == b"k" * 32
    assert after.wrap(b"k" * 32)[0] == "new"


def test_a_data_key_wrapped_by_a_removed_master_key_is_a_clear_error() -> None:
    master_key_id, wrapped = MasterKeys.parse(f"old:{new_master_key()}", source="t").wrap(b"k" * 32)
    with pytest.raises(ConfigurationError) as missing:
        MasterKeys.parse(f"new:{new_master_key()}", source="t").unwrap(DataKey("a-1", master_key_id, wrapped))
    assert missing.value.reason == "MASTER_KEY_MISSING"


def test_a_master_key_with_the_right_id_but_other_bytes_is_a_clear_error() -> None:
    master_key_id, wrapped = MasterKeys.parse(f"k1:{new_master_key()}", source="t").wrap(b"k" * 32)
    with pytest.raises(ConfigurationError) as mismatch:
        MasterKeys.parse(f"k1:{new_master_key()}", source="t").unwrap(DataKey("a-1", master_key_id, wrapped))
    assert mismatch.value.reason == "MASTER_KEY_MISMATCH"


@pytest.mark.parametrize(
    "text",
    # A key of 16 bytes (too short), fixed: parameters must be the same in every pytest worker.
    ["", "nocolon", f"a:{base64.b64encode(bytes(range(16))).decode()}", "a:not base64!", "a:{k},a:{k}"],
)
def test_malformed_master_keys_are_refused(text: str) -> None:
    with pytest.raises(ConfigurationError):
        MasterKeys.parse(text.replace("{k}", new_master_key()), source="test")


# -- master keys that do not fit the store -------------------------------------------


def test_master_keys_that_do_not_fit_are_failed_precondition_for_callers() -> None:
    """An operator's setting to fix (the key file), not a bug (INTERNAL) nor
    a passing state (UNAVAILABLE, which clients retry): no RetryInfo."""
    master_key_id, wrapped = MasterKeys.parse(f"k1:{new_master_key()}", source="t").wrap(b"k" * 32)
    for keys in (f"k2:{new_master_key()}", f"k1:{new_master_key()}"):
        with pytest.raises(MasterKeysUnfit) as unfit:
            MasterKeys.parse(keys, source="t").unwrap(DataKey("a-1", master_key_id, wrapped))
        assert status_code(unfit.value) == grpc.StatusCode.FAILED_PRECONDITION
        assert rich_status(unfit.value).code == grpc.StatusCode.FAILED_PRECONDITION
        assert "RetryInfo" not in str(rich_status(unfit.value).trailing_metadata)
    assert status_code(sealed_store_without_keys()) == grpc.StatusCode.FAILED_PRECONDITION


async def _store_keyed_by(keys: str, *aggregate_ids: str) -> MemoryStore:
    store = MemoryStore()
    keyring = Keyring(store, MasterKeys.parse(keys, source="t"))
    for aggregate_id in aggregate_ids:
        await keyring.for_writing(aggregate_id)
    return store


async def test_master_keys_are_checked_against_a_sample_of_the_stores_data_keys() -> None:
    right = f"k1:{new_master_key()}"
    store = await _store_keyed_by(right, *(f"a-{n}" for n in range(40)))
    await check_master_keys(store, MasterKeys.parse(right, source="t"))
    await check_master_keys(MemoryStore(), MasterKeys.parse(f"k9:{new_master_key()}", source="t"))  # no keys yet
    with pytest.raises(MasterKeysUnfit) as wrong_bytes:
        await check_master_keys(store, MasterKeys.parse(f"k1:{new_master_key()}", source="t"))
    assert (wrong_bytes.value.reason, wrong_bytes.value.metadata) == ("MASTER_KEY_MISMATCH", {"master_key_ids": "k1"})
    with pytest.raises(MasterKeysUnfit) as wrong_file:
        await check_master_keys(store, MasterKeys.parse(f"k2:{new_master_key()}", source="t"))
    assert (wrong_file.value.reason, wrong_file.value.metadata) == ("MASTER_KEY_MISSING", {"master_key_ids": "k1"})
    # The right key, and a wrong one under another id that wrapped nothing checked: it cannot be judged.
    await check_master_keys(store, MasterKeys.parse(f"{right},k0:{new_master_key()}", source="t"))
    # A rotation's old key given with wrong bytes: the new one opens its keys, the old one none of its own.
    rotated = f"k2:{new_master_key()}"
    await Keyring(store, MasterKeys.parse(f"{rotated},{right}", source="t")).for_writing("b-1")
    with pytest.raises(MasterKeysUnfit) as old_wrong:
        await check_master_keys(store, MasterKeys.parse(f"{rotated},k1:{new_master_key()}", source="t"))
    assert old_wrong.value.reason == "MASTER_KEY_MISMATCH"


async def test_a_keyring_with_a_wrong_key_makes_no_data_key_and_a_fitting_one_is_taken_again() -> None:
    """A keyring checks its master keys before its first use (a server whose
    store did not answer at start-up): a wrong active key would wrap new data
    keys that nothing opens. Read again from a file that fits, it goes on;
    keys that do not fit are refused and the ones in use kept."""
    right = f"k1:{new_master_key()}"
    store = await _store_keyed_by(right, "a-1")
    keyring = Keyring(store, MasterKeys.parse(f"k1:{new_master_key()}", source="t"))
    for _ in range(2):
        with pytest.raises(MasterKeysUnfit) as unfit:
            await keyring.for_writing("a-2")
        assert unfit.value.reason == "MASTER_KEY_MISMATCH"
    assert await store.load_data_key("a-2") is None
    await keyring.use_master_keys(MasterKeys.parse(right, source="t"))
    await keyring.for_writing("a-2")
    assert await keyring.for_reading("a-1") is not None
    with pytest.raises(MasterKeysUnfit):
        await keyring.use_master_keys(MasterKeys.parse(f"k1:{new_master_key()}", source="t"))
    await keyring.for_writing("a-3")  # the keys in use were kept
    await check_master_keys(store, MasterKeys.parse(right, source="t"))
