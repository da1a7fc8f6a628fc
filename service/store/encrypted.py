"""An ``EventStore`` that seals payloads before they reach another store.

Wraps any adapter: event payloads and snapshot states are encrypted on the
way in and decrypted on the way out (``service.security.encryption``), so
the database holds ciphertext while every caller above sees plaintext. The
envelope (ids, types, versions, metadata, user, origin) stays in the clear:
the store needs it to order, filter and check.

Events of a forgotten aggregate read as ``redacted`` (empty payload), its
snapshots as absent, and appending to it raises ``AggregateForgotten``.
Plaintext payloads written before encryption was turned on still read.

Claimed values (an e-mail address held unique) are stored as keyed hashes
(``hidden_claim_value``): the unique key still decides, but the database no
longer holds the address. Claims taken in the clear before encryption was
turned on are hidden once per process, before its first claim is checked
or taken, so a value claimed before and after cannot be held twice.

Every method of the protocol that carries a payload or a claimed value is
wrapped here; the others delegate. A new protocol method that returns
events must be added here too, or it would hand out ciphertext.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.errors import NotUnique
from service.security.encryption import (
    Keyring,
    claims_key_id,
    document_context,
    event_context,
    hidden_claim_value,
    hidden_document_key,
    is_sealed,
    open_sealed,
    projection_key_id,
    seal,
    snapshot_context,
)
from service.store.base import AggregateQuery, AuditQuery, EventStore
from service.store.records import (
    AggregateHead,
    AuditEntry,
    ClaimChange,
    CommandRecord,
    DataKey,
    DocumentWrite,
    HeldClaim,
    LogFilter,
    LogPage,
    NewEvent,
    RecordedEvent,
    Snapshot,
    StoredDocument,
)

log = logging.getLogger(__name__)
# Claims in the clear hidden per round trip, when the store is first used.
HIDE_BATCH = 500


class EncryptingStore:
    def __init__(self, inner: EventStore, keyring: Keyring) -> None:
        self.inner = inner
        self.keyring = keyring
        self._no_claims_in_clear = False
        self._hiding = asyncio.Lock()

    # -- payload-carrying methods -------------------------------------------

    async def append(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        commands: Sequence[CommandRecord] = (),
        claims: Sequence[ClaimChange] = (),
    ) -> list[RecordedEvent]:
        sealed: list[NewEvent] = []
        if events or any(not c.release for c in claims):
            # Also for claims alone: a forgotten aggregate takes no claims
            # (AggregateForgotten), and one that holds some has a key, so
            # forgetting it can release them.
            cipher = await self.keyring.for_writing(aggregate_id)
            sealed = [
                replace(e, payload=seal(cipher, e.payload, event_context(aggregate_id, e.event_id))) for e in events
            ]
        hidden = [replace(c, value=await self._hidden(c.scope, c.value)) for c in claims]
        try:
            recorded = await self.inner.append(aggregate_id, sealed, expected_version, commands=commands, claims=hidden)
        except NotUnique as lost:
            # The executor names the batch's claimant by the value it claimed.
            clear = {(h.scope, h.value): c.value for h, c in zip(hidden, claims, strict=True)}
            raise NotUnique(lost.scope, clear.get((lost.scope, lost.value or ""))) from None
        # Callers get back what they wrote, not the ciphertext.
        return [replace(r, payload=e.payload) for r, e in zip(recorded, events, strict=True)]

    async def claim_owner(self, scope: str, value: str) -> str | None:
        return await self.inner.claim_owner(scope, await self._hidden(scope, value))

    async def _hidden(self, scope: str, value: str) -> str:
        await self._hide_claims_in_clear()
        cipher = await self.keyring.for_writing(claims_key_id(scope))
        return hidden_claim_value(cipher, scope, value)

    async def _hide_claims_in_clear(self) -> None:
        """Hide the claims taken before encryption was on, once per process,
        before any claim is checked or taken here: every server that checks
        claims has first seen none left in the clear (only a server without
        encryption writes them), so no value can be held both ways."""
        if self._no_claims_in_clear:
            return
        async with self._hiding:
            hidden = 0
            while not self._no_claims_in_clear:
                held = await self.inner.claims_in_clear(HIDE_BATCH)
                for claim in held:
                    cipher = await self.keyring.for_writing(claims_key_id(claim.scope))
                    hidden += await self.inner.hide_claim(claim, hidden_claim_value(cipher, claim.scope, claim.value))
                self._no_claims_in_clear = not held
            if hidden:
                log.info("%d uniqueness claims taken before encryption was on are now stored hidden", hidden)

    async def read_aggregate(self, aggregate_id: str, query: AggregateQuery = AggregateQuery()) -> list[RecordedEvent]:
        events = await self.inner.read_aggregate(aggregate_id, query)
        if not any(is_sealed(e.payload) for e in events):
            return events
        cipher = await self.keyring.for_reading(aggregate_id)
        return [self._opened(cipher, e) for e in events]

    async def read_log(self, after_position: int, log_filter: LogFilter, limit: int) -> LogPage:
        page = await self.inner.read_log(after_position, log_filter, limit)
        sealed_for = {e.aggregate_id for e in page.events if is_sealed(e.payload)}
        if not sealed_for:
            return page
        # One key lookup per aggregate in the page, not per event.
        ciphers = {aggregate_id: await self.keyring.for_reading(aggregate_id) for aggregate_id in sealed_for}
        return replace(page, events=tuple(self._opened(ciphers.get(e.aggregate_id), e) for e in page.events))

    @staticmethod
    def _opened(cipher: AESGCM | None, event: RecordedEvent) -> RecordedEvent:
        if not is_sealed(event.payload):
            return event
        if cipher is None:
            return replace(event, payload=b"", redacted=True)
        context = event_context(event.aggregate_id, event.event_id)
        return replace(event, payload=open_sealed(cipher, event.payload, context))

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        cipher = await self.keyring.for_reading(snapshot.aggregate_id)
        if cipher is None:
            # No key yet (the aggregate has no sealed events) or forgotten:
            # a snapshot is only an optimisation, so none is kept.
            return
        context = snapshot_context(snapshot.aggregate_id, snapshot.version)
        await self.inner.save_snapshot(replace(snapshot, state=seal(cipher, snapshot.state, context)))

    async def load_snapshot(self, aggregate_id: str, *, at_most: int | None = None) -> Snapshot | None:
        snapshot = await self.inner.load_snapshot(aggregate_id, at_most=at_most)
        if snapshot is None or not is_sealed(snapshot.state):
            return snapshot
        cipher = await self.keyring.for_reading(aggregate_id)
        if cipher is None:
            return None
        context = snapshot_context(aggregate_id, snapshot.version)
        return replace(snapshot, state=open_sealed(cipher, snapshot.state, context))

    # -- delegated ----------------------------------------------------------

    async def open(self) -> None:
        await self.inner.open()

    async def projection_position(self, name: str) -> int:
        return await self.inner.projection_position(name)

    # Projection documents are derived from payloads, so they are sealed
    # too, under a key per projection; their keys (often personal: an
    # owner's name) are stored as keyed hashes. Forgetting an aggregate does
    # not reach into read models: a projection that must forget handles it.
    async def load_document(self, projection: str, key: str) -> StoredDocument | None:
        cipher = await self.keyring.for_writing(projection_key_id(projection))
        stored = await self.inner.load_document(projection, hidden_document_key(cipher, projection, key))
        if stored is None:
            return None
        data = stored.data
        if is_sealed(data):
            data = open_sealed(cipher, data, document_context(projection, key))
        return StoredDocument(key, stored.type_name, data)

    async def commit_projection(
        self, name: str, *, expected_position: int, new_position: int, writes: Sequence[DocumentWrite]
    ) -> None:
        cipher = await self.keyring.for_writing(projection_key_id(name))
        sealed = [
            DocumentWrite(
                hidden_document_key(cipher, name, w.key),
                w.type_name,
                None if w.data is None else seal(cipher, w.data, document_context(name, w.key)),
            )
            for w in writes
        ]
        await self.inner.commit_projection(
            name, expected_position=expected_position, new_position=new_position, writes=sealed
        )

    async def log_head(self) -> int:
        return await self.inner.log_head()

    async def wait_for_commit(self, after_position: int, max_wait: float) -> None:
        await self.inner.wait_for_commit(after_position, max_wait)

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> None:
        await self.inner.ping()

    async def find_command(self, command_id: str) -> CommandRecord | None:
        return await self.inner.find_command(command_id)

    async def head(self, aggregate_id: str) -> AggregateHead | None:
        return await self.inner.head(aggregate_id)

    async def version_at(self, aggregate_id: str, timestamp_us: int) -> int:
        return await self.inner.version_at(aggregate_id, timestamp_us)

    async def claims_in_clear(self, limit: int) -> list[HeldClaim]:
        return await self.inner.claims_in_clear(limit)

    async def hide_claim(self, claim: HeldClaim, hidden_value: str) -> bool:
        return await self.inner.hide_claim(claim, hidden_value)

    async def record_audit_entry(self, entry: AuditEntry) -> None:
        await self.inner.record_audit_entry(entry)

    async def read_audit(self, query: AuditQuery) -> list[AuditEntry]:
        return await self.inner.read_audit(query)

    async def create_data_key(self, key: DataKey) -> DataKey:
        return await self.inner.create_data_key(key)

    async def load_data_key(self, aggregate_id: str) -> DataKey | None:
        return await self.inner.load_data_key(aggregate_id)

    async def forget_data_key(self, aggregate_id: str) -> bool:
        return await self.inner.forget_data_key(aggregate_id)

    async def data_keys_to_rewrap(self, active_master_key_id: str, limit: int) -> list[DataKey]:
        return await self.inner.data_keys_to_rewrap(active_master_key_id, limit)

    async def rewrap_data_key(self, old: DataKey, new: DataKey) -> bool:
        return await self.inner.rewrap_data_key(old, new)
