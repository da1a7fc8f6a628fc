"""Transfers between accounts: an aggregate that records each transfer, and a
process manager (the ``bank.transfers`` reaction) that moves the money.

    TransferMoney ──▶ TransferRequested ──reaction──▶ Withdraw (source)
        refused (insufficient funds, closed …) ──on_refused──▶ FailTransfer
    MoneyWithdrawn ──reaction──▶ Deposit (target)
        refused (target closed …) ──on_refused──▶ Deposit (source: the refund)
    MoneyDeposited on the target ──reaction──▶ CompleteTransfer
    MoneyDeposited on the source (refund) ──reaction──▶ RecordRefund

The reaction keeps a ``TransferProgress`` per transfer, keyed by the
transfer's id: the commands it sends carry that id in their metadata
(``transfer``), so the account events they cause carry it too. Only those:
any client may put a ``transfer`` in its own command's metadata, so an
account event counts only if its origin is this reaction's, which the
server sets on the reaction's commands and refuses on a client's
(RESERVED_ORIGIN). A refund that
is itself refused (the source closed in the meantime) is parked for an
operator: the money is then held by no account, and the transfer stays
pending.

A transfer stays within its own tenant (docs/security.md, "Tenants"): its
source and target must be accounts of the tenant its id names
(``acme:t-1`` moves money between ``acme:`` accounts only; a transfer of
no tenant between accounts of none). The reaction's commands pass no
policy and act for whoever asked, so without this check tenant globex
could ask for a transfer out of acme's account, which its own Withdraw
there is refused, and the reaction would drain it.

CompleteTransfer, FailTransfer and RecordRefund end a transfer: only this
reaction sends them (``sent_by_reactions``), after it moved the money; a
client's is refused (PERMISSION_DENIED, COMMAND_INTERNAL), or any caller
allowed to submit to transfers could end one with no money moved.
"""

from __future__ import annotations

from domain_plugins.bank_account.domain import plugin
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import (
    CommandContext,
    InvalidArgumentError,
    ProjectedEvent,
    Refusal,
    Send,
    ValidationError,
    tenant_of_id,
)

TRANSFER = "transfer"  # the metadata key that ties account events to their transfer
REACTION = "bank.transfers"
# The origin of the reaction's own commands and their events: the server's
# (a client's command may not claim it), unlike the metadata.
SENT_BY_THE_REACTION = f"reaction:{REACTION}"

transfer = plugin.aggregate(
    "Transfer", state=bank.Transfer, not_found="TRANSFER_NOT_FOUND", already_exists="TRANSFER_ALREADY_REQUESTED"
)


@transfer.command(bank.TransferMoney, creates=True)
def transfer_money(
    command: bank.TransferMoney, state: bank.Transfer, context: CommandContext
) -> bank.TransferRequested:
    violations = []
    if not command.source_account_id:
        violations.append(("source_account_id", "must name the account to debit"))
    if not command.target_account_id:
        violations.append(("target_account_id", "must name the account to credit"))
    if command.amount <= 0:
        violations.append(("amount", f"must be positive, got {command.amount}"))
    if violations:
        raise InvalidArgumentError("the transfer is not well formed", reason="INVALID_TRANSFER", violations=violations)
    if command.source_account_id == command.target_account_id:
        raise InvalidArgumentError(
            "a transfer needs two different accounts", reason="SAME_ACCOUNT", field="target_account_id"
        )
    _require_same_tenant(command, context)
    return bank.TransferRequested(
        source_account_id=command.source_account_id,
        target_account_id=command.target_account_id,
        amount=command.amount,
    )


def _require_same_tenant(command: bank.TransferMoney, context: CommandContext) -> None:
    """Refuse an account of another tenant than the transfer's: the policy
    held the sender to the transfer's tenant, not to the accounts it names,
    which the reaction then debits and credits for the sender."""
    tenant = tenant_of_id(context.aggregate_id)
    foreign = [
        (field, account_id)
        for field, account_id in (
            ("source_account_id", command.source_account_id),
            ("target_account_id", command.target_account_id),
        )
        if tenant_of_id(account_id) != tenant
    ]
    if foreign:
        whose = f"tenant {tenant!r}" if tenant else "no tenant"
        raise InvalidArgumentError(
            f"transfer {context.aggregate_id!r} is of {whose}: it moves money between that tenant's accounts only",
            reason="CROSS_TENANT_TRANSFER",
            violations=[(field, f"{account_id!r} is not an account of {whose}") for field, account_id in foreign],
        )


def _require_pending(state: bank.Transfer, context: CommandContext) -> None:
    if state.status != bank.TRANSFER_STATUS_PENDING:
        raise ValidationError(f"transfer {context.aggregate_id!r} is over", reason="TRANSFER_OVER")


@transfer.command(bank.CompleteTransfer, requires_existing=True, sent_by_reactions=[REACTION])
def complete(command: bank.CompleteTransfer, state: bank.Transfer, context: CommandContext) -> bank.TransferCompleted:
    _require_pending(state, context)
    return bank.TransferCompleted()


