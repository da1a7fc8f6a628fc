"""What forgetting an aggregate deleted besides its own data, said to the
operator: in ForgetAggregate's answer, its audit entry and a WARNING log
line. A reaction's process state deleted is a saga stopped in flight, its
side effects (stock reserved, money charged) left as they were, so the
operator must be able to tell that it happened, where, and which other
aggregates those processes named, to finish or compensate them by hand
(docs/plugins.md, "Forgetting")."""

from __future__ import annotations

from chronicle.v1 import admin_service_pb2 as pb
from service.principal import in_tenant
from service.store.records import PARKED_COMMAND_TYPE, PROCESS_STATE_TYPE, Forgetting
from service.store.server_names import is_server_own


def deleted_documents(forgetting: Forgetting, *, tenant: str | None = None) -> list[pb.ForgottenDocuments]:
    """One entry per projection or reaction that lost documents, by name,
    with the other aggregates its deleted documents named (a reaction's
    processes, a projection's documents shared with other aggregates).
    ``tenant``: the answer is for that tenant's administrator, who is told
    how many of the others are another tenant's, not which."""
    by_name: dict[str, pb.ForgottenDocuments] = {}
    for (name, type_name), count in sorted(forgetting.documents.items()):
        if is_server_own(name):
            continue  # a projection's stored failure, met on its event: no read model of anyone's
        entry = by_name.setdefault(name, pb.ForgottenDocuments(name=name))
        if type_name == PROCESS_STATE_TYPE:
            entry.process_states += count
        elif type_name == PARKED_COMMAND_TYPE:
            entry.parked_commands += count
        else:
            entry.documents += count
    for name, others in forgetting.other_subjects.items():
        if name in by_name:
            entry = by_name[name]
            shown = [i for i in others.shown if tenant is None or in_tenant(tenant, i)]
            entry.other_subjects.extend(shown)
            entry.other_subjects_withheld = len(others.shown) - len(shown)
            entry.other_subjects_omitted = others.total - len(others.shown)
    return list(by_name.values())


def summary(deleted: list[pb.ForgottenDocuments]) -> str:
    """``deleted`` in words, for the audit and the log: "" when nothing was;
    e.g. "deleted: shop.fulfil: 1 process state (in flight: what it did
    stays done; the other aggregates named: sku-1, pay-7), 2 parked
    commands; orders: 3 documents (shared with other aggregates, whose
    documents are missing until their next event: acc-2)"."""
    said = []
    for entry in deleted:
        parts = []
        others = other_subjects(entry)
        if entry.process_states:
            named = f"; the other aggregates named: {others}" if others else ""
            parts.append(
                f"{_counted(entry.process_states, 'process state')} (in flight: what it did stays done{named})"
            )
        if entry.parked_commands:
            parts.append(_counted(entry.parked_commands, "parked command"))
        if entry.documents:
            shared = (
                f" (shared with other aggregates, whose documents are missing until their next event: {others})"
                if others and not entry.process_states
                else ""
            )
            parts.append(_counted(entry.documents, "document") + shared)
        said.append(f"{entry.name}: {', '.join(parts)}")
    return f"deleted: {'; '.join(said)}" if said else ""


def in_flight(deleted: list[pb.ForgottenDocuments]) -> int:
    """How many reactions' processes were deleted."""
    return sum(entry.process_states for entry in deleted)


def other_subjects(entry: pb.ForgottenDocuments) -> str:
    """The other aggregates ``entry``'s deleted documents named, in words:
    "acc-2, acc-3", "acc-2, acc-3 and 18 more", "acme:acc-2 and 1 of
    another tenant"; "" when none."""
    said = [", ".join(entry.other_subjects)] if entry.other_subjects else []
    if entry.other_subjects_withheld:
        said.append(f"{entry.other_subjects_withheld} of another tenant")
    if entry.other_subjects_omitted:
        said.append(f"{entry.other_subjects_omitted} more")
    return " and ".join(said)


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
