"""What an import writes of an aggregate the target has forgotten (its data
key a tombstone): nothing that forgetting removed, nothing readable.

Forgetting an aggregate destroys its data key and deletes its snapshots,
its claims, the documents derived from it and the events projections
parked of it; its events and command records stay, sealed under the key
that is gone (their envelopes are the audit trail). An import taken before
the forget, or from a store that never forgot it, must not bring any of it
back:

- its snapshots and claims are left out (and counted), as is its live data
  key (the tombstone is never replaced: the stores' rule);
- its events and command records that come sealed are written as they
  come: their key is not in the target, nobody can open them;
- those that come in the clear (an export taken before encryption was on)
  are written *shredded*: the payload, the fingerprint and the refusal's
  texts replaced by an empty value sealed under a key made for it and
  thrown away at once. They read like the aggregate's other events
  (``redacted``), its versions stay whole, and nothing of the person's data
  is written in the clear.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.store.encrypted import is_sealed_record, sealed_record
from service.store.encryption import KEY_BYTES, event_context, is_sealed, seal
from service.store.records import CommandRecord, DataKey, HeldClaim, RecordedEvent, Rejection, Snapshot, is_tombstone

Stored = TypeVar("Stored", RecordedEvent, Snapshot, HeldClaim, CommandRecord, DataKey)

# A command record's fingerprint is a SHA-256 (32 bytes): a shredded one
# keeps the size, so it is told sealed like any other (is_sealed_fingerprint).
_FINGERPRINT_BYTES = 32


def left_out(record: RecordedEvent | Snapshot | HeldClaim | CommandRecord | DataKey) -> bool:
    """Whether ``record``, of a forgotten aggregate, is not written at all:
    a snapshot, a claim, or a live data key."""
    if isinstance(record, DataKey):
        return not record.forgotten
    return isinstance(record, Snapshot | HeldClaim)


def shredded(record: Stored) -> Stored:
    """``record``, of a forgotten aggregate, with nothing readable in it:
    an event or command record in the clear shredded, anything else as it
    is (one that is sealed already, a deleted aggregate's tombstone, which
    holds no payload of the aggregate's)."""
    if isinstance(record, RecordedEvent):
        if is_sealed(record.payload) or is_tombstone(record):
            return record
        context = event_context(record.aggregate_id, record.event_id)
        return replace(record, payload=seal(_thrown_away(), b"", context))
    if isinstance(record, CommandRecord):
        if is_sealed_record(record):
            return record
        rejection = record.rejection
        if rejection is not None:
            rejection = Rejection(rejection.kind, rejection.reason, "")
        emptied = replace(record, fingerprint=bytes(_FINGERPRINT_BYTES), rejection=rejection)
        return sealed_record(_thrown_away(), emptied)
    return record


def _thrown_away() -> AESGCM:
    """A cipher under a key that is never stored."""
    return AESGCM(AESGCM.generate_key(bit_length=KEY_BYTES * 8))
