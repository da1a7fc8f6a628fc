"""The claims of the aggregates an import touched, as their state declares them.

A claim is taken by a handler (``context.claim``) in the transaction that
appends its events; an import writes events no handler ran for, so their
claims come as claim records of the stream (an export of a Chronicle store
carries every claim), or not at all (an export written by hand from
another store, a conversion whose mapping gave none). Without them an
imported user's address would be free for anyone to register; and an
incremental import (the legacy application still running between two
imports) brings events that change what an aggregate holds (a user's new
address), which no claim record of an earlier import knew.

A plugin that declares how its aggregates' claims follow from their state
(``AggregateType.claims``) lets the import settle them: for each
aggregate of such a type that the stream brought events for (written now
or by an earlier run), once the stream has ended (so every event of it is
written), its state is loaded from the target, as its next command would
see it, and its claims are made what the state declares: the values it
holds and no longer declares released, the values it declares taken
(CLAIM_HELD if another aggregate holds one), in one transaction
(``Importer._settle_claims``), after the events committed: an import
stopped between the two (the store gone, the process killed) is settled
by running it again, as each run settles every aggregate the stream
brought, its events written by it or before. The target's state, not
the stream's: it is what the handlers will decide on from now on. The declaration must agree
with the handlers (plugins.md), so for an aggregate that came with claim
records it says what they say.

One whose last event in the stream is a deletion's tombstone holds
nothing. An aggregate of a declaring type whose claims cannot be derived
(no way to load state was given, or its state cannot be rebuilt) keeps
what it holds (its claim records, if the stream had any); one that came
without claim records is counted, for the summary's warning. An aggregate
of a type that declares nothing keeps its claim records, and nothing is
released for it: only a declaration says a value is no longer held.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from service.claim_scopes import stored_scope
from service.errors import ChronicleError, InvalidInput
from service.plugins.api import AggregateType
from service.plugins.context import MAX_SCOPE_BYTES, MAX_VALUE_BYTES
from service.plugins.registry import Registry
from service.store.records import HeldClaim, RecordedEvent, is_tombstone

log = logging.getLogger(__name__)

# The state of an aggregate in the target: (aggregate id, its type) -> state.
LoadState = Callable[[str, AggregateType[Any]], Awaitable[Message]]


@dataclass(frozen=True, slots=True)
class Declared:
    """An aggregate's claims as its state declares them, and the version its
    state was loaded at (or after: the head seen before loading it)."""

    aggregate_id: str
    claims: list[HeldClaim]
    version: int


@dataclass(frozen=True, slots=True)
class Derived:
    declared: list[Declared]
    # Aggregates of a declaring type that came without claim records and
    # whose claims could not be derived.
    not_derived: int


# The head version of an aggregate in the target (0: no events).
HeadVersion = Callable[[str], Awaitable[int]]


class ClaimsToDerive:
    """Follows a stream's records (``saw``), then derives the claims of
    the aggregates it touched of a type that declares them (``claims``)."""

    def __init__(self, registry: Registry | None, load_state: LoadState | None) -> None:
        self._registry = registry
        self._load_state = load_state
        # Aggregate id -> its type, for aggregates of a type that declares its claims.
        self._declaring: dict[str, AggregateType[Any]] = {}
        self._with_claim_records: set[str] = set()

    def saw(self, stored: object) -> None:
        """Note a record of the stream."""
        if isinstance(stored, HeldClaim):
            self._with_claim_records.add(stored.aggregate_id)
        elif isinstance(stored, RecordedEvent) and self._registry is not None:
            if is_tombstone(stored):
                self._declaring.pop(stored.aggregate_id, None)
                return
            aggregate_type = self._registry.aggregate(stored.aggregate_type)
            if aggregate_type is not None and aggregate_type.held_claims is not None:
                self._declaring[stored.aggregate_id] = aggregate_type

    def declaring(self, aggregate_id: str) -> bool:
        """Whether the stream brought events of ``aggregate_id``, of a type
        that declares its claims, its last one seen not a tombstone."""
        return aggregate_id in self._declaring

    async def claims(self, head_version: HeadVersion, only: Collection[str] | None = None) -> Derived:
        """The declared claims of the aggregates seen (``only`` those, when
        given), each with the version its state was loaded at."""
        declared: list[Declared] = []
        not_derived = 0
        for aggregate_id, aggregate_type in self._declaring.items():
            if only is not None and aggregate_id not in only:
                continue
            if self._load_state is None:
                not_derived += aggregate_id not in self._with_claim_records
                continue
            version = await head_version(aggregate_id)
            try:
                state = await self._load_state(aggregate_id, aggregate_type)
            except ChronicleError as error:
                log.warning("the claims of imported aggregate %r cannot be derived: %s", aggregate_id, error)
                not_derived += aggregate_id not in self._with_claim_records
                continue
            assert self._registry is not None  # only aggregates of its types are declaring
            per_tenant = self._registry.per_tenant_claim_scopes
            declared.append(Declared(aggregate_id, _held(aggregate_id, aggregate_type, state, per_tenant), version))
        return Derived(declared, not_derived)


def _held(
    aggregate_id: str, aggregate_type: AggregateType[Any], state: Message, per_tenant: frozenset[str]
) -> list[HeldClaim]:
    """The declared claims of ``state``, each one a handler could have taken
    (context.py's rules): a value no command could claim is refused
    (INVALID_CLAIM_VALUE), naming the aggregate and scope. A claim in a
    scope declared per tenant is the aggregate's tenant's (as stored:
    service.claim_scopes); by an aggregate of no tenant, CLAIM_WITHOUT_TENANT."""
    assert aggregate_type.held_claims is not None
    held: list[HeldClaim] = []
    for scope, value in aggregate_type.held_claims(state):
        scope_ok = isinstance(scope, str) and 0 < len(scope.encode()) <= MAX_SCOPE_BYTES and scope.isprintable()
        value_ok = isinstance(value, str) and 0 < len(value.encode()) <= MAX_VALUE_BYTES and value.isprintable()
        if not (scope_ok and value_ok):
            raise InvalidInput(
                f"the claims {aggregate_type.plugin.name} declares for {aggregate_type.name} {aggregate_id!r} hold a"
                f" scope or value no command could claim (in {scope!r}: 1 to {MAX_SCOPE_BYTES} bytes of printable"
                f" text for a scope, 1 to {MAX_VALUE_BYTES} for a value). The events are written; no claim was"
                " derived for it",
                reason="INVALID_CLAIM_VALUE",
                metadata={"aggregate_id": aggregate_id, "scope": str(scope)[:MAX_SCOPE_BYTES]},
            )
        held.append(
            HeldClaim(scope=stored_scope(scope, aggregate_id, per_tenant), value=value, aggregate_id=aggregate_id)
        )
    return held
