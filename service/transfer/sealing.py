"""An import under the target's encryption at rest: it writes what the
target's own server would have written.

Imports work below the encrypting store wrapper (``Store.transfer`` and the
adapter's roles): records are written as the stream carries them. That is
right for what comes sealed (an encrypted store's export: payloads, states
and command records sealed, claims hidden, data keys wrapped), and wrong for
what comes in the clear where the target encrypts, or for what comes
sealed where it does not. One of three ``ImportSealing``s decides, by the
target:

- ``Sealing`` (a server with master keys; ``chronicle import
  --database-url`` given them as the server takes them: ``--master-key-file``
  or the environment):
  a record in the clear is sealed on its way in as the server seals what it
  writes (``service/store/encrypted.py``): an event's payload and a
  snapshot's state under the aggregate's data key (made for it where it has
  none), a claimed value hidden as a keyed hash under its scope's key (the
  claims the target holds in the clear hidden first, as a server does
  before its first claim), a command record's fingerprint and refusal texts
  sealed under the aggregate's key. What comes sealed is written as it
  comes, once the configured master keys are known to open the stream's
  data keys: a data key they do not unwrap is refused as it is read
  (MASTER_KEY_MISSING, MASTER_KEY_MISMATCH), and data keys come first in an
  export, so nothing is written.
- ``WithoutKeys`` (a server without master keys): anything sealed in the
  stream (a live data key, a sealed payload, state or command record, a
  hidden claim) is refused as it is read, ENCRYPTED_EXPORT_WITHOUT_KEYS:
  the server could read none of it, and would not start again on the store
  (ENCRYPTED_STORE_WITHOUT_KEYS). Data keys come first: nothing is written.
- ``OfflineWithoutKeys`` (``chronicle import --database-url`` given no
  master keys): the same refusal, ENCRYPTED_EXPORT_WITHOUT_KEYS, saying to
  give the command the keys (``--master-key-file``): without them it could
  not check that they open the export's data keys, nor derive the claims of
  aggregates from the state they seal, and a server started on the store
  without them would not start (the walkthrough: 377 events written, exit
  0, and a store no server without keys takes). A record in the clear into
  a store that held sealed data when the import began is refused too
  (ENCRYPTION_KEYS_NEEDED): without the keys it could only be written in
  the clear (a claimed value beside its own keyed hash: held twice).

Each refusal is FAILED_PRECONDITION and names the record (``record``
metadata, as the stores' import conflicts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from service.errors import AggregateForgotten, ConfigurationError, ImportConflict
from service.store.base import Store
from service.store.encrypted import ClaimHider, is_sealed_record, sealed_record
from service.store.encryption import (
    CLAIMS_KEY_PREFIX,
    PROJECTION_KEY_PREFIX,
    Keyring,
    MasterKeys,
    event_context,
    is_sealed,
    refuse_if_sealed,
    seal,
    snapshot_context,
)
from service.store.key_names import humanized, key_owner
from service.store.records import (
    HIDDEN_CLAIM_MARK,
    CommandRecord,
    DataKey,
    HeldClaim,
    RecordedEvent,
    Snapshot,
    is_tombstone,
)
from service.transfer.forgotten import shredded

Stored = RecordedEvent | Snapshot | HeldClaim | CommandRecord | DataKey

ENCRYPTED_EXPORT_WITHOUT_KEYS = "ENCRYPTED_EXPORT_WITHOUT_KEYS"
ENCRYPTION_KEYS_NEEDED = "ENCRYPTION_KEYS_NEEDED"


def in_the_clear(record: Stored) -> bool:
    """Whether ``record`` carries what encryption at rest seals, unsealed:
    an event's payload (a deleted aggregate's tombstone holds none of its
    own), a snapshot's state, a claimed value, a command record's
    fingerprint. A data key is never in the clear (it travels wrapped)."""
    if isinstance(record, RecordedEvent):
        return not is_sealed(record.payload) and not is_tombstone(record)
    if isinstance(record, Snapshot):
        return not is_sealed(record.state)
    if isinstance(record, HeldClaim):
        return not record.value.startswith(HIDDEN_CLAIM_MARK)
    if isinstance(record, CommandRecord):
        return not is_sealed_record(record)
    return False


def sealed(record: Stored) -> bool:
    """Whether ``record`` holds what only master keys open: a live data
    key, or anything encryption at rest sealed."""
    if isinstance(record, DataKey):
        return not record.forgotten
    if isinstance(record, RecordedEvent) and is_tombstone(record):
        return False
    return not in_the_clear(record)


def what(record: Stored) -> str:
    """``record`` in words, for a refusal."""
    if isinstance(record, DataKey):
        return f"the data key of {key_owner(record.aggregate_id)}"
    if isinstance(record, RecordedEvent):
        return f"the payload of event {record.event_id} of {record.aggregate_id!r}"
    if isinstance(record, Snapshot):
        return f"the state of {record.aggregate_id!r}'s snapshot at version {record.version}"
    if isinstance(record, HeldClaim):
        return f"a value {record.aggregate_id!r} claims in {record.scope!r}"
    return f"the record of command {record.command_id} of {record.aggregate_id!r}"


def refusal(reason: str, record: Stored, index: int, why: str) -> ImportConflict:
    """The refusal of ``record``, naming it (a claims scope's or read model's
    key by whose it is: their ids are no aggregate's)."""
    metadata = {"record": str(index)}
    if record.aggregate_id.startswith((CLAIMS_KEY_PREFIX, PROJECTION_KEY_PREFIX)):
        metadata["key"] = key_owner(record.aggregate_id)
    else:
        metadata["aggregate_id"] = record.aggregate_id
    return ImportConflict(f"record[{index}]: {why}", reason=reason, metadata=metadata)


class ImportSealing:
    """How an import treats encryption at rest (this base: not at all)."""

    async def start(self, store: Store) -> None:
        """Before the first record: look at the target (``store``, the adapter's roles)."""

    def check(self, record: Stored, index: int) -> None:
        """Refuse ``record`` (the stream's ``index``-th) as it is read, before anything of its batch is written."""

    async def prepared(self, batch: list[Any]) -> list[Any]:
        """``batch`` (records of one kind) as the target must hold it, record
        for record: None for one it does not keep."""
        return batch


class WithoutKeys(ImportSealing):
    """A target without master keys takes nothing sealed."""

    # What to do about it, said at the end of the refusal.
    advice = (
        "this server has no master keys: it could read none of what they sealed, and would not start again on this"
        " store. Start it with the master keys that wrap the export's data keys (--master-key-file or"
        " CHRONICLE_MASTER_KEYS), then import"
    )

    def check(self, record: Stored, index: int) -> None:
        if sealed(record):
            raise refusal(
                ENCRYPTED_EXPORT_WITHOUT_KEYS,
                record,
                index,
                f"{what(record)} is sealed by encryption at rest (the export is of a store with master keys), and"
                f" {self.advice}. The import stopped here, before writing this record's batch",
            )


class OfflineWithoutKeys(WithoutKeys):
    """``chronicle import --database-url`` given no master keys: nothing
    sealed, as a server without keys; nothing in the clear where the target
    held sealed data as the import began."""

    advice = (
        "the command was given no master keys: it could not check that they open the export's data keys, nor derive"
        " claims from the state they seal, and no server without them would start on this store. Give it the master"
        " keys the servers will have (--master-key-file, or CHRONICLE_MASTER_KEY_FILE or CHRONICLE_MASTER_KEYS in"
        " its environment), or import through a server started with them"
    )

    def __init__(self) -> None:
        self._target_encrypted = False

    async def start(self, store: Store) -> None:
        try:
            await refuse_if_sealed(store.keys, store.projections, store.transfer)
        except ConfigurationError:
            self._target_encrypted = True

    def check(self, record: Stored, index: int) -> None:
        super().check(record, index)
        if self._target_encrypted and in_the_clear(record):
            raise refusal(
                ENCRYPTION_KEYS_NEEDED,
                record,
                index,
                f"{what(record)} is in the clear, and this store is encrypted at rest: without its master keys the"
                " import could only write it in the clear (a claimed value beside its own keyed hash would be held"
                " twice). Give the command the store's master keys as the server takes them (--master-key-file, or"
                " CHRONICLE_MASTER_KEY_FILE or CHRONICLE_MASTER_KEYS in its environment), so that it seals what it"
                " writes as the server would, or import through the server. The import stopped here, before writing"
                " this record's batch",
            )


class Sealing(ImportSealing):
    """A target with master keys: what comes in the clear is sealed as the
    server would have sealed it; the stream's data keys must unwrap."""

    def __init__(self, keyring: Keyring, master_keys: Callable[[], MasterKeys]) -> None:
        self._keyring = keyring
        self._master_keys = master_keys
        self._hider: ClaimHider | None = None

    async def start(self, store: Store) -> None:
        self._hider = ClaimHider(store.claims, self._keyring)

    def check(self, record: Stored, index: int) -> None:
        if not isinstance(record, DataKey) or record.forgotten:
            return
        master_keys = self._master_keys()
        if master_keys.shreds(record):
            return  # its tenant's key was destroyed: taken as it is, it reads as forgotten
        try:
            master_keys.unwrap(record)
        except ConfigurationError as error:
            refused = refusal(
                error.reason,
                record,
                index,
                f"{humanized(error.message)}: the server could not open what it seals. Configure that master key"
                " (beside the active one) and import again. The import stopped here, before writing this record's"
                " batch",
            )
            refused.metadata.update(error.metadata)  # the master key's id
            raise refused from None

    async def prepared(self, batch: list[Any]) -> list[Any]:
        out: list[Any] = []
        for record in batch:
            if not in_the_clear(record):
                out.append(record)
                continue
            try:
                out.append(await self._sealed(record))
            except AggregateForgotten:  # forgotten since the batch was looked at: as the importer does then
                out.append(shredded(record))
        return out

    async def _sealed(self, record: Stored) -> Stored | None:
        keyring = self._keyring
        if isinstance(record, RecordedEvent):
            cipher = await keyring.for_writing(record.aggregate_id)
            return replace(
                record, payload=seal(cipher, record.payload, event_context(record.aggregate_id, record.event_id))
            )
        if isinstance(record, Snapshot):
            # As SealedSnapshots keeps none for an aggregate without a key (a snapshot is only a cache).
            reading = await keyring.for_reading(record.aggregate_id)
            if reading is None:
                return None
            context = snapshot_context(record.aggregate_id, record.version)
            return replace(record, state=seal(reading, record.state, context))
        if isinstance(record, HeldClaim):
            assert self._hider is not None, "start() first"
            return replace(record, value=await self._hider.hidden(record.scope, record.value))
        if isinstance(record, CommandRecord):
            return sealed_record(await keyring.for_writing(record.aggregate_id), record)
        return record


def import_sealing(keyring: Keyring | None, master_keys: Callable[[], MasterKeys | None]) -> ImportSealing:
    """A server's: ``Sealing`` under its keyring and its master keys now
    (a master-key file is read again while it runs), ``WithoutKeys`` without."""
    keys = master_keys()
    if keyring is None or keys is None:
        return WithoutKeys()

    def current() -> MasterKeys:
        return master_keys() or keys

    return Sealing(keyring, current)
