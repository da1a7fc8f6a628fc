"""Projections: read models a plugin keeps up to date from the event log.

A projection declares which events it reads and a handler per event type.
The server runs it after commit, in log order, in batches; each batch's
document changes are committed in ONE transaction with the projection's
checkpoint, so each event is applied exactly once even across crashes and
restarts (a batch is either wholly applied and checkpointed, or neither).
Handlers must therefore only change documents: an e-mail sent from a
handler could be sent twice.

    balances = plugin.projection("balances_by_owner", aggregate_types=["Account"])

    @balances.on(bank_pb2.MoneyDeposited)
    def deposited(event, envelope, documents):
        ...
        documents.put(owner, bank_pb2.OwnerBalance(owner=owner, balance=total), subject=envelope.aggregate_id)

Documents are Protobuf messages under string keys, in the projection's own
namespace, stored in the same database as the events. A document that holds
an aggregate's personal data names it as its ``subject``: forgetting the
aggregate then deletes the document too. Events of a forgotten aggregate
(redacted) are not given to handlers: there is nothing left to read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import field
from typing import Any, Literal, Protocol, TypeVar, get_args

from google.protobuf.message import Message

from service.values import MAX_ID_LENGTH, id_problem, value

M = TypeVar("M", bound=Message)
H = TypeVar("H", bound=Callable[..., Any])


@value(frozen=True, slots=True)
class ProjectedEvent:
    """The envelope of the event a projection handler is given."""

    event_id: str
    aggregate_id: str
    aggregate_type: str
    version: int
    position: int
    event_type: str
    timestamp_us: int
    user_id: str = ""
    origin: str = ""
    correlation_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


class Documents(Protocol):
    """A projection's documents, as the current batch sees them."""

    def get(self, key: str, message_type: type[M]) -> M | None:
        """The document under ``key`` (None if there is none)."""

    def put(self, key: str, document: Message, *, subject: str | Iterable[str] | None = None) -> None:
        """Write ``document`` under ``key`` (replacing what was there).

        ``subject``: the aggregate id (or ids) whose events the document is
        derived from, when it holds their personal data. Forgetting any of
        them (``AdminService.ForgetAggregate``) deletes the document, and
        it is not written again once one of them is forgotten. Each put
        says the document's whole set of subjects; none (the default): the
        document outlives every forgetting."""

    def delete(self, key: str) -> None:
        """Remove the document under ``key``, if any."""


ProjectionHandler = Callable[[Any, ProjectedEvent, Documents], None]

# The largest document a handler may put, by default: half of the server's
# default --max-message-bytes (4 MiB), so that GetDocument's answer, and a
# ListDocuments page that holds it alone, fit in a message. The server gives
# its runners half of its own limit.
MAX_DOCUMENT_BYTES = 2 * 1024 * 1024


def check_runner_name(kind: str, name: str) -> None:
    """A projection's or a reaction's name (``kind``), refused (ValueError)
    at declaration when the API could not name it: letters, digits, '_' or
    '.', at most ``MAX_ID_LENGTH`` characters (GetProjection's and
    GetReaction's rule for a name)."""
    if not name or not name.replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"{kind} name {name!r} must be letters, digits, '_' or '.'")
    if len(name) > MAX_ID_LENGTH:
        raise ValueError(
            f"{kind} name {name[:40]!r}... is {len(name)} characters: at most {MAX_ID_LENGTH}, or the API could not"
            " name it"
        )


def document_key_problem(key: str) -> str:
    """What is wrong with ``key`` as a document key, "" if nothing: the one
    rule of handlers' ``Documents`` (a put, a get, a delete) and of
    ``GetDocument``'s key, so that every document written can be read by
    its key: 1 to 200 characters, not only whitespace, printable (no
    control characters, NUL, lone surrogates or noncharacters such as
    U+FFFF, which some databases cannot store)."""
    # The usual answer in one expression: read models call this several
    # times per event (each get, put and delete), and the layers of calls
    # behind id_problem cost more than its checks. Only a key it refuses
    # goes on to id_problem, for the words.
    if key.isprintable() and 0 < len(key) <= MAX_ID_LENGTH and not key.isspace():
        return ""
    return id_problem(key)


