"""What a refusal may tell its caller about the state of an aggregate.

A command's refusal is decided on the aggregate's state, and its details
say so: INSUFFICIENT_FUNDS carries the balance, WRONG_EXPECTED_VERSION the
current version, AGGREGATE_TYPE_MISMATCH the type the id has, a conflict
the version it reached, COMMAND_ID_REUSED the aggregate and the type of the
command the id was first used for (decided by that command's aggregate
type, not the one sent: it may be another's). A caller allowed to submit a command is not always
allowed to read the aggregate (a teller who may deposit but not read
accounts), and must not read it through refusals. So with authentication on,
such a refusal goes to a caller that may not read the aggregate's type with
its code and reason only: the message says no more than the reason, and of
the metadata only what describes the caller's own request is left (which
field, which command of a batch). The audit log keeps every detail.

The code and the reason are the command's answer and always go: a caller
that may submit Withdraw learns whether the balance covers the amount it
asked for (dry runs, audited, let it ask again). Errors that say nothing of
the state (malformed input, policy, overload) go as they are.

Only on the error path: a command that succeeds costs nothing here.
"""

from __future__ import annotations

from service.errors import (
    AggregateTypeMismatch,
    ChronicleError,
    CommandIdReused,
    ConcurrencyConflict,
    ValidationError,
    WrongExpectedVersion,
)
from service.plugins.registry import Registry
from service.principal import Principal
from service.security.policy import ANY, Authorizer

# Errors whose message and metadata may describe the aggregate's state.
STATE_REVEALING: tuple[type[ChronicleError], ...] = (
    ValidationError,
    WrongExpectedVersion,
    AggregateTypeMismatch,
    ConcurrencyConflict,
    CommandIdReused,
)
# Metadata that describes the caller's own request, not the state: kept.
REQUEST_METADATA = frozenset(
    {"field", "batch_index", "command_id", "aggregate_id", "expected_version", "command_aggregate_type", "attempts"}
)


class Disclosure:
    """Decides, per refusal and caller, how much of it the caller hears."""

    def __init__(self, authorizer: Authorizer, registry: Registry) -> None:
        self._authorizer = authorizer
        self._registry = registry

    def refusal(self, error: ChronicleError, principal: Principal, command_type: str) -> ChronicleError:
        """``error`` as the caller ``principal`` may hear it, for a command
        of ``command_type`` (its full Protobuf name, as sent)."""
        if not self._authorizer.enforcing or not isinstance(error, STATE_REVEALING):
            return error
        if isinstance(error, AggregateTypeMismatch):
            aggregate_type = error.metadata.get("aggregate_type", "")
        elif isinstance(error, CommandIdReused):
            # It speaks of the command the id was first used for (its
            # aggregate, its type), which may be another type's: that one's
            # read grant decides. One whose type no loaded plugin declares
            # any more: only a caller that may read every type hears it.
            original = self._registry.command(error.original_type) if error.original_type else None
            if original is None:
                return error if ANY in self._authorizer.grant(principal).read else withheld(error)
            aggregate_type = original.aggregate.name
        else:
            spec = self._registry.command(command_type)
            if spec is None:
                return error  # refused before it had a type: nothing of the state in it
            aggregate_type = spec.aggregate.name
        # The id names the tenant a tenant-scoped read grant must hold ("": none).
        aggregate_id = error.metadata.get("aggregate_id", "")
        if aggregate_type and self._authorizer.may_read_id(principal, aggregate_type, aggregate_id):
            return error
        return withheld(error)


def withheld(error: ChronicleError) -> ChronicleError:
    """A copy of ``error`` (same class, so the same status code; same
    reason) without what it says of the state."""
    message = (
        f"refused: {error.reason} (the details are given to callers that may read the aggregate)"
        if error.reason
        else "refused"
    )
    metadata = {key: value for key, value in error.metadata.items() if key in REQUEST_METADATA}
    copy = type(error).__new__(type(error))
    ChronicleError.__init__(copy, message, reason=error.reason, metadata=metadata)
    if isinstance(copy, ValidationError):
        copy.field = metadata.get("field")
    return copy
