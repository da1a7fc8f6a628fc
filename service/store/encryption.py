"""Encryption at rest: a data key per aggregate, wrapped by a master key.

Each aggregate's event and snapshot payloads are sealed with AES-256-GCM
under the aggregate's own random data key. The data key is stored (in the
store's ``data_keys`` table) only wrapped with a master key (AES key wrap,
RFC 3394), together with that master key's id. Master keys come from a file
or an environment variable and never reach the database.

- Master-key rotation rewraps data keys, not events: configure the new key
  first in the list (it wraps every new data key), keep the old ones after it
  (they still unwrap), run ``AdminService.RewrapKeys`` (``chronicle
  rewrap-keys``), then drop the old keys.
- A tenant may have master keys of its own (``service/store/master_keys.py``):
  they wrap its aggregates' data keys, and destroying them shreds the
  tenant in backups too (read as forgotten).
- Crypto-shredding: forgetting an aggregate erases its data key (the row
  stays as a tombstone), after which its payloads cannot be decrypted by
  anyone, in any backup taken afterwards, on any replica. Its command
  records' fingerprints and refusal texts are sealed under the same key
  (``fingerprint_context``, ``refusal_context``), so they go with it.

A sealed payload is ``0x00 'C' '1' || nonce (12 bytes) || ciphertext+tag``.
No serialized Protobuf message starts with a zero byte (field number 0 is
invalid), so sealed and plaintext payloads (written before encryption was
turned on) are told apart without a column. The associated data binds each
ciphertext to its aggregate and event (or snapshot version), so a payload
copied onto another row does not decrypt.

Unwrapped data keys are cached for ``cache_seconds``: another replica that
forgets an aggregate is noticed here within that time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.errors import AggregateForgotten, MasterKeysUnfit, PayloadNotDecryptable, StoreUnavailable
from service.principal import tenant_prefix
from service.store.base import KeyStore, ProjectionStore, Transfer
from service.store.master_keys import KEY_BYTES as KEY_BYTES  # re-exported: defined here before
from service.store.master_keys import TENANT_OWNED_MARK, missing_tenant_keys_said, missing_tenants_metadata
from service.store.master_keys import MasterKeys as MasterKeys
from service.store.records import (
    HIDDEN_CLAIM_MARK,
    AuditEntry,
    CommandRecord,
    DataKey,
    DocumentRange,
    Forgetting,
    Rejection,
)

log = logging.getLogger(__name__)

MAGIC = b"\x00C1"
NONCE_BYTES = 12


def is_sealed(payload: bytes) -> bool:
    return payload.startswith(MAGIC)


def event_context(aggregate_id: str, event_id: str) -> bytes:
    return b"event\0" + aggregate_id.encode() + b"\0" + event_id.encode()


def snapshot_context(aggregate_id: str, version: int) -> bytes:
    return b"snapshot\0" + aggregate_id.encode() + b"\0" + str(version).encode()


def fingerprint_context(aggregate_id: str, command_id: str) -> bytes:
    return b"fingerprint\0" + aggregate_id.encode() + b"\0" + command_id.encode()


def refusal_context(aggregate_id: str, command_id: str) -> bytes:
    return b"refusal\0" + aggregate_id.encode() + b"\0" + command_id.encode()


# How many live keys a server without master keys looks at before it calls
# the store sealed (PostgreSQL's SEALED_DATA_KEY applies the same rule to
# every key, in one statement).
SEALED_CHECK_KEYS = 100


def sealed_store_without_keys() -> MasterKeysUnfit:
    """The refusal of a server without master keys over a store written
    with them."""
    return MasterKeysUnfit(
        "this store holds data keys sealed by master keys (it was written with encryption at rest): start the"
        " server with those master keys (--master-key-file or CHRONICLE_MASTER_KEYS); without them it could read"
        " none of what they sealed, and would write new payloads and claimed values in the clear",
        reason="ENCRYPTED_STORE_WITHOUT_KEYS",
    )


async def refuse_if_sealed(keys: KeyStore, projections: ProjectionStore, transfer: Transfer) -> None:
    """For a server started without master keys: raise
    ``sealed_store_without_keys`` if the store holds anything sealed: a live
    data key of an aggregate, a read model's key while the read model holds
    documents (sealed, under hashed keys), a claims scope's key while the
    scope holds claims (hashed values). A store whose every encrypted
    aggregate was forgotten holds none of these: tombstones, events nobody
    can open, and the keys of read models and claims scopes whose documents
    and claims went with the aggregates they were derived from."""
    # Master key ids are never empty, so every live key is "wrapped by
    # another master key than ''". Read models' and scopes' keys are few:
    # a full batch of them is taken for a store that holds something.
    live = await keys.data_keys_to_rewrap("", SEALED_CHECK_KEYS)
    if len(live) == SEALED_CHECK_KEYS:
        raise sealed_store_without_keys()
    for key in live:
        if await _still_seals(key.aggregate_id, projections, transfer):
            raise sealed_store_without_keys()


async def _still_seals(key_id: str, projections: ProjectionStore, transfer: Transfer) -> bool:
    if key_id.startswith(PROJECTION_KEY_PREFIX):
        # A tenant's key of a read model (``tenant_projection_key_id``)
        # seals while the read model holds any document: which are the
        # tenant's cannot be told below encryption.
        projection = key_id.removeprefix(PROJECTION_KEY_PREFIX).partition(TENANT_OWNED_MARK)[0]
        return bool(await projections.list_documents(projection, DocumentRange(limit=1)))
    if key_id.startswith(CLAIMS_KEY_PREFIX):
        scope = key_id.removeprefix(CLAIMS_KEY_PREFIX)
        # The first claim after (scope, ""): the scope's first if it has any
        # (a claimed value is never empty).
        held = await transfer.claims_page((scope, ""), 1)
        return bool(held) and held[0].scope == scope
    return True  # an aggregate's


# How many stored data keys the master keys are checked against (at start,
# at each reading of the key file again, at first use): a few of the first
# by id, and a few wrapped by another master key than the active one.
MASTER_KEY_SAMPLE = 16


async def check_master_keys(keys: KeyStore, master_keys: MasterKeys) -> None:
    """Raise ``MasterKeysUnfit`` if ``master_keys`` demonstrably do not open
    the store's data keys, judged on a sample of them (two reads, a few
    unwraps: microseconds each): a configured master key that unwraps none
    of the sampled keys wrapped under its id has other bytes than the key
    that wrapped them (MASTER_KEY_MISMATCH: a wrong key under the right id),
    and a sample none of which unwraps (every key wrapped by master keys not
    given: the wrong file, or a retired key alone) is MASTER_KEY_MISSING.
    Either way every read of a sealed payload would fail, and the active
    key, if wrong, would wrap new data keys that nothing opens. Keys wrapped
    by a master key not given, beside others that open, are logged (those
    aggregates answer MASTER_KEY_MISSING): an old key removed before
    ``rewrap-keys`` answered 0. A store without keys passes. Each tenant
    with a key of its own adds a few of its aggregates' keys to the sample;
    a key its tenant's destroyed key wrapped (or of a shredded tenant) is
    shredded, neither missing nor mismatched."""
    sample = {k.aggregate_id: k for k in await keys.data_keys_to_rewrap("", MASTER_KEY_SAMPLE)}
    sample |= {k.aggregate_id: k for k in await keys.data_keys_to_rewrap(master_keys.active, MASTER_KEY_SAMPLE)}
    sample |= await _tenants_sample(keys, master_keys)
    opened: dict[str, int] = {}
    mismatched: dict[str, int] = {}
    missing: dict[str, int] = {}
    for key in sample.values():
        master_key_id = key.master_key_id or ""
        if master_keys.shreds(key):
            continue
        try:
            master_keys.unwrap(key)
        except MasterKeysUnfit as unfit:
            counts = missing if unfit.reason == "MASTER_KEY_MISSING" else mismatched
            counts[master_key_id] = counts.get(master_key_id, 0) + 1
        else:
            opened[master_key_id] = opened.get(master_key_id, 0) + 1
    wrong = sorted(m for m in mismatched if m not in opened)
    if wrong:
        checked = sum(mismatched[m] for m in wrong)
        raise MasterKeysUnfit(
            f"master key {', '.join(map(repr, wrong))} unwraps none of the {checked} data keys of the store"
            " wrapped under its id that were checked: its bytes are not those of the key that wrapped them"
            " (a key file edited, or another deployment's). Give the master key that wrapped them under that id",
            reason="MASTER_KEY_MISMATCH",
            metadata={"master_key_ids": ",".join(wrong)},
        )
    tenant_said = missing_tenant_keys_said(sorted(missing))
    if missing and not opened:
        raise MasterKeysUnfit(
            f"none of the {len(sample)} data keys of the store that were checked is wrapped by a master key"
            f" given ({', '.join(map(repr, master_keys.keys))}): they are wrapped by"
            f" {', '.join(map(repr, sorted(missing)))}. Give those master keys (the wrong key file, or an old key"
            " removed before rewrap-keys answered 0?)" + (f"; {tenant_said}" if tenant_said else ""),
            reason="MASTER_KEY_MISSING",
            metadata={"master_key_ids": ",".join(sorted(missing))} | missing_tenants_metadata(missing),
        )
    if missing:
        log.error(
            "%d of the %d data keys checked are wrapped by master keys that are not given (%s): their aggregates"
            " cannot be read (MASTER_KEY_MISSING) until those keys are given again%s",
            sum(missing.values()),
            len(sample),
            ", ".join(sorted(missing)),
            f"; {tenant_said}" if tenant_said else "",
        )


# How many aggregates' keys of each tenant with keys of its own are added
# to the sample (a listing and a read each: the check's cost grows with the
# number of such tenants, not of their aggregates).
TENANT_KEY_SAMPLE = 4


async def _tenants_sample(keys: KeyStore, master_keys: MasterKeys) -> dict[str, DataKey]:
    """A few keys of each tenant that has master keys of its own: the two
    samples above are of the first ids, which may all be one tenant's."""
    sample: dict[str, DataKey] = {}
    for tenant in master_keys.tenant_active:
        for aggregate_id in await keys.live_keys(tenant_prefix(tenant), limit=TENANT_KEY_SAMPLE):
            key = await keys.load_data_key(aggregate_id)
            if key is not None and not key.forgotten:
                sample[aggregate_id] = key
    return sample


