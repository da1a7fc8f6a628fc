"""The audit log: every command that reached the service, and its outcome.

Where each outcome is written:

- accepted, or refused by a handler (or a wrong expected version): the
  executor's ``CommandRecord``, in the same transaction as the events (or the
  empty append that records the refusal). Nothing extra is written here.
- refused before a handler decided (authentication, concurrency limit,
  malformed input, policy, overload, an exhausted conflict budget, a failing
  handler): ``AuditLog.refused`` writes an entry of its own, through
  ``AuditRecorder.record_audit_entry``. The API layer calls it for refusals
  before the pipeline; ``AuditMiddleware`` for refusals inside it.
- dry runs, accepted or refused: the API layer (``service.api.dry_runs``),
  one entry each, marked ``dry_run``.
- administrators' actions (``AdminService``): forgetting, deleting an
  aggregate, rewrapping keys, exporting and importing, done or refused, and
  any refused admin call; the entry's
  ``command_type`` is the RPC's full name (``chronicle.v1.AdminService/…``)
  and its ``command_id`` is empty.

A retried command id whose outcome is replayed is not audited again: the
original entry stands for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from service.errors import ChronicleError, bounded, recorded_with_command
from service.plugins.middleware import CommandCall, Middleware
from service.principal import current_peer
from service.store.base import AuditQuery, AuditRecorder
from service.store.records import ACCEPTED, REFUSED, AuditEntry

log = logging.getLogger(__name__)


def now_us() -> int:
    return time.time_ns() // 1000


def admin_entry(
    action: str, *, principal: str, aggregate_id: str = "", message: str = "", tenant: str = ""
) -> AuditEntry:
    """The entry of an administrator's action that was done, for the store
    to record (``AuditLog.admin_action``), or to record in the action's own
    transaction (a bulk forget's batch: ``KeyStore.forget_aggregates_data``).
    ``tenant``: the tenant a tenant's administrator acted for (its origin)."""
    return AuditEntry(
        recorded_at_us=now_us(),
        command_id="",
        command_type=action,
        aggregate_id=aggregate_id,
        principal=principal,
        user_id=principal,
        origin=admin_origin(tenant),
        outcome=ACCEPTED,
        message=storable_message(message),
        peer=storable(current_peer.get()()),  # the administrator's address, as the gate's entries carry it
    )


class AuditLog:
    def __init__(self, store: AuditRecorder) -> None:
        self._store = store
        # Entries the store could not take since it last took one (an
        # outage refuses every command, and each refusal is an entry).
        self._unrecorded = 0

    async def refused(self, entry: AuditEntry) -> None:
        """Record a refusal. A failure to record is logged, never raised: the
        caller is already answering with the refusal itself."""
        await self.record(entry)

    async def record(self, entry: AuditEntry) -> None:
        """Record ``entry`` (a refusal, a dry run's outcome); a failure to
        record is logged, never raised."""
        try:
            await self._store.record_audit_entry(entry)
        except ChronicleError as error:
            # The store cannot take it (unavailable, a lock timeout): said once
            # for the outage, not with a traceback for every command it refuses.
            self._unrecorded += 1
            if self._unrecorded == 1:
                log.warning(
                    "could not record the outcome of command %s in the audit log (%s: %s); audit entries are"
                    " lost until the store takes them again",
                    entry.command_id,
                    error.reason,
                    error,
                )
        except Exception:
            log.exception("could not record the outcome of command %s in the audit log", entry.command_id)
        else:
            if self._unrecorded:
                log.warning("the audit log takes entries again; %d could not be recorded meanwhile", self._unrecorded)
                self._unrecorded = 0

    async def admin_action(
        self,
        action: str,
        *,
        principal: str,
        aggregate_id: str = "",
        error: BaseException | None = None,
        message: str = "",
        tenant: str = "",
    ) -> None:
        """Record what an administrator did (``error`` None; ``message`` says
        what came of it) or was refused. An action that was done must be
        audited, so a failure to record it is raised (the action itself has
        happened: the caller learns the audit log is unavailable).
        ``tenant``: the tenant a tenant's administrator acted for, kept in
        the entry's origin (``tenant-admin:acme``), in the clear with the
        principal: a forget erases an entry's message, not its envelope."""
        peer = current_peer.get()()  # the administrator's address, as the gate's entries carry it
        if error is not None:
            await self.refused(
                refusal(
                    error,
                    command_type=action,
                    aggregate_id=aggregate_id,
                    principal=principal,
                    origin=admin_origin(tenant) if tenant else "",
                    peer=peer,
                )
            )
            return
        await self._store.record_audit_entry(
            admin_entry(action, principal=principal, aggregate_id=aggregate_id, message=message, tenant=tenant)
        )

    async def query(self, query: AuditQuery) -> list[AuditEntry]:
        return await self._store.read_audit(query)


class SampledRefusals:
    """Refusals of callers the server could not hold to account (no or bad
    credentials; with authentication off, anyone), recorded at most
    ``rate`` a second for each reason, after a burst of ``burst``: a flood
    of them cannot grow the audit log faster than that. The others are
    counted, and every ``interval`` seconds one entry stands for those of
    each reason (the last of them, its ``occurrences`` saying how many);
    ``on_sampled`` hears of each one counted (a metric)."""

    # Reasons are Chronicle's own (a bounded set); the bound is a safeguard.
    MAX_REASONS = 1000

    def __init__(
        self,
        audit: AuditLog,
        *,
        rate: float = 10.0,
        burst: int = 50,
        interval: float = 1.0,
        on_sampled: Callable[[str], None] | None = None,
    ) -> None:
        self._audit = audit
        self._rate = rate
        self._burst = burst
        self._interval = interval
        self._on_sampled = on_sampled
        # reason -> (tokens, when last refilled)
        self._buckets: dict[str, tuple[float, float]] = {}
        # reason -> (refusals counted, the last of them)
        self._pending: dict[str, tuple[int, AuditEntry]] = {}
        self._flushing: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def refused(self, entry: AuditEntry, *, accountable: bool) -> Awaitable[None]:
        """Record a refusal: each one of a caller that answers for it (an
        authenticated principal), the others through the sample."""
        return self._audit.refused(entry) if accountable else self.record(entry)

    async def record(self, entry: AuditEntry) -> None:
        if self._take(entry.reason):
            await self._audit.refused(entry)
            return
        counted, _ = self._pending.get(entry.reason, (0, entry))
        self._pending[entry.reason] = (counted + 1, entry)
        if self._on_sampled is not None:
            self._on_sampled(entry.reason)
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().call_later(self._interval, self._flush_later)

    def _take(self, reason: str) -> bool:
        now = time.monotonic()
        tokens, then = self._buckets.get(reason, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - then) * self._rate)
        if len(self._buckets) >= self.MAX_REASONS and reason not in self._buckets:
            self._buckets.clear()
        if tokens >= 1.0:
            self._buckets[reason] = (tokens - 1.0, now)
            return True
        self._buckets[reason] = (tokens, now)
        return False

    def _flush_later(self) -> None:
        self._flushing = None
        task = asyncio.ensure_future(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Record one entry for the refusals counted of each reason."""
        pending, self._pending = self._pending, {}
        for counted, last in pending.values():
            await self._audit.refused(replace(last, occurrences=counted))

    async def close(self) -> None:
        """Record what is counted, and stop."""
        if self._flushing is not None:
            self._flushing.cancel()
            self._flushing = None
        await self.flush()


def admin_origin(tenant: str) -> str:
    """An administrator's entry's origin: ``admin``, or for a tenant's
    administrator ``tenant-admin:<tenant>``."""
    return f"tenant-admin:{tenant}" if tenant else "admin"


def storable(text: str) -> str:
    """``text`` as every store can keep it. A refusal may quote what the
    caller sent, which was refused precisely because it is malformed (an
    aggregate id with a NUL in it, say), and PostgreSQL's text columns
    refuse NUL: the entry would be lost, not recorded."""
    return text.replace("\x00", "\N{REPLACEMENT CHARACTER}")


def storable_message(text: str) -> str:
    """A refusal's or an action's message as the audit keeps it: ``storable``
    and ``bounded`` (an error's message is already, ``errors.MAX_MESSAGE``;
    this holds for every entry whatever made its text)."""
    return storable(bounded(text))


def refusal(
    error: BaseException,
    *,
    command_id: str = "",
    command_type: str = "",
    aggregate_id: str = "",
    principal: str = "",
    user_id: str = "",
    origin: str = "",
    dry_run: bool = False,
    peer: str = "",
) -> AuditEntry:
    if isinstance(error, ChronicleError):
        reason, message = error.reason, error.message
    else:
        reason, message = "INTERNAL", type(error).__name__
    return AuditEntry(
        recorded_at_us=now_us(),
        command_id=storable(command_id),
        command_type=storable(command_type),
        aggregate_id=storable(aggregate_id),
        principal=storable(principal),
        user_id=storable(user_id),
        origin=storable(origin),
        outcome=REFUSED,
        reason=reason,
        message=storable_message(message),
        dry_run=dry_run,
        peer=storable(peer),
    )


class AuditMiddleware(Middleware):
    """Audits refusals that the executor does not record with the command.

    Placed outside the authorization middleware, so policy refusals pass
    through its ``on_error``. With ``sampled``, the refusals of callers
    that were not authenticated (anyone, with authentication off) go
    through it, as those refused before the pipeline do: a flood of
    commands refused for overload must not cost the database a write each
    when it is already overloaded.
    """

    name = "audit"

    def __init__(self, audit: AuditLog, *, sampled: SampledRefusals | None = None) -> None:
        self._audit = audit
        self._sampled = sampled

    def on_error(self, call: CommandCall) -> Awaitable[None] | None:
        """Plain for the refusals a command record audits; the write of an
        entry of its own otherwise (awaited before the caller hears)."""
        error = call.error
        # A cancelled call (the client went away) may still have run; if it
        # did, its command record audits it.
        if error is None or isinstance(error, asyncio.CancelledError):
            return None
        if recorded_with_command(error) and not call.refused_by:
            return None
        # Dry runs are audited around the pipeline, whatever their outcome
        # (service.api.dry_runs), where the caller's address is known.
        if call.dry_run:
            return None
        entry = refusal(
            error,
            command_id=call.command_id,
            command_type=call.command_type,
            aggregate_id=call.aggregate_id,
            principal=call.principal.name,
            user_id=call.user_id,
            origin=call.origin,
            peer=current_peer.get()(),
        )
        if self._sampled is None:
            return self._audit.refused(entry)
        return self._sampled.refused(entry, accountable=call.principal.authenticated)
