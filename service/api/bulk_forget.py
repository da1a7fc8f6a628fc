"""Forgetting many aggregates at once (``AdminService.ForgetAggregates``):
a tenant's, by id prefix, or a list of ids. What one ForgetAggregate does
to an aggregate, done to a batch of them in one store transaction, which
is what makes it faster than one call per aggregate (on SQLite one WAL
checkpoint per batch, on PostgreSQL one round trip and one commit).

A confirmation guards it: the caller says how many aggregates it expects
to forget, and nothing is done unless that many match when the call
begins; no more than that many are forgotten (a tenant still writing adds
aggregates meanwhile: those remain, counted). Each batch commits on its
own, with its audit entry in its transaction (a batch is forgotten with
its entry or not at all), so a call cut short leaves what its batches did
forgotten and audited, and a call again (confirming what remains)
finishes the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from chronicle.v1 import admin_service_pb2 as pb
from service.api import forgotten
from service.api.codec import check_stored_id
from service.errors import InvalidInput, NotConfirmed
from service.store.base import Store
from service.store.encrypted import in_the_clear
from service.store.encryption import Keyring
from service.store.records import MAX_OTHER_SUBJECTS, AuditEntry, Forgetting, OtherSubjects

MAX_IDS = 1000
DEFAULT_BATCH = 100
MAX_BATCH = 1000
# Ids named in an answer (the not-encrypted ones): the first, by id.
MAX_NAMED = 20
# Aggregates looked at per page when counting those without a key.
LISTING_PAGE = 1000
# Aggregates whose payloads are checked for any in the clear at once.
CLEAR_CHECKS_IN_FLIGHT = 8


# Told each batch once it committed: the ids it forgot (or found forgotten), and what went of each.
BatchHook = Callable[[list[str], list[Forgetting]], Awaitable[None]]
# The audit entry of a batch about to forget these ids (their keys live
# when the batch began), recorded in the batch's transaction if it erases any.
BatchEntry = Callable[[list[str]], AuditEntry]


@dataclass(frozen=True, slots=True)
class Selection:
    """What a ForgetAggregates call names: a prefix, or ids (each once)."""

    prefix: str = ""
    ids: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"prefix {self.prefix!r}" if self.prefix else f"{len(self.ids)} ids"


def selection_of(request: pb.ForgetAggregatesRequest) -> Selection:
    """The request's prefix or ids, checked (INVALID_ARGUMENT otherwise)."""
    if bool(request.prefix) == bool(request.aggregate_ids):
        raise InvalidInput.for_field(
            "prefix",
            "give a prefix or aggregate ids (one of the two)",
            reason="INVALID_SELECTION",
        )
    if request.aggregate_ids:
        if len(request.aggregate_ids) > MAX_IDS:
            raise InvalidInput.for_field(
                "aggregate_ids", f"at most {MAX_IDS} ids (or a prefix)", reason="TOO_MANY_AGGREGATES"
            )
        ids = [
            check_stored_id(f"aggregate_ids[{index}]", aggregate_id, reason="INVALID_AGGREGATE_ID")
            for index, aggregate_id in enumerate(request.aggregate_ids)
        ]
        return Selection(ids=tuple(dict.fromkeys(ids)))
    prefix = check_stored_id("prefix", request.prefix, reason="INVALID_AGGREGATE_ID")
    if prefix[-1].isalnum():
        raise InvalidInput.for_field(
            "prefix",
            f"must end with a separator: {prefix!r} matches {prefix + '2:'!r}… and {prefix + 'x'!r}… too;"
            f" end it with the character that ends a tenant's part of an id ({prefix + ':'!r})",
            reason="PREFIX_NOT_SEPARATED",
        )
    return Selection(prefix=prefix)


def batch_size_of(request: pb.ForgetAggregatesRequest) -> int:
    if request.batch_size > MAX_BATCH:
        raise InvalidInput.for_field("batch_size", f"must be at most {MAX_BATCH}", reason="BATCH_TOO_LARGE")
    return request.batch_size or DEFAULT_BATCH


@dataclass
class BulkForgetting:
    """What the batches did so far, summed."""

    forgotten: int = 0
    not_encrypted: list[str] = field(default_factory=list)
    documents: dict[tuple[str, str], int] = field(default_factory=dict)
    other_subjects: dict[str, set[str]] = field(default_factory=dict)
    other_totals: dict[str, int] = field(default_factory=dict)

    def add(self, forgetting: Forgetting) -> None:
        self.forgotten += 1 if forgetting.erased else 0
        for counted, count in forgetting.documents.items():
            self.documents[counted] = self.documents.get(counted, 0) + count
        for name, others in forgetting.other_subjects.items():
            self.other_subjects.setdefault(name, set()).update(others.shown)
            self.other_totals[name] = self.other_totals.get(name, 0) + others.total

    def as_forgetting(self) -> Forgetting:
        """The sum as one ``Forgetting`` (for ``forgotten.deleted_documents``)."""
        others = {
            name: OtherSubjects(tuple(sorted(shown)[:MAX_OTHER_SUBJECTS]), max(self.other_totals[name], len(shown)))
            for name, shown in self.other_subjects.items()
        }
        return Forgetting(self.forgotten > 0, self.documents, others)


