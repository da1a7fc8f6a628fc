"""Encryption at rest: the roles of a store that carry payloads or claimed
values, wrapped so that they seal on the way in and open on the way out.

``encrypted(store, keyring)`` returns the store with its events, log,
claims, snapshots and projections roles wrapped; the others (audit, data
keys, lifecycle) are the adapter's own. Wraps any adapter: event payloads and snapshot states are encrypted on the
way in and decrypted on the way out (``service.store.encryption``), so
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

Every role method that carries a payload or a claimed value is wrapped
here; a wrapper class implements its whole role protocol (mypy checks it),
so a new method in a role that carries payloads cannot be forgotten.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.errors import NotAvailableHere, NotUnique
from service.store.base import (
    AggregateQuery,
    ClaimRegistry,
    EventRecorder,
    LogReader,
    ProjectionStore,
    SnapshotStore,
    Store,
)
from service.store.encryption import (
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
from service.store.leasing import Fencing
from service.store.records import (
    AggregateHead,
    ClaimChange,
    CommandRecord,
    DocumentRange,
    DocumentWrite,
    HeldClaim,
    LogFilter,
    LogPage,
    NewEvent,
    ParkedEvent,
    RecordedEvent,
    Snapshot,
    StoredDocument,
)

log = logging.getLogger(__name__)
# Claims in the clear hidden per round trip, when the store is first used.
HIDE_BATCH = 500


def encrypted(store: Store, keyring: Keyring) -> Store:
    """``store`` with payloads sealed, claimed values hidden and documents
    sealed under ``keyring``'s keys."""
    hider = ClaimHider(store.claims, keyring)
    return store.replacing(
        events=SealedEvents(store.events, keyring, hider),
        log=SealedLog(store.log, keyring),
        claims=HiddenClaims(store.claims, hider),
        snapshots=SealedSnapshots(store.snapshots, keyring),
        projections=SealedProjections(store.projections, keyring),
    )


def _opened(cipher: AESGCM | None, event: RecordedEvent) -> RecordedEvent:
    if not is_sealed(event.payload):
        return event
    if cipher is None:
        return replace(event, payload=b"", redacted=True)
    context = event_context(event.aggregate_id, event.event_id)
    return replace(event, payload=open_sealed(cipher, event.payload, context))


class ClaimHider:
    """Claimed values as stored: keyed hashes under a key per scope. Before
    the first claim this process checks or takes, the claims taken in the
    clear (before encryption was on) are hidden, once per process: every
    server that checks claims has first seen none left in the clear (only a
    server without encryption writes them), so no value can be held both
    ways."""

    def __init__(self, claims: ClaimRegistry, keyring: Keyring) -> None:
        self._claims = claims
        self._keyring = keyring
        self._no_claims_in_clear = False
        self._hiding = asyncio.Lock()

    async def hidden(self, scope: str, value: str) -> str:
        await self._hide_claims_in_clear()
        cipher = await self._keyring.for_writing(claims_key_id(scope))
        return hidden_claim_value(cipher, scope, value)

    async def _hide_claims_in_clear(self) -> None:
        if self._no_claims_in_clear:
            return
        async with self._hiding:
            hidden = 0
            while not self._no_claims_in_clear:
                held = await self._claims.claims_in_clear(HIDE_BATCH)
                for claim in held:
                    cipher = await self._keyring.for_writing(claims_key_id(claim.scope))
                    hidden += await self._claims.hide_claim(claim, hidden_claim_value(cipher, claim.scope, claim.value))
                self._no_claims_in_clear = not held
            if hidden:
                log.info("%d uniqueness claims taken before encryption was on are now stored hidden", hidden)


class SealedEvents:
    """``EventRecorder``: payloads sealed under the aggregate's key, claimed
    values hidden; a forgotten aggregate's events read redacted and it takes
    no more events."""

    def __init__(self, inner: EventRecorder, keyring: Keyring, hider: ClaimHider) -> None:
        self.inner = inner
        self.keyring = keyring
        self._hider = hider

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
        hidden = [replace(c, value=await self._hider.hidden(c.scope, c.value)) for c in claims]
        try:
            recorded = await self.inner.append(aggregate_id, sealed, expected_version, commands=commands, claims=hidden)
        except NotUnique as lost:
            # The executor names the batch's claimant by the value it claimed.
            clear = {(h.scope, h.value): c.value for h, c in zip(hidden, claims, strict=True)}
            raise NotUnique(lost.scope, clear.get((lost.scope, lost.value or ""))) from None
        # Callers get back what they wrote, not the ciphertext.
        return [replace(r, payload=e.payload) for r, e in zip(recorded, events, strict=True)]

    async def find_command(self, command_id: str) -> CommandRecord | None:
        return await self.inner.find_command(command_id)

    async def head(self, aggregate_id: str) -> AggregateHead | None:
        return await self.inner.head(aggregate_id)

    async def read_aggregate(self, aggregate_id: str, query: AggregateQuery = AggregateQuery()) -> list[RecordedEvent]:
        events = await self.inner.read_aggregate(aggregate_id, query)
        if not any(is_sealed(e.payload) for e in events):
            return events
        cipher = await self.keyring.for_reading(aggregate_id)
        return [_opened(cipher, e) for e in events]

    async def version_at(self, aggregate_id: str, timestamp_us: int) -> int:
        return await self.inner.version_at(aggregate_id, timestamp_us)


