"""The one exception tree of Chronicle.

Every error the service raises on purpose derives from :class:`ChronicleError`
and carries a machine-readable ``reason`` (UPPER_SNAKE_CASE, sent to clients
as ``google.rpc.ErrorInfo.reason``), a human message, and string metadata.
``service.api.status`` maps each class to a gRPC status code in one table.

    ChronicleError
    ├── InvalidInput            malformed request; names the offending fields
    ├── ValidationError         a plugin's rule refused the command
    │   ├── InvalidArgumentError    ...because of the command's input
    │   │   ├── EventTooLarge       ...whose events would be too large to send back
    │   │   └── ClaimWithoutTenant  ...a claim in a per-tenant scope by an aggregate of no tenant
    │   ├── NotFoundError           ...because the aggregate does not exist
    │   ├── AlreadyExistsError      ...because it exists already
    │   └── NotUnique               ...because another aggregate holds a claimed value
    ├── AggregateNotFound       a read of an aggregate that has no events
    ├── VersionNotReached       a read at a version the aggregate has not reached
    ├── ResourceNotFound        a read of something else that does not exist (projection, document)
    ├── ResourceExists          something a request would create exists already (a subscription group)
    ├── ProjectionFailed        a projection's handler failed; the projection waits and retries
    │   └── ReactionFailed          ...a reaction's function (or too many parked commands)
    ├── EventNotReadable        a stored event no loaded plugin can read (never skipped)
    │   └── EventTooLargeToSend     ...a stored event larger than a message may carry
    ├── LogRewound              the log went back below a position a reader had (a restore, a failover)
    ├── AggregateTypeMismatch   command for another aggregate type than the id's
    ├── WrongExpectedVersion    the client's expected version does not hold
    ├── ConcurrencyConflict     another writer appended first (retried inside)
    ├── CommandAlreadyRecorded  the store found the command id recorded (internal: becomes a replay)
    ├── CommandIdReused         a command id reused for a different command
    ├── Unauthenticated         no credentials, or credentials that do not verify
    ├── PermissionDenied        the caller may not do this
    ├── AggregateForgotten      the aggregate's key was forgotten; its state is gone
    │   └── TenantShredded          ...a new aggregate of a tenant whose master keys are all destroyed
    ├── DocumentForgotten       a read model's documents of a tenant whose key was destroyed (shredded)
    ├── DocumentInTwoForms      a tenant_keyed document written under both keys: an old server wrote one after
    ├── AggregateDeleted        the aggregate was deleted; its tombstone stands for it
    ├── SubjectsForgotten       a read model's commit named forgotten aggregates (internal: applied again)
    ├── NotEncrypted            forgetting needs encryption (on, and a key for the aggregate)
    ├── PayloadNotDecryptable   a sealed payload its key does not open (tampering)
    ├── ImportConflict          an imported record does not fit what the store holds
    ├── NotAvailableHere        a read this server's configuration cannot serve (listing hidden keys)
    ├── Overloaded              a bounded queue or limit is full
    ├── StoreUnavailable        the store cannot be reached
    ├── ConsumerStalled         a group consumer stopped taking its deliveries in (its stream ends)
    ├── HandlerFailed           a plugin's handler raised something unexpected
    └── ConfigurationError      bad settings or plugins; raised at start-up
        └── MasterKeysUnfit         ...the master keys do not open what the store sealed (or are not given)

Errors classify themselves with class attributes that subclasses inherit,
so every rule asks the error, never its class name (a plugin's own
``class BoxLocked(ValidationError)`` is treated exactly like its parent):

- ``recorded``: a refusal that follows deterministically from the command and
  the state (validation errors, a wrong expected version) is recorded with
  the command id, so that a retry returns the same answer. A type mismatch
  needs no record (an aggregate's type never changes, so a retry meets the
  same refusal); transient failures (conflicts, overload, an unavailable
  store, a failing handler) are not recorded: retrying them may succeed.
- ``keeps_cache``: the refusal was decided on state that is still exactly what
  the store holds, so the aggregate's worker keeps its cached state.

A recorded refusal is stored under its ``record_kind``: the nearest class of
this module in its MRO, so that reading it back rebuilds an error of the same
family (and so the same gRPC status) whatever plugin raised it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.store.records import CommandRecord


#: The most characters of a value a caller sent that an error quotes: as many
#: as the longest identifier Chronicle takes (``values.MAX_ID_LENGTH``), so a
#: valid one is quoted whole.
MAX_QUOTED = 200
#: The longest message, metadata value and field violation an error carries.
#: They reach the client in the call's status (trailers, which clients refuse
#: beyond 8 KiB by default: a 3 MB type URL quoted whole made the refusal a
#: RESOURCE_EXHAUSTED) and are stored with the refusal in the audit.
MAX_MESSAGE = 1000


def quoted(value: str, limit: int = MAX_QUOTED) -> str:
    """``value``, which a caller sent, as an error's message quotes it: its
    ``repr`` (control characters escaped), cut to ``limit`` characters and
    saying how long it was."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


def bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` cut to ``limit`` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One malformed field of a request (``google.rpc.BadRequest``); both
    texts are ``bounded``, as an error's message is."""

    field: str
    description: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "field", bounded(self.field, MAX_QUOTED))
        object.__setattr__(self, "description", bounded(self.description))


class ChronicleError(Exception):
    """Root of every error Chronicle raises on purpose."""

    default_reason = "CHRONICLE_ERROR"
    #: Recorded with the command id, so a retry of the command is refused alike.
    recorded = False
    #: Decided on the aggregate's current state: its worker's cache stays good.
    keeps_cache = False

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        # Bounded here, once for every error: whatever a message quotes (a
        # plugin's own included), it stays small in the status and the audit.
        message = bounded(message)
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = {key: bounded(value) for key, value in (metadata or {}).items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class InvalidInput(ChronicleError):
    """The request is malformed: a missing, empty or unparsable field."""

    default_reason = "INVALID_INPUT"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        violations: tuple[FieldViolation, ...] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = violations

    @classmethod
    def for_field(cls, field: str, description: str, *, reason: str) -> InvalidInput:
        """The common case: one field is wrong."""
        return cls(
            f"{field}: {description}",
            reason=reason,
            violations=(FieldViolation(field, description),),
        )


class ValidationError(ChronicleError):
    """A plugin's rule refused the command, given the aggregate's state.

    Raise it (or a subclass) from a command handler. The base class means the
    state does not allow the command (``FAILED_PRECONDITION``), e.g.
    ``ValidationError("insufficient funds", reason="INSUFFICIENT_FUNDS")``.
    ``field`` names the command field at fault, if one is; ``violations``
    lists several at once, as ``(field, description)`` pairs (the client gets
    a ``google.rpc.BadRequest`` with each, recorded and replayed like the
    rest of the refusal)::

        raise InvalidArgumentError("the transfer is not well formed", reason="INVALID_TRANSFER",
                                   violations=[("amount", "must be positive"), ("target", "is required")])
    """

    default_reason = "VALIDATION_FAILED"
    recorded = True
    keeps_cache = True

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        field: str | None = None,
        violations: Iterable[tuple[str, str] | FieldViolation] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if field is not None:
            metadata = {**(metadata or {}), "field": field}
        super().__init__(message, reason=reason, metadata=metadata)
        self.field = field
        self.violations = tuple(v if isinstance(v, FieldViolation) else FieldViolation(*v) for v in violations)


class InvalidArgumentError(ValidationError):
    """The command's own input breaks a rule (``INVALID_ARGUMENT``)."""

    default_reason = "INVALID_ARGUMENT"


class EventTooLarge(InvalidArgumentError):
    """A command would produce an event, or events, too large to send back
    (reasons EVENT_TOO_LARGE, RESULT_TOO_LARGE): refused before anything is
    written. Raised by the server, not by plugins."""

    default_reason = "EVENT_TOO_LARGE"


class NotFoundError(ValidationError):
    """The command needs an aggregate that does not exist (``NOT_FOUND``)."""

    default_reason = "NOT_FOUND"


class AlreadyExistsError(ValidationError):
    """The command would create something that exists (``ALREADY_EXISTS``)."""

    default_reason = "ALREADY_EXISTS"


class NotUnique(ValidationError):
    """A uniqueness claim lost: another aggregate holds the value in ``scope``.

    Raised by a store's ``append`` (the database's unique constraint decides,
    so two replicas racing for one value cannot both win). The value itself
    is left out of the message and metadata: it is often personal data (an
    e-mail address) and the client knows what it sent.
    """

    default_reason = "NOT_UNIQUE"

    def __init__(self, scope: str, value: str | None = None) -> None:
        # ``scope`` as stored: a per-tenant scope's is the scope, "\x1e" and
        # the tenant (service.claim_scopes); the client hears the scope its
        # plugin named, and the tenant it is unique in.
        declared, _, tenant = scope.partition("\x1e")
        metadata = {"scope": declared} | ({"tenant": tenant} if tenant else {})
        within = f" of tenant {tenant!r}" if tenant else ""
        super().__init__(f"the value is already taken in {declared!r}{within}", metadata=metadata)
        self.scope = scope
        self.value = value  # for the executor to name the command; never sent


class ClaimWithoutTenant(InvalidArgumentError):
    """A claim in a scope its plugin declares per tenant, by an aggregate
    whose id names no tenant (no ``tenant:`` prefix): the value would have
    no tenant to be unique in."""

    default_reason = "CLAIM_WITHOUT_TENANT"

    def __init__(self, scope: str, aggregate_id: str) -> None:
        super().__init__(
            f"{scope!r} holds values unique per tenant, and aggregate {aggregate_id!r} names no tenant"
            " (its id does not begin with a tenant and ':')",
            metadata={"scope": scope, "aggregate_id": aggregate_id},
        )


class AggregateNotFound(ChronicleError):
    default_reason = "AGGREGATE_NOT_FOUND"

    def __init__(self, aggregate_id: str, *, at_time: str | None = None) -> None:
        metadata = {"aggregate_id": aggregate_id}
        if at_time is not None:
            metadata["at_time"] = at_time
        super().__init__(
            f"aggregate {aggregate_id!r} " + (f"had no events at {at_time}" if at_time else "has no events"),
            metadata=metadata,
        )


class VersionNotReached(ChronicleError):
    """A read of an aggregate at a version it has not reached."""

    default_reason = "VERSION_NOT_REACHED"

    def __init__(self, aggregate_id: str, wanted: int, current: int) -> None:
        super().__init__(
            f"aggregate {aggregate_id!r} is at version {current}, not yet at {wanted}",
            metadata={"aggregate_id": aggregate_id, "at_version": str(wanted), "current_version": str(current)},
        )


class EventNotReadable(ChronicleError):
    """A stored event that no loaded plugin can decode, upcast or apply.

    Never skipped silently: skipping would rebuild a wrong state.
    """

    default_reason = "EVENT_NOT_READABLE"


class EventTooLargeToSend(EventNotReadable):
    """A stored event larger than this server may send in a message (one
    imported before imports held events to --max-event-bytes, or written
    under a larger limit): a read or subscription that reaches it ends with
    this error, naming it, rather than gRPC's "Sent message larger than
    max"; a group parks it. No retry heals it; a larger
    --max-message-bytes (on the server and the client) does."""

    default_reason = "EVENT_TOO_LARGE_TO_SEND"


class LogRewound(ChronicleError):
    """The log no longer holds what a reader had read up to a position: it
    was restored from an older copy, or failed over to a standby that lost
    its last commits, and new events may since sit at reused positions.
    Going on after that position would skip them, so the reader is ended
    (FAILED_PRECONDITION, no RetryInfo: a retry meets the same log) and
    must re-sync deliberately (docs/subscriptions.md, "When the log goes
    back")."""

    default_reason = "LOG_REWOUND"


class ResourceNotFound(ChronicleError):
    default_reason = "NOT_FOUND"


class ResourceExists(ChronicleError):
    """Something the request would create exists already (a subscription
    group of that name): ``ALREADY_EXISTS``."""

    default_reason = "ALREADY_EXISTS"


class ProjectionLoaded(ChronicleError):
    """DeleteProjection of a projection (or reaction) a loaded plugin
    declares: its runner would start it again from the log at once
    (FAILED_PRECONDITION)."""

    default_reason = "PROJECTION_LOADED"


class ProjectionFailed(ChronicleError):
    default_reason = "PROJECTION_FAILED"


class ProjectionStopped(ChronicleError):
    """A read with ``min_position`` of a projection stopped at an earlier
    event by a handler's failure: it will not get there until the plugin is
    fixed, so the read is refused at once (FAILED_PRECONDITION, no
    RetryInfo) rather than after the wait as PROJECTION_BEHIND."""

    default_reason = "PROJECTION_FAILED"


class ReactionFailed(ProjectionFailed):
    """A reaction's function raised, or returned something that is not a
    command, or it has too many parked commands: the reaction stops (others
    go on) and retries."""

    default_reason = "REACTION_FAILED"


class AggregateTypeMismatch(ChronicleError):
    default_reason = "AGGREGATE_TYPE_MISMATCH"

    def __init__(self, aggregate_id: str, actual: str, wanted: str) -> None:
        super().__init__(
            f"aggregate {aggregate_id!r} is a {actual}, the command is for a {wanted}",
            metadata={"aggregate_id": aggregate_id, "aggregate_type": actual, "command_aggregate_type": wanted},
        )


class WrongExpectedVersion(ChronicleError):
    default_reason = "WRONG_EXPECTED_VERSION"
    recorded = True
    keeps_cache = True

    def __init__(self, aggregate_id: str, expected: int, current: int) -> None:
        super().__init__(
            f"aggregate {aggregate_id!r} is at version {current}, the command expected {expected}",
            metadata={
                "aggregate_id": aggregate_id,
                "expected_version": str(expected),
                "current_version": str(current),
            },
        )


class ConcurrencyConflict(ChronicleError):
    """Another writer appended to the aggregate first.

    Raised by a store's ``append`` when the version the caller expected is no
    longer the aggregate's version. The processor reloads and retries; only
    when its budget is spent does the client see it (``ABORTED``).
    """

    default_reason = "CONCURRENCY_CONFLICT"

    def __init__(self, aggregate_id: str, expected: int, *, attempts: int = 1, current: int | None = None) -> None:
        metadata = {"aggregate_id": aggregate_id, "expected_version": str(expected), "attempts": str(attempts)}
        if current is not None:
            metadata["current_version"] = str(current)
        super().__init__(
            f"aggregate {aggregate_id!r} changed while the command ran (expected version {expected})",
            metadata=metadata,
        )
        self.aggregate_id = aggregate_id
        self.expected = expected


class CommandAlreadyRecorded(ChronicleError):
    """The command id is already recorded; ``record`` is what it produced.

    A signal between the store and the executor, which turns it into a
    replay of the original result or ``CommandIdReused``; a client never
    sees it.
    """

    default_reason = "COMMAND_ALREADY_RECORDED"

    def __init__(self, record: CommandRecord) -> None:
        super().__init__(f"command id {record.command_id} is already recorded", metadata={})
        self.record = record


class CommandIdReused(ChronicleError):
    """``original_type``: the command type the id was recorded for. What the
    refusal says (``why``) is of that command, not of the one sent, so who
    may hear it is decided by the original's aggregate type
    (``service.api.disclosure``); kept out of the metadata, which would say it."""

    default_reason = "COMMAND_ID_REUSED"

    def __init__(self, command_id: str, why: str, *, original_type: str = "") -> None:
        super().__init__(
            f"command id {command_id} was already used for {why}",
            metadata={"command_id": command_id, "conflict": why},
        )
        self.original_type = original_type


class Unauthenticated(ChronicleError):
    """The caller sent no credentials, or credentials that do not verify."""

    default_reason = "UNAUTHENTICATED"


class CredentialsChanged(ChronicleError):
    """A stream's credentials or grants changed while it was open (a policy
    or key file read again): the stream ends, and the client opens it again
    under the ones now in force (UNAVAILABLE, worth retrying)."""

    default_reason = "CREDENTIALS_CHANGED"


class PermissionDenied(ChronicleError):
    """The authenticated caller may not do what it asked."""

    default_reason = "PERMISSION_DENIED"


class AggregateForgotten(ChronicleError):
    """The aggregate's encryption key was forgotten (crypto-shredding): its
    payloads read as redacted and its state can never be rebuilt."""

    default_reason = "AGGREGATE_FORGOTTEN"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(
            f"aggregate {aggregate_id!r} was forgotten: its payloads are redacted and its state cannot be rebuilt",
            metadata={"aggregate_id": aggregate_id},
        )


class DocumentForgotten(ChronicleError):
    """A ``tenant_keyed`` read model's document of a tenant whose master key
    that sealed it was destroyed (a shred): it reads as its aggregates do,
    forgotten, whether or not a document is stored under the key (which
    cannot be told any more: the key is looked up by a keyed hash under the
    key that is gone)."""

    default_reason = "DOCUMENT_FORGOTTEN"

    def __init__(self, projection: str, tenant: str) -> None:
        super().__init__(
            f"projection {projection}'s documents of tenant {tenant!r} were shredded: the master key that sealed"
            " them was destroyed",
            metadata={"projection": projection, "tenant": tenant},
        )


class DocumentInTwoForms(ChronicleError):
    """A ``tenant_keyed`` read model's document stored both under its
    tenant's key and under the read model's own (service/store/
    document_ciphers.py). This version never leaves both: a write under
    the tenant's key deletes the other in the same commit. So a server that
    does not read tenants' keys (an older version, or a plugin version not
    declaring the read model ``tenant_keyed``) wrote it since the other,
    built on a document it read as absent: neither copy can be trusted,
    and the read model needs a rebuild. Refused rather than either served."""

    default_reason = "DOCUMENT_IN_TWO_FORMS"

    def __init__(self, projection: str, tenant: str) -> None:
        super().__init__(
            f"projection {projection}'s document of tenant {tenant!r} is stored under both the tenant's key and the"
            " read model's own: a server that does not read tenants' keys (an older version: a rollback or a"
            " roll-forward beside one) wrote it after this version had, so neither copy can be trusted; once every"
            f" replica runs one version, rebuild the projection (chronicle projection rebuild {projection};"
            ' docs/deployment.md, "Upgrading and rolling back")',
            metadata={"projection": projection, "tenant": tenant},
        )


class TenantShredded(AggregateForgotten):
    """A new aggregate of a shredded tenant (every master key of its own
    destroyed): no data key can be made for it, so nothing of it can be
    written. An AggregateForgotten (nothing can ever be written there, so
    everything that treats a forgotten aggregate so treats this alike), with
    its own reason: the id was never forgotten, and saying so misleads."""

    default_reason = "TENANT_SHREDDED"

    def __init__(self, aggregate_id: str, tenant: str, *, claims_scope: str = "") -> None:
        if claims_scope:
            # A value looked up in a scope unique per tenant (service.claim_scopes).
            ChronicleError.__init__(
                self,
                f"the claims of tenant {tenant!r} in {claims_scope!r} cannot be read or taken: the master keys of"
                " the tenant are destroyed (the tenant is shredded)",
                metadata={"scope": claims_scope, "tenant": tenant},
            )
            return
        ChronicleError.__init__(
            self,
            f"aggregate {aggregate_id!r} cannot be written: the master keys of its tenant {tenant!r} are destroyed"
            " (the tenant is shredded), so no new aggregate of it can be written",
            metadata={"aggregate_id": aggregate_id, "tenant": tenant},
        )


class AggregateDeleted(ChronicleError):
    """The aggregate was deleted (AdminService.DeleteAggregate): its events
    are gone and its tombstone stands where they were; it takes no commands
    unless it is restored."""

    default_reason = "AGGREGATE_DELETED"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(
            f"aggregate {aggregate_id!r} was deleted: its events are gone (restore it from its archive to use it)",
            metadata={"aggregate_id": aggregate_id},
        )


class SubjectsForgotten(ChronicleError):
    """A projection's commit put documents derived from aggregates that were
    forgotten (``subjects``): nothing was written. A signal between the store
    and the projection runner, which applies the batch again with those
    documents deleted instead; a client never sees it."""

    default_reason = "SUBJECTS_FORGOTTEN"

    def __init__(self, subjects: Iterable[str]) -> None:
        self.subjects = frozenset(subjects)
        super().__init__(
            f"documents name {len(self.subjects)} forgotten aggregates as their subjects",
            metadata={"subjects": str(len(self.subjects))},
        )


class NotEncrypted(ChronicleError):
    """An aggregate cannot be forgotten: encryption at rest is off
    (reason ENCRYPTION_OFF) or the aggregate has no key (NOT_ENCRYPTED)."""

    default_reason = "NOT_ENCRYPTED"


class NotConfirmed(ChronicleError):
    """A destructive call over many records whose confirmation (how many it
    expects to act on) is missing (CONFIRMATION_REQUIRED) or does not match
    how many do (CONFIRMATION_MISMATCH): nothing was done."""

    default_reason = "CONFIRMATION_MISMATCH"


class PayloadNotDecryptable(ChronicleError):
    """A sealed payload that its aggregate's key does not open: tampered
    with, or copied from another row. Never returned as data."""

    default_reason = "PAYLOAD_NOT_DECRYPTABLE"


class ImportConflict(ChronicleError):
    """An imported record does not fit what the store holds, and nothing of
    its batch was written: its event id is another event's
    (EVENT_ID_TAKEN), its aggregate holds other events at its version
    (AGGREGATE_NOT_EMPTY: import with overwriting to replace them), a
    version before it is missing (VERSION_GAP), a value it claims is held by
    another aggregate (CLAIM_HELD), its data key differs from the one the
    store holds for the aggregate (DATA_KEY_CONFLICT), it is a snapshot at a
    version its aggregate does not have (SNAPSHOT_AHEAD), it is of
    another aggregate type than the aggregate's (AGGREGATE_TYPE_MISMATCH),
    or it would replace a forgotten aggregate (AGGREGATE_FORGOTTEN). Or it
    does not fit the store's encryption at rest (service/transfer/sealing.py):
    sealed where the server has no master keys
    (ENCRYPTED_EXPORT_WITHOUT_KEYS), a data key its master keys do not
    unwrap (MASTER_KEY_MISSING, MASTER_KEY_MISMATCH), in the clear into an
    encrypted store without its keys (ENCRYPTION_KEYS_NEEDED)."""

    default_reason = "IMPORT_CONFLICT"


class ImportRaced(ImportConflict):
    """Another writer wrote where an import's batch goes while the import
    ran (another import of the same store, most often: two ``chronicle
    import`` processes, or two replicas each given one), and nothing of the
    batch was written (``ABORTED``, IMPORT_RACED). Importing again, once the
    other has finished, skips what is there and writes the rest, or refuses
    a history that parts from the stream's (AGGREGATE_NOT_EMPTY)."""

    default_reason = "IMPORT_RACED"


class NotAvailableHere(ChronicleError):
    """A read that the server's configuration rules out: listing a
    projection's documents by key when encryption at rest stores the keys
    as keyed hashes (DOCUMENT_KEYS_HIDDEN)."""

    default_reason = "NOT_AVAILABLE_HERE"


class Overloaded(ChronicleError):
    default_reason = "OVERLOADED"


class RateLimited(Overloaded):
    """A principal over its commands-per-second limit: ``retry_after`` is
    the seconds until its bucket holds the tokens the call needs (the
    RetryInfo delay, in place of the code's fixed one)."""

    default_reason = "PRINCIPAL_RATE_LIMITED"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after  # None: the code's fixed delay


class StoreUnavailable(ChronicleError):
    """The store cannot serve now. ``detail``, when given, is for the
    server's log alone (``str(error)`` shows it; the caller's status carries
    only ``message``): a database driver's text names the database's host
    and port, and the caller of any RPC has no business with either."""

    default_reason = "STORE_UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.detail = bounded(detail)

    def __str__(self) -> str:
        return f"{self.message} ({self.detail})" if self.detail else self.message


#: What a caller hears of a store the server cannot reach, whatever the
#: driver said (the server logs that).
STORE_UNREACHABLE = "the store is unavailable; retry shortly"


def store_unreachable(detail: str) -> StoreUnavailable:
    """A store the server cannot reach now: a fixed message for the caller,
    ``detail`` (the driver's text) for the server's log."""
    return StoreUnavailable(STORE_UNREACHABLE, detail=detail)


#: StoreUnavailable's reason when the store kept refusing an operation to let
#: other transactions go on: SQLite's write lock held by another connection
#: past the busy timeout, PostgreSQL rolling it back as a deadlock's victim or
#: for a serialization failure on every attempt. Nothing of it was applied.
CONTENTION = "CONTENTION"
#: What a caller hears of it, whichever store and whatever its driver said:
#: the driver's words (SQLSTATEs, "database is locked", the operation's
#: internal name) are the server's log's, and a client's retry logic keys on
#: the reason, never on text that changes with the driver's version.
STORE_BUSY = "the store is busy with other transactions; nothing was applied: retry shortly"


def store_busy(detail: str) -> StoreUnavailable:
    """An operation the store refused for contention: a fixed message for
    the caller, ``detail`` (the driver's text) for the server's log."""
    return StoreUnavailable(STORE_BUSY, reason=CONTENTION, detail=detail)


class ConsumerStalled(ChronicleError):
    """A subscription group's consumer neither took a message of deliveries
    in nor acked or nacked anything for the group's ack timeout (its client
    stopped reading, its connection alive): its stream ends, and its events
    and segments go to the group's other consumers (``service/groups.py``).
    ABORTED: the consumer may consume again at once."""

    default_reason = "CONSUMER_STALLED"


class ConsumerUnresponsive(ConsumerStalled):
    """A subscription group's consumer takes its deliveries in but answers
    none: they timed out the group's ``max_unanswered_timeouts`` times in a
    row (each a delivery sent after the one before timed out) with no ack or
    nack from it. Cut as a stalled one is, its segments to the group's other
    consumers (``service/groups.py``). ABORTED: it may consume again at once."""

    default_reason = "CONSUMER_UNRESPONSIVE"


class HandlerFailed(ChronicleError):
    default_reason = "HANDLER_FAILED"


class ConfigurationError(ChronicleError):
    default_reason = "CONFIGURATION_ERROR"


class ClaimScopeSwitched(ConfigurationError):
    """A claims scope switched between global and per tenant over the claims
    it holds: declared per tenant over claims taken while it was global, or
    global again over its tenants' claims. Either way those claims would be
    checked no more, so a value held could be claimed again: refused at
    start (docs/plugins.md, "Unique per tenant"). ``declared`` in the
    metadata says which way: what the scope is declared now."""

    default_reason = "CLAIM_SCOPE_SWITCHED"

    def __init__(self, scope: str, *, per_tenant: bool = True) -> None:
        held = (
            "holds claims taken while it was global"
            if per_tenant
            else "holds its tenants' claims, taken while it was per tenant"
        )
        declared = "per tenant" if per_tenant else "global"
        back = "global" if per_tenant else "per tenant (per_tenant=True)"
        # Only this way has a procedure: two tenants may hold one value, which one global scope cannot.
        move = (
            "or move its claims: export this store, and import the export into a new one with `chronicle import"
            " --derive-per-tenant-claims`"
            if per_tenant
            else "as no import moves its claims"
        )
        super().__init__(
            f"claims scope {scope!r} is declared {declared}, but {held}: they would no longer be checked, so a value"
            f' held could be claimed again. Declare it {back} again, {move} (docs/plugins.md, "Unique per tenant")',
            metadata={"scope": scope, "declared": "per_tenant" if per_tenant else "global"},
        )