def new_master_key() -> str:
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


class Keyring:
    """Data keys of aggregates: made on first write, cached, forgotten."""

    def __init__(
        self,
        store: KeyStore,
        master_keys: MasterKeys,
        *,
        cache_seconds: float = 30.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._master = master_keys
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache_size = cache_size
        # aggregate id -> (AESGCM or None when forgotten, when cached)
        self._cache: OrderedDict[str, tuple[AESGCM | None, float]] = OrderedDict()
        # Whether the master keys were checked against the store
        # (check_master_keys), and what the check found wrong with them.
        self._checked = False
        self._unfit: MasterKeysUnfit | None = None
        self._checking = asyncio.Lock()

    async def check(self) -> None:
        """Check the master keys in use against the store now (at start-up):
        ``MasterKeysUnfit`` if they do not open its data keys. A store that
        does not answer (``StoreUnavailable``) is checked at first use."""
        await self._usable()

    async def _check_once(self) -> None:
        if self._checked:
            return
        try:
            await check_master_keys(self._store, self._master)
        except MasterKeysUnfit as unfit:
            self._unfit = unfit
        self._checked = True

    async def _usable(self) -> None:
        """Before a key is read from the store: the master keys were checked
        (a server whose store did not answer at start-up checks them now)
        and were fit. Unfit, every use is refused with what was found, until
        a key file that fits is read again: a wrong active key would wrap new
        data keys that nothing can open."""
        if not self._checked:
            async with self._checking:
                await self._check_once()
        if self._unfit is not None:
            # A new exception each time: one raised again and again would grow its traceback.
            raise MasterKeysUnfit(self._unfit.message, reason=self._unfit.reason, metadata=self._unfit.metadata)

    async def use_master_keys(self, master_keys: MasterKeys) -> None:
        """From now on, wrap new data keys with ``master_keys``' active key
        and unwrap with any of them (the master-key file read again), if
        they fit the store: ``MasterKeysUnfit``, and the keys in use kept,
        if they demonstrably do not open its data keys (``check_master_keys``).
        A store that does not answer: used, and checked at first use. Keys
        already unwrapped stay cached, unless a tenant key was destroyed
        since: then none does (which aggregates' keys it wrapped is not
        kept), so a shred holds on this server once the file is read."""
        try:
            await check_master_keys(self._store, master_keys)
            checked = True
        except StoreUnavailable:
            checked = False
        if master_keys.destroyed - self._master.destroyed or master_keys.shredded - self._master.shredded:
            self._cache.clear()
        self._master = master_keys
        self._checked = checked
        self._unfit = None

    def _cached(self, aggregate_id: str) -> tuple[AESGCM | None] | None:
        hit = self._cache.get(aggregate_id)
        if hit is None or self._clock() - hit[1] > self._cache_seconds:
            return None
        self._cache.move_to_end(aggregate_id)
        return (hit[0],)

    def _remember(self, aggregate_id: str, cipher: AESGCM | None) -> None:
        self._cache[aggregate_id] = (cipher, self._clock())
        self._cache.move_to_end(aggregate_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _cipher(self, key: DataKey) -> AESGCM | None:
        """None for a forgotten key, and for one its tenant's destroyed key
        wrapped (a shred): both read as forgotten."""
        if key.forgotten or self._master.shreds(key):
            return None
        return AESGCM(self._master.unwrap(key))

    async def for_reading(self, aggregate_id: str) -> AESGCM | None:
        """The aggregate's cipher; None if it has no key or was forgotten."""
        cipher, _ = await self.cipher_or_forgotten(aggregate_id)
        return cipher

    async def cipher_or_forgotten(self, aggregate_id: str) -> tuple[AESGCM | None, bool]:
        """The aggregate's cipher (None if it has none), and whether it was
        forgotten: what has no cipher because it never had a key may be
        kept as it is, what was forgotten must not be written readable."""
        hit = self._cached(aggregate_id)
        if hit is not None:
            return hit[0], hit[0] is None  # only a forgotten aggregate is cached without a cipher
        await self._usable()
        key = await self._store.load_data_key(aggregate_id)
        if key is None:
            return None, False  # not cached: a key may be made for it any moment
        cipher = self._cipher(key)
        self._remember(aggregate_id, cipher)
        return cipher, cipher is None

    async def for_writing(self, aggregate_id: str) -> AESGCM:
        """The aggregate's cipher, making its key on first use. Raises
        AggregateForgotten for a forgotten aggregate (a shredded tenant's
        among them: checked before a key is made, which for a new id of a
        shredded tenant raises TenantShredded instead)."""
        cipher, forgotten = await self.cipher_or_forgotten(aggregate_id)
        if forgotten:
            raise AggregateForgotten(aggregate_id)
        if cipher is None:
            master_key_id, wrapped = self._master.wrap(AESGCM.generate_key(bit_length=KEY_BYTES * 8), aggregate_id)
            stored = await self._store.create_data_key(DataKey(aggregate_id, master_key_id, wrapped))
            cipher = self._cipher(stored)
            self._remember(aggregate_id, cipher)
        if cipher is None:
            raise AggregateForgotten(aggregate_id)
        return cipher

    async def renew_shredded(self, owner: str) -> AESGCM:
        """``for_writing``, with a new data key in place of one a destroyed
        master key wrapped while ``owner``'s tenant keeps a live key (an old
        key destroyed before ``rewrap-keys`` moved what it wrapped). Only for
        what can be made again (a read model's documents of the tenant),
        never an aggregate's key, whose events it sealed for good: what the
        old key sealed stays unreadable, and is not found under the new one.
        AggregateForgotten for a shredded tenant's."""
        await self._usable()
        key = await self._store.load_data_key(owner)
        if key is not None and not key.forgotten and self._master.shreds(key):
            master_key_id, wrapped = self._master.wrap(AESGCM.generate_key(bit_length=KEY_BYTES * 8), owner)
            # Lost (0 replaced): another replica's renewal stands.
            await self._store.rewrap_data_keys([(key, DataKey(owner, master_key_id, wrapped))])
            self._cache.pop(owner, None)
        return await self.for_writing(owner)

    async def forget(self, aggregate_id: str) -> bool:
        """Erase the aggregate's key for good. False if it had none to erase."""
        return (await self.forget_and_count(aggregate_id)).erased

    async def forget_and_count(self, aggregate_id: str) -> Forgetting:
        """``forget``, saying what went with the key (``Forgetting``)."""
        forgetting = await self._store.forget_aggregate_data(aggregate_id)
        self._remember(aggregate_id, None)
        return forgetting

    async def forget_all_and_count(
        self, aggregate_ids: Sequence[str], *, audit: AuditEntry | None = None
    ) -> list[Forgetting]:
        """``forget_and_count`` of each, in one transaction (a batch), with
        its ``audit`` entry when it erased a key."""
        forgettings = await self._store.forget_aggregates_data(aggregate_ids, audit=audit)
        for aggregate_id in aggregate_ids:
            self._remember(aggregate_id, None)
        return forgettings

    def tenant_shredded(self, tenant: str) -> bool:
        """Whether every master key of ``tenant`` is marked destroyed: what
        it owns reads as forgotten, whatever key wraps it."""
        return tenant in self._master.shredded

    async def forgotten(self, aggregate_id: str) -> bool:
        key = await self._store.load_data_key(aggregate_id)
        return key is not None and key.forgotten

    async def rewrap(self, *, batch: int = 500) -> int:
        """Rewrap every data key under the active master key of its owner
        (its tenant's, or the shared one); return how many. Shredded keys
        stay as they are: nothing opens them."""
        await self._usable()
        master = self._master
        # Without tenants' keys every key belongs under the shared active
        # one, and the store lists only those that are not; with them, a key
        # under the shared active key may be a tenant's to move, so every
        # live key is looked at (a page of 500 a read, no unwrap for those
        # already in place).
        listed = master.active if not master.tenant_active else ""
        done = 0
        after = ""
        while page := await self._store.data_keys_to_rewrap(listed, batch, after=after):
            after = page[-1].aggregate_id
            rewraps = [
                (key, DataKey(key.aggregate_id, *master.wrap(master.unwrap(key), key.aggregate_id)))
                for key in page
                if not master.shreds(key) and key.master_key_id != master.key_id_for(key.aggregate_id)
            ]
            # A page in one transaction: the store clears what it replaced once per page, not per key.
            done += await self._store.rewrap_data_keys(rewraps)
        return done


def seal(cipher: AESGCM, plaintext: bytes, context: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + nonce + cipher.encrypt(nonce, plaintext, context)


def open_sealed(cipher: AESGCM, sealed: bytes, context: bytes) -> bytes:
    body = sealed[len(MAGIC) :]
    try:
        return cipher.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], context)
    except InvalidTag:
        raise PayloadNotDecryptable("a stored payload does not decrypt with its aggregate's key") from None


# A command record's fingerprint (SHA-256 of the command's aggregate, type
# and payload: 32 bytes) is stored sealed (63 bytes). A fingerprint in the
# clear, written before encryption was on, is 32 bytes long, so the two are
# told apart by length as well as by the mark (a digest may start with it).
TAG_BYTES = 16
SEALED_FINGERPRINT_BYTES = len(MAGIC) + NONCE_BYTES + 32 + TAG_BYTES


def is_sealed_fingerprint(fingerprint: bytes) -> bool:
    return len(fingerprint) == SEALED_FINGERPRINT_BYTES and is_sealed(fingerprint)


# What forgetting leaves of every fingerprint of the aggregate's command
# records, sealed or in the clear (written before encryption was on, or
# imported): the form of a sealed one, holding nothing. It reads as sealed
# under a key that is gone (a retry: AGGREGATE_FORGOTTEN), and no guess can
# be checked against it.
ERASED_FINGERPRINT = MAGIC + bytes(SEALED_FINGERPRINT_BYTES - len(MAGIC))


def erased_record(record: CommandRecord) -> CommandRecord:
    """``record`` as forgetting its aggregate leaves it: its fingerprint
    erased, its refusal's kind and reason kept, its text, metadata and field
    violations gone (the SQL stores do the same in SQL)."""
    rejection = record.rejection
    if rejection is not None:
        rejection = Rejection(rejection.kind, rejection.reason, "")
    return replace(record, fingerprint=ERASED_FINGERPRINT, rejection=rejection)


# Text columns (a refusal's message) hold sealed bytes as this mark and
# their base64. Chronicle's own texts never start with a control character.
SEALED_TEXT_MARK = "\x1fsealed:"


def is_sealed_text(text: str) -> bool:
    return text.startswith(SEALED_TEXT_MARK)


def seal_text(cipher: AESGCM, text: str, context: bytes) -> str:
    return SEALED_TEXT_MARK + base64.b64encode(seal(cipher, text.encode(), context)).decode()


def open_text(cipher: AESGCM, sealed: str, context: bytes) -> str:
    try:
        body = base64.b64decode(sealed[len(SEALED_TEXT_MARK) :], validate=True)
    except binascii.Error:
        raise PayloadNotDecryptable("a stored sealed text is not base64") from None
    return open_sealed(cipher, body, context).decode()


# Projection documents are sealed under one data key per projection, kept
# in the same table as aggregates' keys under an id no aggregate can have
# (aggregate ids are printable; this one starts with a control character).
PROJECTION_KEY_PREFIX = "\x1fprojection:"


def projection_key_id(projection: str) -> str:
    return PROJECTION_KEY_PREFIX + projection


def tenant_projection_key_id(projection: str, tenant: str) -> str:
    """The data key of a ``tenant_keyed`` read model's documents of one
    tenant: wrapped by that tenant's master key (``master_keys.owner_tenant``
    reads the tenant back), so destroying it shreds them in backups too."""
    return PROJECTION_KEY_PREFIX + projection + TENANT_OWNED_MARK + tenant


def document_context(projection: str, key: str) -> bytes:
    return b"document\0" + projection.encode() + b"\0" + key.encode()


def keyed_hash(cipher: AESGCM, purpose: bytes, namespace: str, value: str) -> str:
    """A stand-in for ``value`` that can be stored and looked up but not
    read back: deterministic (every replica computes the same, so lookups
    and unique keys still work) and useless without the data key (an
    attacker with the database cannot test guesses, as with a plain hash).

    HMAC-SHA256 under a secret only ``cipher``'s data key yields: the
    encryption of the fixed block ``purpose`` under a fixed nonce with
    ``namespace`` as associated data. That nonce is used for nothing else,
    and always on the same plaintext, so it leaks nothing; the secret is
    never stored.
    """
    secret = cipher.encrypt(b"\0" * NONCE_BYTES, purpose, namespace.encode())
    return hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()


def hidden_document_key(cipher: AESGCM, projection: str, key: str) -> str:
    """The stored form of a document key, which may be personal data
    ("owner:ann"), under the projection's data key."""
    return "k:" + keyed_hash(cipher, b"chronicle document keys", projection, key)


def hidden_tenant_document_key(cipher: AESGCM, projection: str, key: str) -> str:
    """The stored form of a ``tenant_keyed`` read model's document key under
    its tenant's data key of the read model: ``t:`` where the read model's
    own key's are ``k:``, so a stored document says which key sealed it (one
    written before the read model had tenants' keys stays ``k:``)."""
    return "t:" + keyed_hash(cipher, b"chronicle document keys", projection, key)


# Uniqueness claims (an e-mail address in ``users.email``) are stored as
# keyed hashes under one data key per scope, kept beside the others under an
# id no aggregate can have. Per scope, like projections: one scope's secret
# says nothing about another's values. A scope declared per tenant is stored
# as one scope per tenant (service.claim_scopes), so each tenant's values
# get a key of their own, which the tenant's master key wraps.
CLAIMS_KEY_PREFIX = "\x1fclaims:"


def claims_key_id(scope: str) -> str:
    return CLAIMS_KEY_PREFIX + scope


def hidden_claim_value(cipher: AESGCM, scope: str, value: str) -> str:
    """The stored form of a claimed value under its scope's data key; it
    starts with ``HIDDEN_CLAIM_MARK``, which no claimed value does."""
    return HIDDEN_CLAIM_MARK + keyed_hash(cipher, b"chronicle claim values", scope, value)
