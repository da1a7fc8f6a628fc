"""Encryption at rest: the roles of a store that carry payloads or claimed
values, wrapped so that they seal on the way in and open on the way out.

``encrypted(store, keyring)`` returns the store with its events, log,
claims, snapshots, projections and audit roles wrapped; the others (data
keys, lifecycle) are the adapter's own. Wraps any adapter: event payloads,
snapshot states and read-model documents are encrypted on the way in and
decrypted on the way out (``service.store.encryption``), so the database
holds ciphertext while every caller above sees plaintext. The envelope
(ids, types, versions, metadata, user, origin) stays in the clear: the store
needs it to order, filter and check.

Command records keep what would let someone with the database confirm a
guess of a command's content sealed under the aggregate's key too: the
fingerprint that tells a retry from a reused id (a plain hash of the
aggregate, type and payload: a guess list or a loop over amounts finds the
payload in seconds) and a refusal's message and metadata ("the balance is
1234"). Forgetting the aggregate erases both with its key.

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
import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import replace

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.errors import (
    AggregateForgotten,
    DocumentInTwoForms,
    NotAvailableHere,
    NotEncrypted,
    NotUnique,
    TenantShredded,
)
from service.store.base import (
    AggregateQuery,
    AuditQuery,
    AuditRecorder,
    ClaimRegistry,
    EventRecorder,
    LogReader,
    ProjectionStore,
    SnapshotKind,
    SnapshotStore,
    Store,
)
from service.store.claim_scope_names import declared_scope, scope_tenant
from service.store.document_ciphers import DocumentCiphers, Place, document_tenant
from service.store.encryption import (
    Keyring,
    claims_key_id,
    document_context,
    event_context,
    fingerprint_context,
    hidden_claim_value,
    is_sealed,
    is_sealed_fingerprint,
    is_sealed_text,
    open_sealed,
    open_text,
    projection_key_id,
    refusal_context,
    seal,
    seal_text,
    snapshot_context,
)
from service.store.features import ClusterFeatures
from service.store.leasing import Fencing
from service.store.records import (
    HIDDEN_CLAIM_MARK,
    AggregateHead,
    AggregateSummary,
    AuditEntry,
    ClaimChange,
    CommandRecord,
    DocumentRange,
    DocumentWrite,
    Forgetting,
    HeldClaim,
    LogFilter,
    LogPage,
    NewEvent,
    ParkedEvent,
    RecordedEvent,
    Rejection,
    Snapshot,
    StoredDocument,
    is_tombstone,
)

log = logging.getLogger(__name__)
# Claims in the clear hidden per round trip, when the store is first used.
HIDE_BATCH = 500


def encrypted(
    store: Store,
    keyring: Keyring,
    *,
    tenant_keyed: frozenset[str] = frozenset(),
    features: ClusterFeatures | None = None,
) -> Store:
    """``store`` with payloads sealed, claimed values hidden and documents
    sealed under ``keyring``'s keys; those of the read models named in
    ``tenant_keyed`` under a key per tenant (``document_ciphers``) once
    ``features`` says every live server reads them (None: from the start)."""
    hider = ClaimHider(store.claims, keyring)
    return store.replacing(
        events=SealedEvents(store.events, keyring, hider),
        log=SealedLog(store.log, keyring),
        claims=HiddenClaims(store.claims, hider),
        snapshots=SealedSnapshots(store.snapshots, keyring),
        projections=SealedProjections(store.projections, keyring, tenant_keyed, features),
        audit=OpenedAudit(store.audit, keyring),
    )


# Events read per round trip when a forget looks for payloads in the clear.
CLEAR_CHECK_PAGE = 1000


async def in_the_clear(stored: Store, aggregate_id: str) -> tuple[int, int]:
    """How many of the aggregate's events and snapshots ``stored`` (the
    adapter's own roles, below encryption) holds in the clear: written
    before encryption was turned on, or imported so. Its tombstone (a
    deletion's: the server's own record, none of the aggregate's payload)
    and empty payloads (nothing to read) do not count."""
    events = 0
    after = 0
    while True:
        query = AggregateQuery(from_version=after + 1, limit=CLEAR_CHECK_PAGE)
        page = await stored.events.read_aggregate(aggregate_id, query)
        events += sum(1 for e in page if e.payload and not is_sealed(e.payload) and not is_tombstone(e))
        if len(page) < CLEAR_CHECK_PAGE:
            break
        after = page[-1].version
    snapshots = 0
    cursor = (aggregate_id, 0)
    while True:
        kept = await stored.transfer.snapshots_page(cursor, CLEAR_CHECK_PAGE, aggregate_id=aggregate_id)
        snapshots += sum(1 for s in kept if not is_sealed(s.state))
        if len(kept) < CLEAR_CHECK_PAGE:
            return events, snapshots
        cursor = (aggregate_id, kept[-1].version)


async def forget_aggregate(
    stored: Store, keyring: Keyring, aggregate_id: str, *, audit: AuditEntry | None = None
) -> Forgetting:
    """Forget the aggregate (``Keyring.forget``: its key erased, and with it
    everything it sealed; its snapshots, the documents derived from it, what
    was parked of it and the texts of its command records erased), or refuse
    with ``NotEncrypted`` and change nothing when any of its events is stored
    in the clear: erasing the key would leave those readable, through every
    read and in the database, while saying the aggregate was forgotten.
    Deleting the aggregate (its events go, a tombstone stays) clears the way.
    Its ``erased`` is False if it had no key to erase (forgotten before, or
    never had one); its ``documents`` count what went with it. ``audit``:
    the forget's audit entry, recorded in its transaction when it erases
    the key (a crash leaves the aggregate forgotten with its entry, or
    neither)."""
    events, snapshots = await in_the_clear(stored, aggregate_id)
    if events:
        in_clear = f"{events} of its events" + (f" and {snapshots} of its snapshots" if snapshots else "")
        raise NotEncrypted(
            f"aggregate {aggregate_id!r} was not forgotten, and nothing changed: {in_clear}"
            f" {'is' if events + snapshots == 1 else 'are'} stored in the clear (written before encryption at rest"
            " was on, or imported so), which erasing its key cannot make unreadable. Delete it first"
            f" (chronicle delete {aggregate_id}, AdminService.DeleteAggregate: its events, snapshots and claims go,"
            " a tombstone stays), then forget it",
            metadata={
                "aggregate_id": aggregate_id,
                "events_in_clear": str(events),
                "snapshots_in_clear": str(snapshots),
            },
        )
    if audit is None:
        return await keyring.forget_and_count(aggregate_id)
    (forgetting,) = await keyring.forget_all_and_count([aggregate_id], audit=audit)
    return forgetting


def sealed_record(cipher: AESGCM, record: CommandRecord) -> CommandRecord:
    """``record`` as stored: its fingerprint and its refusal's message and
    metadata (which may quote the state: "the balance is 1234") sealed under
    the aggregate's key, so that the database alone cannot confirm a guess
    of the command's content, and forgetting the aggregate erases both. The
    refusal's kind and reason stay readable (the audit log shows them). Its
    field violations are sealed with the message (a description may quote the
    command: "must be at most 1234")."""
    rejection = record.rejection
    if rejection is not None:
        detail: dict[str, object] = {"message": rejection.message, "metadata": dict(rejection.metadata)}
        if rejection.violations:
            detail["violations"] = [list(v) for v in rejection.violations]
        context = refusal_context(record.aggregate_id, record.command_id)
        sealed_detail = seal_text(cipher, json.dumps(detail, separators=(",", ":")), context)
        rejection = Rejection(rejection.kind, rejection.reason, sealed_detail)
    return replace(
        record,
        fingerprint=seal(cipher, record.fingerprint, fingerprint_context(record.aggregate_id, record.command_id)),
        rejection=rejection,
    )


def is_sealed_record(record: CommandRecord) -> bool:
    return is_sealed_fingerprint(record.fingerprint) or (
        record.rejection is not None and is_sealed_text(record.rejection.message)
    )


def opened_record(cipher: AESGCM, record: CommandRecord) -> CommandRecord:
    fingerprint = record.fingerprint
    if is_sealed_fingerprint(fingerprint):
        fingerprint = open_sealed(cipher, fingerprint, fingerprint_context(record.aggregate_id, record.command_id))
    rejection = record.rejection
    if rejection is not None and is_sealed_text(rejection.message):
        rejection = _opened_rejection(cipher, record.aggregate_id, record.command_id, rejection)
    return replace(record, fingerprint=fingerprint, rejection=rejection)


def _opened_rejection(cipher: AESGCM, aggregate_id: str, command_id: str, rejection: Rejection) -> Rejection:
    detail = json.loads(open_text(cipher, rejection.message, refusal_context(aggregate_id, command_id)))
    metadata = {str(k): str(v) for k, v in dict(detail.get("metadata") or {}).items()}
    violations = tuple((str(f), str(d)) for f, d in detail.get("violations") or ())
    return Rejection(rejection.kind, rejection.reason, str(detail.get("message", "")), metadata, violations)


def opened_event(cipher: AESGCM | None, event: RecordedEvent) -> RecordedEvent:
    """``event`` with its payload opened under ``cipher`` (its aggregate's;
    None: forgotten, and the event reads redacted)."""
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
        return hidden_claim_value(await self._cipher(scope), scope, value)

    async def _cipher(self, scope: str) -> AESGCM:
        """The key of ``scope`` as stored. A per-tenant scope's is of (scope,
        tenant), wrapped by the tenant's master key (service.claim_scopes):
        a shredded tenant's claims answer as its aggregates do
        (TENANT_SHREDDED); one whose key an old master key of the tenant,
        destroyed since, wrapped is made again, as a read model's documents
        of the tenant are (the values hashed under the old one are tested
        no more: their aggregates were shredded with it)."""
        tenant = scope_tenant(scope)
        if not tenant:
            return await self._keyring.for_writing(claims_key_id(scope))
        if self._keyring.tenant_shredded(tenant):
            raise TenantShredded("", tenant, claims_scope=declared_scope(scope))
        return await self._keyring.renew_shredded(claims_key_id(scope))

    async def _hide_claims_in_clear(self) -> None:
        if self._no_claims_in_clear:
            return
        async with self._hiding:
            hidden = 0
            while not self._no_claims_in_clear:
                held = await self._claims.claims_in_clear(HIDE_BATCH)
                for claim in held:
                    hidden += await self._claims.hide_claim(claim, await self._hidden_in_place_of(claim))
                self._no_claims_in_clear = not held
            if hidden:
                log.info("%d uniqueness claims taken before encryption was on are now stored hidden", hidden)

    async def _hidden_in_place_of(self, claim: HeldClaim) -> str:
        tenant = scope_tenant(claim.scope)
        if tenant and self._keyring.tenant_shredded(tenant):
            # Taken in the clear by a tenant shredded since: no key will hash
            # it, and left in the clear it would stop every claim from being
            # hidden (and so checked). Stored as a value nothing hashes to:
            # untestable, still its holder's until forgotten or deleted.
            return HIDDEN_CLAIM_MARK + secrets.token_hex(32)
        return hidden_claim_value(await self._cipher(claim.scope), claim.scope, claim.value)


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
        if events or commands or any(not c.release for c in claims):
            # Also for command records alone (a refusal): their fingerprints
            # and refusal texts are sealed too. Also for claims alone: a
            # forgotten aggregate takes no claims (AggregateForgotten), and one
            # that holds some has a key, so forgetting it can release them.
            cipher = await self.keyring.for_writing(aggregate_id)
            sealed = [
                replace(e, payload=seal(cipher, e.payload, event_context(aggregate_id, e.event_id))) for e in events
            ]
            commands = [sealed_record(cipher, c) for c in commands]
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
        record = await self.inner.find_command(command_id)
        if record is None or not is_sealed_record(record):
            return record
        cipher = await self.keyring.for_reading(record.aggregate_id)
        if cipher is None:
            # Sealed, so the aggregate had a key: it was forgotten, and what
            # the command was and how it ended can no longer be told.
            raise AggregateForgotten(record.aggregate_id)
        return opened_record(cipher, record)

    async def head(self, aggregate_id: str) -> AggregateHead | None:
        return await self.inner.head(aggregate_id)

    async def read_aggregate(self, aggregate_id: str, query: AggregateQuery = AggregateQuery()) -> list[RecordedEvent]:
        events = await self.inner.read_aggregate(aggregate_id, query)
        if not any(is_sealed(e.payload) for e in events):
            return events
        cipher = await self.keyring.for_reading(aggregate_id)
        return [opened_event(cipher, e) for e in events]

    async def version_at(self, aggregate_id: str, timestamp_us: int) -> int:
        return await self.inner.version_at(aggregate_id, timestamp_us)

    async def list_aggregates(
        self, prefix: str, *, after: str = "", limit: int, aggregate_type: str | None = None
    ) -> list[AggregateSummary]:
        # Ids and types are not sealed.
        return await self.inner.list_aggregates(prefix, after=after, limit=limit, aggregate_type=aggregate_type)


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
        return replace(page, events=tuple(opened_event(ciphers.get(e.aggregate_id), e) for e in page.events))

    async def log_head(self) -> int:
        return await self.inner.log_head()

    async def stored_event_kinds(self) -> list[tuple[str, str, int]]:
        return await self.inner.stored_event_kinds()  # types and versions are stored in the clear

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

    async def load_snapshot(
        self, aggregate_id: str, *, at_most: int | None = None, kind: SnapshotKind | None = None
    ) -> Snapshot | None:
        snapshot = await self.inner.load_snapshot(aggregate_id, at_most=at_most, kind=kind)
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
    an owner's name) stored as keyed hashes. A document's subjects (the
    aggregates it is derived from) are stored as they are, like aggregate
    ids everywhere: forgetting one deletes the document. A ``tenant_keyed``
    read model's documents are sealed per tenant (``document_ciphers``)."""

    def __init__(
        self,
        inner: ProjectionStore,
        keyring: Keyring,
        tenant_keyed: frozenset[str] = frozenset(),
        features: ClusterFeatures | None = None,
    ) -> None:
        self.inner = inner
        self.keyring = keyring
        self.ciphers = DocumentCiphers(keyring, tenant_keyed, features=features)

    async def projection_position(self, name: str) -> int:
        return await self.inner.projection_position(name)

    async def start_projection(self, name: str, position: int) -> int | None:
        return await self.inner.start_projection(name, position)

    async def projection_version(self, name: str) -> int | None:
        return await self.inner.projection_version(name)

    async def start_projection_version(self, name: str, version: int) -> int:
        return await self.inner.start_projection_version(name, version)

    async def load_document(self, projection: str, key: str) -> StoredDocument | None:
        places = (await self.ciphers.for_reading(projection, [key]))[key]
        if len(places) != 1:  # none (no key made: no document), or a tenant's and the read model's own
            found = await self._load_from(projection, {key: places})
            return found[0] if found else None
        place = places[0]
        stored = await self.inner.load_document(projection, place.hidden)
        if stored is None:
            return None
        return StoredDocument(key, stored.type_name, _opened_document(place, projection, key, stored.data))

    async def load_documents(self, projection: str, keys: Sequence[str]) -> list[StoredDocument]:
        return await self._load_from(projection, await self.ciphers.for_reading(projection, list(keys)))

    async def _load_from(self, projection: str, places: dict[str, list[Place]]) -> list[StoredDocument]:
        """The documents at ``places``, each key's first place that holds
        one (a tenant's before the read model's own: document_ciphers),
        looked up in one read. DocumentInTwoForms for a key found in both:
        a server that does not read the tenant's place wrote the other after
        it (this version moves a document, never copies it)."""
        wanted = [place.hidden for found in places.values() for place in found]
        if not wanted:
            return []
        stored = {s.key: s for s in await self.inner.load_documents(projection, wanted)}
        found = []
        for key, candidates in places.items():
            hits = [(place, stored[place.hidden]) for place in candidates if place.hidden in stored]
            if len(hits) > 1:
                raise DocumentInTwoForms(projection, document_tenant(key))
            for place, hit in hits:
                found.append(StoredDocument(key, hit.type_name, _opened_document(place, projection, key, hit.data)))
        return found

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
        writer = await self.ciphers.writer(name)
        sealed = []
        for w in writes:
            place, older = await writer.place(w.key, due=w.due_us is not None)
            # A document with a due time is read back by ``due_documents``,
            # which knows only its stored key: it is sealed under that (the
            # keyed hash of its key, as bound to its row as the key is).
            context = document_context(name, w.key if w.due_us is None else place.hidden)
            data = None if w.data is None else seal(place.cipher, w.data, context)
            sealed.append(DocumentWrite(place.hidden, w.type_name, data, w.subjects, w.due_us))
            if older is not None:  # moved off the read model's own key, if it was there
                sealed.append(DocumentWrite(older))
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

    async def count_documents(self, projection: str, prefix: str, *, limit: int) -> int:
        if prefix:
            raise NotAvailableHere(
                f"projection {projection}'s document keys are stored as keyed hashes (encryption at rest):"
                " documents cannot be counted by key prefix, only all of them",
                reason="DOCUMENT_KEYS_HIDDEN",
                metadata={"projection": projection},
            )
        return await self.inner.count_documents(projection, "", limit=limit)  # every key is the projection's

    async def reset_projection(self, name: str, version: int | None = None) -> None:
        await self.inner.reset_projection(name, version)

    async def stored_projections(self) -> list[tuple[str, int]]:
        return await self.inner.stored_projections()  # names are stored in the clear

    async def delete_projection(self, name: str, *, limit: int) -> int:
        return await self.inner.delete_projection(name, limit=limit)

    async def parked_events(
        self, projection: str, *, after: tuple[int, str] | None = None, limit: int = 100
    ) -> list[ParkedEvent]:
        # What a parked event records is ids, a type and an error message,
        # not sealed; the message may quote the payload, so forgetting the
        # aggregate deletes its parked events.
        return await self.inner.parked_events(projection, after=after, limit=limit)

    async def count_parked_events(self, projection: str) -> int:
        return await self.inner.count_parked_events(projection)

    async def count_parked_commands(self, reaction: str) -> int:
        # Type names are stored in the clear (only keys are hidden and data sealed).
        return await self.inner.count_parked_commands(reaction)

    async def due_documents(self, projection: str, *, until_us: int, limit: int) -> list[StoredDocument]:
        # Keys are hidden: each comes back under its stored key (what a
        # deadline's document is about is in its sealed data), opened under
        # the context it was sealed with (``commit_projection``).
        cipher = await self.keyring.for_writing(projection_key_id(projection))
        found = []
        for stored in await self.inner.due_documents(projection, until_us=until_us, limit=limit):
            data = stored.data
            if is_sealed(data):
                data = open_sealed(cipher, data, document_context(projection, stored.key))
            found.append(StoredDocument(stored.key, stored.type_name, data))
        return found

    async def due_summary(self, projection: str) -> tuple[int, int | None]:
        return await self.inner.due_summary(projection)  # due times are stored in the clear


