"""What forgetting an aggregate deleted besides its own data, said to the
operator: in ForgetAggregate's answer, its audit entry and a WARNING log
line. A reaction's process state deleted is a saga stopped in flight, its
side effects (stock reserved, money charged) left as they were, so the
operator must be able to tell that it happened and where (docs/plugins.md,
"Forgetting")."""

from __future__ import annotations

from chronicle.v1 import admin_service_pb2 as pb
from chronicle.v1 import reaction_service_pb2 as reaction_pb
from service.store.records import PARKED_COMMAND_TYPE, Forgetting

PROCESS_STATE_TYPE = reaction_pb.ProcessState.DESCRIPTOR.full_name


def deleted_documents(forgetting: Forgetting) -> list[pb.ForgottenDocuments]:
    """One entry per projection or reaction that lost documents, by name."""
    by_name: dict[str, pb.ForgottenDocuments] = {}
    for (name, type_name), count in sorted(forgetting.documents.items()):
        entry = by_name.setdefault(name, pb.ForgottenDocuments(name=name))
        if type_name == PROCESS_STATE_TYPE:
            entry.process_states += count
        elif type_name == PARKED_COMMAND_TYPE:
            entry.parked_commands += count
        else:
            entry.documents += count
    return list(by_name.values())


def summary(deleted: list[pb.ForgottenDocuments]) -> str:
    """``deleted`` in words, for the audit and the log: "" when nothing was;
    e.g. "deleted: reaction shop.fulfil: 1 process state (in flight: its
    side effects stay), 2 parked commands; projection orders: 3 documents"."""
    said = []
    for entry in deleted:
        parts = []
        if entry.process_states:
            parts.append(f"{_counted(entry.process_states, 'process state')} (in flight: what it did stays done)")
        if entry.parked_commands:
            parts.append(_counted(entry.parked_commands, "parked command"))
        if entry.documents:
            parts.append(_counted(entry.documents, "document"))
        said.append(f"{entry.name}: {', '.join(parts)}")
    return f"deleted: {'; '.join(said)}" if said else ""


def in_flight(deleted: list[pb.ForgottenDocuments]) -> int:
    """How many reactions' processes were deleted."""
    return sum(entry.process_states for entry in deleted)


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
