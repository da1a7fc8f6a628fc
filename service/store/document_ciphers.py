"""Which data key seals each document of a read model (encryption at rest).

A read model's documents are sealed under the read model's own data key,
wrapped by the shared master key (``projection_key_id``), and stored under
keyed hashes of their keys (``k:…``). A ``tenant_keyed`` read model (the
plugin's promise: every document key is ``<tenant>:…``) seals each tenant's
documents under a data key of (read model, tenant) instead
(``tenant_projection_key_id``), wrapped by that tenant's master key when it
has one (``MasterKeys.key_id_for``), and stores them under keyed hashes
under that key (``t:…``). Destroying the tenant's master key then shreds
its documents wherever they are, backups included, as it shreds its
aggregates: the server answers ``DOCUMENT_FORGOTTEN`` for them.

A document stored under the read model's own key before (a store older
than tenants' keys of read models, or the read model declared
``tenant_keyed`` since) stays readable: a read looks under both keyed
hashes in one statement, the tenant's first, and a write moves it (stores
it under the tenant's key and deletes the old row in the same commit).
``rewrap-keys`` cannot move documents: it holds no document key to hash or
open them with; a rebuild of the read model writes every document anew.

A tenant whose master key that wrapped its key of a read model was
destroyed, while it keeps a newer one (destroyed before ``rewrap-keys``
moved that key): its documents sealed under it read as forgotten until the
read model writes one of the tenant's documents again, which makes the
read model a new key for the tenant (the old documents then read absent).

A key without a tenant (``totals``: the plugin broke its promise) or a
document with a due time (a reaction's deadline: reactions are never
``tenant_keyed``) stays under the read model's own key.

In a rolling upgrade: Chronicle 0.3.0 looks under the read model's own key
only. So tenants' keys are used only once the store's
``TENANT_DOCUMENT_KEYS`` feature is on (``service/store/features.py``: no
live server of an older version); until then a ``tenant_keyed`` read
model's documents are written under its own key, as 0.3.0 writes them
(a shredded tenant's still refused), and move on their next write after.
The feature is asked for at each commit until it is on, then never again:
a commit is fenced by its projection's lease, so a replica that took the
lease over from one writing tenants' keys asks after that one turned it on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.errors import AggregateForgotten, DocumentForgotten
from service.principal import TENANT_SEPARATOR, tenant_problem
from service.store.encryption import (
    Keyring,
    hidden_document_key,
    hidden_tenant_document_key,
    projection_key_id,
    tenant_projection_key_id,
)
from service.store.features import TENANT_DOCUMENT_KEYS, ClusterFeatures

log = logging.getLogger(__name__)

# How long a tenant_keyed read model found without a key of its own is
# taken to have none (as long as the keyring caches a key found).
OWN_KEY_ABSENCE_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Place:
    """Where a document is (or may be) stored: its hidden key, and the
    cipher its data is sealed with."""

    hidden: str
    cipher: AESGCM


def document_tenant(key: str) -> str:
    """The tenant a ``tenant_keyed`` read model's document key names ('' if
    it names none that could be a tenant)."""
    tenant, separator, _ = key.partition(TENANT_SEPARATOR)
    return tenant if separator and not tenant_problem(tenant) else ""


class DocumentCiphers:
    """The places of a read model's documents: for reading, where each may
    be, the preferred first; for writing, where it goes, and the older place
    it leaves."""

    def __init__(
        self,
        keyring: Keyring,
        tenant_keyed: frozenset[str],
        *,
        features: ClusterFeatures | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keyring = keyring
        self.tenant_keyed = tenant_keyed
        self._clock = clock
        self._features = features
        # Tenants' keys in use (the feature on, for good); without a store
        # that records features, on from the start.
        self._tenant_keys = features is None
        # tenant_keyed read models found without a key of their own, and
        # until when that is taken as still so (the keyring caches keys
        # found, not their absence).
        self._without_own: dict[str, float] = {}

    async def _older(self, projection: str) -> AESGCM | None:
        """A tenant_keyed read model's own cipher, if it has a key: its
        documents may be there from before. Its absence is taken as true for
        OWN_KEY_ABSENCE_SECONDS once tenants' keys are on: only a server
        that does not know the read model is tenant_keyed puts a tenant's
        document under that key then (0.3.0 after a rollback, which needs a
        rebuild: deployment.md), and while they are off this version writes
        there itself, so its absence is not remembered; a key without a
        tenant, which makes it too, is read under it whatever this says."""
        if self._clock() < self._without_own.get(projection, 0.0):
            return None
        cipher = await self.keyring.for_reading(projection_key_id(projection))
        if cipher is None and self._tenant_keys:
            # Until tenants' keys are on, this version writes there too.
            self._without_own[projection] = self._clock() + OWN_KEY_ABSENCE_SECONDS
        return cipher

    async def tenant_keys(self) -> bool:
        """Whether writes may use tenants' keys: the store's feature is on
        (asked each time until it is; never off again)."""
        if not self._tenant_keys and self._features is not None:
            self._tenant_keys = await self._features.enable_feature(TENANT_DOCUMENT_KEYS)
            if self._tenant_keys:
                log.info(
                    "%s is on (no replica of an older version is live): tenant_keyed read models' documents"
                    " are written under their tenants' keys from now on",
                    TENANT_DOCUMENT_KEYS,
                )
        return self._tenant_keys

    async def own(self, projection: str) -> AESGCM:
        """The read model's own cipher, made on first use."""
        return await self.keyring.for_writing(projection_key_id(projection))

    async def for_reading(self, projection: str, keys: list[str]) -> dict[str, list[Place]]:
        """Each key's places, the preferred first; DocumentForgotten if one
        is of a tenant whose master key sealing its documents was destroyed.
        Reads make no tenant's key: one never made holds no document."""
        if projection not in self.tenant_keyed:
            own = await self.own(projection)
            return {key: [Place(hidden_document_key(own, projection, key), own)] for key in keys}
        older = await self._older(projection)
        tenants: dict[str, AESGCM | None] = {}
        places: dict[str, list[Place]] = {}
        for key in keys:
            found: list[Place] = []
            tenant = document_tenant(key)
            if not tenant:
                # The promise broken: under the read model's own key, as
                # written, if it has one (a read makes none: each would make
                # every write delete old rows from then on).
                mine = await self.keyring.for_reading(projection_key_id(projection))
                places[key] = [] if mine is None else [Place(hidden_document_key(mine, projection, key), mine)]
                continue
            if tenant not in tenants:
                tenants[tenant] = await self._tenant_cipher_for_reading(projection, tenant)
            cipher = tenants[tenant]
            if cipher is not None:
                found.append(Place(hidden_tenant_document_key(cipher, projection, key), cipher))
            if older is not None:
                found.append(Place(hidden_document_key(older, projection, key), older))
            places[key] = found
        return places

    async def _tenant_cipher_for_reading(self, projection: str, tenant: str) -> AESGCM | None:
        if self.keyring.tenant_shredded(tenant):
            raise DocumentForgotten(projection, tenant)
        cipher, forgotten = await self.keyring.cipher_or_forgotten(tenant_projection_key_id(projection, tenant))
        if forgotten:
            raise DocumentForgotten(projection, tenant)
        return cipher

    async def writer(self, projection: str) -> DocumentWriter:
        """Where one commit's documents go."""
        if projection not in self.tenant_keyed:
            return DocumentWriter(self, projection, None)
        if not await self.tenant_keys():
            return DocumentWriter(self, projection, None, tenant_keys=False)
        return DocumentWriter(self, projection, await self._older(projection))