def _opened_document(place: Place, projection: str, key: str, data: bytes) -> bytes:
    """A document's data as written (one in the clear, from before encryption, as it is)."""
    return open_sealed(place.cipher, data, document_context(projection, key)) if is_sealed(data) else data


class OpenedAudit:
    """``AuditRecorder``: refusal messages sealed under their aggregate's key.
    Command records carry theirs sealed (``sealed_record``); an entry of the
    audit's own table (a dry run's refusal may quote the state, a plugin
    middleware's refusal anything) is sealed here when its aggregate has a
    key, and left as it is otherwise (an aggregate without a key has nothing
    to forget). An entry of an aggregate forgotten before it came (a command
    or a dry run sent to it since) is recorded without its message: there is
    no key left to seal it under, and what it quotes is the forgotten
    subject's (the reason stays, as the forget leaves older entries). Read
    back, entries are opened again; a forgotten aggregate's read empty."""

    def __init__(self, inner: AuditRecorder, keyring: Keyring) -> None:
        self.inner = inner
        self.keyring = keyring

    async def record_audit_entry(self, entry: AuditEntry) -> None:
        if entry.message and entry.aggregate_id:
            cipher, forgotten = await self.keyring.cipher_or_forgotten(entry.aggregate_id)
            if cipher is not None:
                detail = json.dumps({"message": entry.message}, separators=(",", ":"))
                context = refusal_context(entry.aggregate_id, entry.command_id)
                entry = replace(entry, message=seal_text(cipher, detail, context))
            elif forgotten:
                entry = replace(entry, message="")
        await self.inner.record_audit_entry(entry)

    async def read_audit(self, query: AuditQuery) -> list[AuditEntry]:
        entries = await self.inner.read_audit(query)
        sealed_for = {e.aggregate_id for e in entries if is_sealed_text(e.message)}
        if not sealed_for:
            return entries
        ciphers = {aggregate_id: await self.keyring.for_reading(aggregate_id) for aggregate_id in sealed_for}
        return [self._opened(ciphers, e) if is_sealed_text(e.message) else e for e in entries]

    @staticmethod
    def _opened(ciphers: dict[str, AESGCM | None], entry: AuditEntry) -> AuditEntry:
        cipher = ciphers.get(entry.aggregate_id)
        if cipher is None:
            return replace(entry, message="")
        opened = _opened_rejection(
            cipher, entry.aggregate_id, entry.command_id, Rejection("", entry.reason, entry.message)
        )
        return replace(entry, message=opened.message)
