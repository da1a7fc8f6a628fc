"""Values that cross the store boundary. All frozen: a store never shares
mutable state with its callers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. The store assigns its version and position."""

    event_id: str
    aggregate_type: str
    event_type: str
    schema_version: int
    payload: bytes
    timestamp_us: int
    command_id: str = ""
    user_id: str = ""
    origin: str = ""
    correlation_id: str = ""
    causation_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as committed: ``version`` is its place in the aggregate
    (1-based, gapless), ``position`` its place in the global log."""

    event_id: str
    aggregate_id: str
    aggregate_type: str
    version: int
    position: int
    event_type: str
    schema_version: int
    payload: bytes
    timestamp_us: int
    command_id: str
    user_id: str
    origin: str
    correlation_id: str
    causation_id: str
    metadata: Mapping[str, str]

    @classmethod
    def committed(cls, new: NewEvent, *, aggregate_id: str, version: int, position: int) -> RecordedEvent:
        return cls(
            event_id=new.event_id,
            aggregate_id=aggregate_id,
            aggregate_type=new.aggregate_type,
            version=version,
            position=position,
            event_type=new.event_type,
            schema_version=new.schema_version,
            payload=new.payload,
            timestamp_us=new.timestamp_us,
            command_id=new.command_id,
            user_id=new.user_id,
            origin=new.origin,
            correlation_id=new.correlation_id,
            causation_id=new.causation_id,
            metadata=new.metadata,
        )


@dataclass(frozen=True, slots=True)
class Rejection:
    """A recorded refusal: enough to raise the same error again."""

    kind: str
    reason: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """What a command id produced, kept so a retry gets the same answer.

    ``fingerprint`` identifies the command's content (aggregate, type and
    payload) so a reused id with other content can be told apart from a
    retry. A command that appended events covers versions ``first_version``
    to ``last_version``; one that appended nothing has ``first_version ==
    last_version + 1``; a refused one carries its ``rejection``.
    """

    command_id: str
    aggregate_id: str
    command_type: str
    fingerprint: bytes
    first_version: int
    last_version: int
    rejection: Rejection | None = None

    @property
    def event_count(self) -> int:
        return self.last_version - self.first_version + 1


@dataclass(frozen=True, slots=True)
class ClaimChange:
    """Take (or, with ``release``, give up) a uniqueness claim: ``value`` is
    held by at most one aggregate within ``scope`` (e.g. an e-mail address
    in ``users.email``). Written in the transaction of an append, for the
    aggregate appended to; only the holder can release a value."""

    scope: str
    value: str
    release: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An aggregate's state at ``version``, as serialized bytes.

    ``schema_version`` is the plugin's state schema version when the
    snapshot was taken; a snapshot whose type or schema version differs from
    the plugin's current one is ignored and the state rebuilt from events.
    """

    aggregate_id: str
    aggregate_type: str
    version: int
    state_type: str
    schema_version: int
    state: bytes


@dataclass(frozen=True, slots=True)
class AggregateHead:
    """Where an aggregate stands: its type and latest version."""

    aggregate_type: str
    version: int


class CommandAlreadyRecorded(Exception):
    """The command id is already recorded; ``record`` is what it produced.

    Internal signal between the store and the processor, which turns it into
    a replay of the original result or ``CommandIdReused``.
    """

    def __init__(self, record: CommandRecord) -> None:
        super().__init__(record.command_id)
        self.record = record