class DocumentWriter:
    """The places of one commit's writes, each tenant's cipher looked up
    once. ``older``: the read model's own cipher, when documents may be
    stored under it that a tenant's key should seal."""

    def __init__(
        self, ciphers: DocumentCiphers, projection: str, older: AESGCM | None, *, tenant_keys: bool = True
    ) -> None:
        self._ciphers = ciphers
        self._projection = projection
        self._older = older
        self._tenant_keyed = projection in ciphers.tenant_keyed
        # False: a tenant_keyed read model writing as 0.3.0 does (under its
        # own key), while an older replica may be live.
        self._tenant_keys = tenant_keys
        self._tenants: dict[str, AESGCM] = {}
        self._own: AESGCM | None = None

    async def place(self, key: str, *, due: bool) -> tuple[Place, str | None]:
        """Where ``key``'s document goes, and the hidden key of an older
        place to delete it from (None: none)."""
        tenant = document_tenant(key) if self._tenant_keyed and not due else ""
        if tenant and not self._tenant_keys:
            if self._ciphers.keyring.tenant_shredded(tenant):
                raise DocumentForgotten(self._projection, tenant)
            tenant = ""
        if not tenant:
            if self._own is None:
                self._own = await self._ciphers.own(self._projection)
            return Place(hidden_document_key(self._own, self._projection, key), self._own), None
        cipher = self._tenants.get(tenant)
        if cipher is None:
            keyring = self._ciphers.keyring
            if keyring.tenant_shredded(tenant):
                raise DocumentForgotten(self._projection, tenant)
            try:
                # A key of the read model that an old key of the tenant,
                # destroyed since, wrapped: documents are made again, so a
                # new key takes its place (the tenant's aggregates under the
                # old key are forgotten; a projection stalled on them for
                # good, a rebuild included, would help no one).
                cipher = await keyring.renew_shredded(tenant_projection_key_id(self._projection, tenant))
            except AggregateForgotten:
                raise DocumentForgotten(self._projection, tenant) from None
            self._tenants[tenant] = cipher
        older = None if self._older is None else hidden_document_key(self._older, self._projection, key)
        return Place(hidden_tenant_document_key(cipher, self._projection, key), cipher), older