def subject_problem(subject: str) -> str:
    """What is wrong with ``subject`` (an aggregate id a document names),
    "" if nothing: an id no database can store (NUL, a lone surrogate)
    names no aggregate, and would fail the commit outside the handler."""
    # As document_key_problem, the usual answer first: a printable id holds
    # no NUL and no lone surrogate, so only the rest are looked at closely.
    if subject.isprintable() and 0 < len(subject) <= MAX_ID_LENGTH and not subject.isspace():
        return ""
    problem = id_problem(subject, printable=False)
    if problem:
        return problem
    if "\0" in subject or (not subject.isascii() and not _encodable(subject)):
        return "must not contain NUL or lone surrogates"
    return ""


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# What a projection does when a handler raises on an event: "stop" there
# (and try again every retry_seconds), or "park" the event after
# max_attempts tries and go on without it.
OnFailure = Literal["stop", "park"]

# Events per batch while a projection catches up (the page before was full);
# pages are bounded in bytes too, so large events make smaller batches.
CATCH_UP_BATCH_SIZE = 2_000
DOCUMENT_CACHE_SIZE = 10_000


class Projection:
    def __init__(
        self,
        plugin_name: str,
        name: str,
        *,
        aggregate_types: Iterable[str] = (),
        batch_size: int = 200,
        catch_up_batch_size: int | None = None,
        on_failure: OnFailure = "stop",
        max_attempts: int = 3,
        retry_seconds: float = 5.0,
        cache_size: int = DOCUMENT_CACHE_SIZE,
        tenant_keyed: bool = False,
        version: int = 1,
        rebuild_on_change: bool = False,
    ) -> None:
        check_runner_name("projection", name)
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        if catch_up_batch_size is not None and catch_up_batch_size < batch_size:
            raise ValueError(f"projection {name}: catch_up_batch_size must be at least batch_size")
        if on_failure not in get_args(OnFailure):
            raise ValueError(f"projection {name}: on_failure must be 'stop' or 'park', not {on_failure!r}")
        if max_attempts < 1:
            raise ValueError(f"projection {name}: max_attempts must be at least 1")
        if not retry_seconds > 0:
            raise ValueError(f"projection {name}: retry_seconds must be positive")
        if cache_size < 0:
            raise ValueError(f"projection {name}: cache_size must not be negative")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"projection {name}: version must be a whole number from 1, not {version!r}")
        self.plugin_name = plugin_name
        self.name = name
        # The plugin's promise that every document is keyed "<tenant>:..."
        # by the tenant of the aggregates it is made of: a tenant-scoped read
        # grant may then read its own tenant's documents (docs/security.md).
        self.tenant_keyed = tenant_keyed
        # Bumped by the plugin's author when the documents' meaning changes
        # (a handler fixed, a document's shape changed, an upcaster that
        # changes what events say): the store keeps the version the
        # documents were built by, and a runner of another version does not
        # go on from them (PROJECTION_VERSION_CHANGED) until the projection
        # is rebuilt, or rebuilds it itself with ``rebuild_on_change``.
        self.version = version
        self.rebuild_on_change = rebuild_on_change
        self.aggregate_types = frozenset(aggregate_types)
        self.batch_size = batch_size
        # Far behind (a rebuild, a new read model, a long stop), a batch is
        # bigger: each commit's fixed cost is shared by more events, and a
        # document written by several of them is written once.
        self.catch_up_batch_size = (
            max(batch_size, CATCH_UP_BATCH_SIZE) if catch_up_batch_size is None else catch_up_batch_size
        )
        self.on_failure: OnFailure = on_failure
        self.max_attempts = max_attempts
        self.retry_seconds = retry_seconds
        # Documents kept in memory between batches, the least recently used
        # leaving first: one that left is read again when a handler needs it.
        self.cache_size = cache_size
        self.handlers: dict[str, tuple[type[Message], ProjectionHandler]] = {}

    def on(self, event_type: type[Message]) -> Callable[[H], H]:
        """Register the decorated function for events of ``event_type``."""

        def register(handler: H) -> H:
            name = str(event_type.DESCRIPTOR.full_name)
            if name in self.handlers:
                raise ValueError(f"projection {self.name}: {name} has two handlers")
            self.handlers[name] = (event_type, handler)
            return handler

        return register

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(self.handlers)

    def __repr__(self) -> str:
        return f"Projection({self.name!r}, plugin={self.plugin_name!r})"