class BulkForget:
    """One ForgetAggregates call over the store's own roles (below
    encryption, where payloads in the clear show) and the keyring."""

    def __init__(
        self,
        stored: Store,
        keys: Keyring,
        *,
        evict: Callable[[str], None],
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        """``owns``: which of a list's ids the caller may forget (a tenant's
        administrator: its tenant's); the others are taken as ids with no
        live key, as one that does not exist is. None: every id."""
        self._stored = stored
        self._keys = keys
        self._evict = evict
        self._owns = owns

    async def matching(self, selection: Selection) -> int:
        """How many aggregates the selection matches now: a live key each."""
        if selection.prefix:
            return await self._stored.keys.count_live_keys(selection.prefix)
        return len(await self._live_among(selection.ids))

    def check_confirmed(self, confirm: int | None, matching: int, selection: Selection) -> None:
        if confirm is None:
            raise NotConfirmed(
                f"{matching} aggregates match ({selection.describe()}): nothing was forgotten; to forget them,"
                f" send the call again with confirm = {matching}",
                reason="CONFIRMATION_REQUIRED",
                metadata={"matching": str(matching)},
            )
        if confirm != matching:
            raise NotConfirmed(
                f"{matching} aggregates match ({selection.describe()}), not {confirm}: nothing was forgotten;"
                f" look at them (ListAggregates) and confirm {matching} to forget them",
                reason="CONFIRMATION_MISMATCH",
                metadata={"matching": str(matching), "confirm": str(confirm)},
            )

    async def run(
        self,
        selection: Selection,
        *,
        limit: int,
        batch_size: int,
        entry_of: BatchEntry | None = None,
        after_batch: BatchHook | None = None,
    ) -> BulkForgetting:
        """Forget up to ``limit`` matching aggregates, ``batch_size`` per
        transaction, each with the audit entry ``entry_of`` makes of it;
        ``after_batch`` is told each batch once committed."""
        done = BulkForgetting()
        handled = 0
        after = ""
        pending = list(await self._live_among(selection.ids)) if selection.ids else []
        while handled < limit:
            size = min(batch_size, limit - handled)
            if selection.prefix:
                batch = await self._stored.keys.live_keys(selection.prefix, after=after, limit=size)
            else:
                batch, pending = pending[:size], pending[size:]
            if not batch:
                break
            after = batch[-1]
            handled += len(batch)
            in_clear = await self._events_in_clear(batch)
            sealed = [aggregate_id for aggregate_id, events in zip(batch, in_clear, strict=True) if not events]
            done.not_encrypted += [aggregate_id for aggregate_id, events in zip(batch, in_clear, strict=True) if events]
            entry = entry_of(sealed) if entry_of is not None and sealed else None
            forgettings = await self._keys.forget_all_and_count(sealed, audit=entry)
            for aggregate_id, forgetting in zip(sealed, forgettings, strict=True):
                done.add(forgetting)
                if forgetting.erased:
                    self._evict(aggregate_id)
            if after_batch is not None:
                await after_batch(sealed, forgettings)
        return done

    async def _events_in_clear(self, batch: Sequence[str]) -> list[int]:
        """Of each aggregate, how many events are in the clear: looked at
        CLEAR_CHECKS_IN_FLIGHT at a time (two reads each: on PostgreSQL,
        one at a time, they were most of a batch's time)."""
        gate = asyncio.Semaphore(CLEAR_CHECKS_IN_FLIGHT)

        async def events_of(aggregate_id: str) -> int:
            async with gate:
                events, _ = await in_the_clear(self._stored, aggregate_id)
                return events

        return list(await asyncio.gather(*(events_of(aggregate_id) for aggregate_id in batch)))

    async def without_key(self, prefix: str) -> int:
        """Aggregates under ``prefix`` with events and no key ever (written
        in the clear), not deleted: what no forget can shred."""
        count = 0
        after = ""
        while True:
            page = await self._stored.events.list_aggregates(prefix, after=after, limit=LISTING_PAGE)
            count += sum(1 for a in page if not a.keyed and not a.deleted)
            if len(page) < LISTING_PAGE:
                return count
            after = page[-1].aggregate_id

    async def _live_among(self, ids: Sequence[str]) -> list[str]:
        live = []
        for aggregate_id in ids:
            if self._owns is not None and not self._owns(aggregate_id):
                continue
            key = await self._stored.keys.load_data_key(aggregate_id)
            if key is not None and not key.forgotten:
                live.append(aggregate_id)
        return live


def counted(aggregates: int) -> str:
    return f"{aggregates} aggregate{'' if aggregates == 1 else 's'}"


def summed(forgettings: Sequence[Forgetting]) -> Forgetting:
    """``forgettings`` as one, their documents and other subjects summed."""
    total = BulkForgetting()
    for forgetting in forgettings:
        total.add(forgetting)
    return total.as_forgetting()


def answer(
    done: BulkForgetting, *, remaining: int, without_key: int, tenant: str | None = None
) -> pb.ForgetAggregatesResponse:
    """``tenant``: the answer is for that tenant's administrator (other
    tenants' ids among the other subjects counted, not named)."""
    return pb.ForgetAggregatesResponse(
        forgotten=done.forgotten,
        remaining=remaining,
        deleted_documents=forgotten.deleted_documents(done.as_forgetting(), tenant=tenant),
        not_encrypted=len(done.not_encrypted),
        not_encrypted_ids=sorted(done.not_encrypted)[:MAX_NAMED],
        without_key=without_key,
    )