@transfer.command(bank.FailTransfer, requires_existing=True, sent_by_reactions=[REACTION])
def fail(command: bank.FailTransfer, state: bank.Transfer, context: CommandContext) -> bank.TransferFailed:
    _require_pending(state, context)
    return bank.TransferFailed(reason=command.reason)


@transfer.command(bank.RecordRefund, requires_existing=True, sent_by_reactions=[REACTION])
def refunded(command: bank.RecordRefund, state: bank.Transfer, context: CommandContext) -> bank.TransferRefunded:
    _require_pending(state, context)
    return bank.TransferRefunded(reason=command.reason)


@transfer.apply(bank.TransferRequested)
def _requested(state: bank.Transfer, event: bank.TransferRequested) -> None:
    state.source_account_id = event.source_account_id
    state.target_account_id = event.target_account_id
    state.amount = event.amount
    state.status = bank.TRANSFER_STATUS_PENDING


@transfer.apply(bank.TransferCompleted)
def _completed(state: bank.Transfer, event: bank.TransferCompleted) -> None:
    state.status = bank.TRANSFER_STATUS_COMPLETED


@transfer.apply(bank.TransferFailed)
def _failed(state: bank.Transfer, event: bank.TransferFailed) -> None:
    state.status = bank.TRANSFER_STATUS_FAILED
    state.reason = event.reason


@transfer.apply(bank.TransferRefunded)
def _refunded(state: bank.Transfer, event: bank.TransferRefunded) -> None:
    state.status = bank.TRANSFER_STATUS_REFUNDED
    state.reason = event.reason


# -- the process manager ------------------------------------------------------


def transfer_of(envelope: ProjectedEvent) -> str:
    """The transfer an event belongs to: the transfer's own events, and the
    account events that the reaction's commands (tagged ``transfer``) caused.
    A client's account event belongs to none, whatever its metadata says: a
    deposit tagged with a stranger's transfer would join that transfer's
    state (its account one of the state's subjects, so forgetting it would
    delete the stranger's transfer in flight), or pass for the credit the
    transfer waits for."""
    if envelope.aggregate_type == "Transfer":
        return envelope.aggregate_id
    if envelope.origin != SENT_BY_THE_REACTION:
        return ""
    return envelope.metadata.get(TRANSFER, "")


transfers = plugin.reaction(
    REACTION,
    aggregate_types=["Transfer", "Account"],
    state=bank.TransferProgress,
    state_key=transfer_of,
)


def _to(progress: bank.TransferProgress, account_id: str, command: bank.Deposit | bank.Withdraw) -> Send:
    return Send(account_id, command, metadata={TRANSFER: progress.transfer_id})


@transfers.on(bank.TransferRequested)
def debit(event: bank.TransferRequested, envelope: ProjectedEvent, progress: bank.TransferProgress) -> Send:
    progress.transfer_id = envelope.aggregate_id
    progress.source_account_id = event.source_account_id
    progress.target_account_id = event.target_account_id
    progress.amount = event.amount
    progress.stage = bank.TRANSFER_STAGE_DEBITING
    return _to(progress, event.source_account_id, bank.Withdraw(amount=event.amount))


@transfers.on(bank.MoneyWithdrawn)
def credit(event: bank.MoneyWithdrawn, envelope: ProjectedEvent, progress: bank.TransferProgress) -> Send | None:
    if progress.stage != bank.TRANSFER_STAGE_DEBITING or envelope.aggregate_id != progress.source_account_id:
        return None  # not a transfer's debit
    progress.stage = bank.TRANSFER_STAGE_CREDITING
    return _to(progress, progress.target_account_id, bank.Deposit(amount=progress.amount))


@transfers.on(bank.MoneyDeposited)
def finish(event: bank.MoneyDeposited, envelope: ProjectedEvent, progress: bank.TransferProgress) -> Send | None:
    if progress.stage == bank.TRANSFER_STAGE_CREDITING and envelope.aggregate_id == progress.target_account_id:
        done = Send(progress.transfer_id, bank.CompleteTransfer())
    elif progress.stage == bank.TRANSFER_STAGE_REFUNDING and envelope.aggregate_id == progress.source_account_id:
        done = Send(progress.transfer_id, bank.RecordRefund(reason=progress.reason))
    else:
        return None  # not a transfer's credit or refund
    progress.Clear()  # the transfer is over: its state is deleted
    return done


@transfers.on_refused
def compensate(refusal: Refusal, envelope: ProjectedEvent, progress: bank.TransferProgress) -> Send | None:
    command = refusal.command
    if progress.stage == bank.TRANSFER_STAGE_DEBITING and isinstance(command, bank.Withdraw):
        transfer_id = progress.transfer_id
        progress.Clear()  # nothing moved: the transfer is over
        return Send(transfer_id, bank.FailTransfer(reason=refusal.reason))
    if progress.stage == bank.TRANSFER_STAGE_CREDITING and isinstance(command, bank.Deposit):
        progress.stage = bank.TRANSFER_STAGE_REFUNDING
        progress.reason = refusal.reason
        return _to(progress, progress.source_account_id, bank.Deposit(amount=progress.amount))
    return None  # a refused refund (or anything unforeseen): parked for an operator
