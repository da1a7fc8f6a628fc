"""Sealing payloads, master keys and their rotation, without a store."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.errors import ConfigurationError, PayloadNotDecryptable
from service.store.encryption import (
    MasterKeys,
    event_context,
    is_sealed,
    new_master_key,
    open_sealed,
    seal,
)
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