class MasterKeysUnfit(ConfigurationError):
    """The master keys configured do not open what the store sealed: a data
    key wrapped by a master key the server is not given
    (MASTER_KEY_MISSING), one whose key under the right id has other bytes
    (MASTER_KEY_MISMATCH), or none at all over a sealed store
    (ENCRYPTED_STORE_WITHOUT_KEYS). At start-up the server does not start;
    met by a call, it is the server's setting to fix, not the caller's to
    retry: FAILED_PRECONDITION (not INTERNAL: nothing is broken in the
    server; not UNAVAILABLE: waiting does not heal it, an operator does)."""

    default_reason = "MASTER_KEYS_UNFIT"


# The classes a recorded refusal is rebuilt as, by ``record_kind``.
_RECORDED_KINDS: dict[str, type[ChronicleError]] = {
    cls.__name__: cls
    for cls in (
        ValidationError,
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        NotUnique,
        WrongExpectedVersion,
    )
}


def recorded_with_command(error: BaseException) -> bool:
    """Whether the executor records ``error`` with the command id (and so in
    the audit log, in the same transaction)."""
    return isinstance(error, ChronicleError) and error.recorded


def record_kind(error: ChronicleError) -> str:
    """The name a recorded refusal is stored under: the nearest class of this
    module in the error's MRO (a plugin's subclass is stored as its parent)."""
    for cls in type(error).__mro__:
        if _RECORDED_KINDS.get(cls.__name__) is cls:
            return cls.__name__
    return ValidationError.__name__


def rebuild_rejection(
    kind: str,
    message: str,
    reason: str,
    metadata: Mapping[str, str],
    violations: Iterable[tuple[str, str]] = (),
) -> ChronicleError:
    """Recreate a recorded rejection without running its constructor."""
    cls = _RECORDED_KINDS.get(kind, ValidationError)
    error = cls.__new__(cls)
    ChronicleError.__init__(error, message, reason=reason, metadata=metadata)
    if isinstance(error, ValidationError):
        error.field = metadata.get("field")
        error.violations = tuple(FieldViolation(*v) for v in violations)
    return error