class SealedLog:
    """``LogReader``: the global log with payloads opened (redacted once forgotten)."""

    def __init__(self, inner: LogReader, keyring: Keyring) -> None:
        self.inner = inner
        self.keyring = keyring

    async def read_log(
        self, after_position: int, log_filter: LogFilter, limit: int, *, max_bytes: int | None = None
    ) -> LogPage:
        page = await self.inner.read_log(after_position, log_filter, limit, max_bytes=max_bytes)
        sealed_for = {e.aggregate_id for e in page.events if is_sealed(e.payload)}
        if not sealed_for:
            return page
        # One key lookup per aggregate in the page, not per event.
        ciphers = {aggregate_id: await self.keyring.for_reading(aggregate_id) for aggregate_id in sealed_for}
        return replace(page, events=tuple(_opened(ciphers.get(e.aggregate_id), e) for e in page.events))

    async def log_head(self) -> int:
        return await self.inner.log_head()

    async def wait_for_commit(self, after_position: int, max_wait: float) -> None:
        await self.inner.wait_for_commit(after_position, max_wait)


class HiddenClaims:
    """``ClaimRegistry``: asked about a value, looks up its keyed hash."""

    def __init__(self, inner: ClaimRegistry, hider: ClaimHider) -> None:
        self.inner = inner
        self._hider = hider

    async def claim_owner(self, scope: str, value: str) -> str | None:
        return await self.inner.claim_owner(scope, await self._hider.hidden(scope, value))

    async def claims_in_clear(self, limit: int) -> list[HeldClaim]:
        return await self.inner.claims_in_clear(limit)

    async def hide_claim(self, claim: HeldClaim, hidden_value: str) -> bool:
        return await self.inner.hide_claim(claim, hidden_value)


class SealedSnapshots:
    """``SnapshotStore``: states sealed under the aggregate's key; none kept
    or returned for an aggregate without a usable key."""

    def __init__(self, inner: SnapshotStore, keyring: Keyring) -> None:
        self.inner = inner
        self.keyring = keyring

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


class SealedProjections:
    """``ProjectionStore``: documents are derived from payloads, so they are
    sealed too, under a key per projection, and their keys (often personal:
    an owner's name) stored as keyed hashes. Forgetting an aggregate does
    not reach into read models: a projection that must forget handles it."""

    def __init__(self, inner: ProjectionStore, keyring: Keyring) -> None:
        self.inner = inner
        self.keyring = keyring

    async def projection_position(self, name: str) -> int:
        return await self.inner.projection_position(name)

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
        self,
        name: str,
        *,
        expected_position: int,
        new_position: int,
        writes: Sequence[DocumentWrite],
        fencing: Fencing | None = None,
        parked: Sequence[ParkedEvent] = (),
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
            name,
            expected_position=expected_position,
            new_position=new_position,
            writes=sealed,
            fencing=fencing,
            parked=parked,
        )

    async def list_documents(self, projection: str, listing: DocumentRange) -> list[StoredDocument]:
        raise NotAvailableHere(
            f"projection {projection}'s document keys are stored as keyed hashes (encryption at rest):"
            " they cannot be listed by prefix or in order",
            reason="DOCUMENT_KEYS_HIDDEN",
            metadata={"projection": projection},
        )

    async def reset_projection(self, name: str) -> None:
        await self.inner.reset_projection(name)

    async def parked_events(
        self, projection: str, *, after: tuple[int, str] | None = None, limit: int = 100
    ) -> list[ParkedEvent]:
        # What a parked event records is ids, a type and an error message:
        # nothing of the payload, so nothing is sealed.
        return await self.inner.parked_events(projection, after=after, limit=limit)

    async def count_parked_events(self, projection: str) -> int:
        return await self.inner.count_parked_events(projection)
