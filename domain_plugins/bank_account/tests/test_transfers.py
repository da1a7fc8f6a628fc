"""Transfers: the Transfer aggregate's rules, and the bank.transfers process
manager (debit, credit, refund) run by the real reaction runner in process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from domain_plugins.bank_account import plugin
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.bank_account.transfers import TRANSFER, compensate, credit, debit
from service.plugins import InvalidArgumentError, ProjectedEvent, Refusal, Send, ValidationError
from service.testing import ReactionRun, Scenario

REQUESTED = bank.TransferRequested(source_account_id="acc-1", target_account_id="acc-2", amount=30)


def transfer() -> Scenario:
    return Scenario(plugin, aggregate_id="t-1")


def envelope(aggregate_id: str, aggregate_type: str = "Account", **metadata: str) -> ProjectedEvent:
    return ProjectedEvent("e-1", aggregate_id, aggregate_type, 1, 1, "", 0, metadata=metadata)


# -- the aggregate -------------------------------------------------------------


def test_a_transfer_is_requested() -> None:
    transfer().when(bank.TransferMoney(source_account_id="acc-1", target_account_id="acc-2", amount=30)).then(REQUESTED)


def test_a_malformed_transfer_names_every_field_at_fault() -> None:
    error = transfer().when(bank.TransferMoney(amount=-5)).then_fails(InvalidArgumentError, reason="INVALID_TRANSFER")
    assert isinstance(error, ValidationError)
    assert [v.field for v in error.violations] == ["source_account_id", "target_account_id", "amount"]


def test_a_transfer_needs_two_accounts() -> None:
    transfer().when(bank.TransferMoney(source_account_id="acc-1", target_account_id="acc-1", amount=5)).then_fails(
        InvalidArgumentError, reason="SAME_ACCOUNT"
    )


def fields_refused_cross_tenant(aggregate_id: str, command: bank.TransferMoney) -> list[str]:
    error = (
        Scenario(plugin, aggregate_id=aggregate_id)
        .when(command)
        .then_fails(InvalidArgumentError, reason="CROSS_TENANT_TRANSFER")
    )
    assert isinstance(error, ValidationError)
    return [v.field for v in error.violations]


def test_a_transfer_from_another_tenants_account_is_refused() -> None:
    theft = bank.TransferMoney(source_account_id="globex:acc-1", target_account_id="acme:acc-1", amount=1000)
    assert fields_refused_cross_tenant("acme:t-1", theft) == ["source_account_id"]


def test_a_transfer_to_another_tenants_account_is_refused() -> None:
    gift = bank.TransferMoney(source_account_id="acme:acc-1", target_account_id="globex:acc-1", amount=5)
    assert fields_refused_cross_tenant("acme:t-1", gift) == ["target_account_id"]


def test_a_transfer_of_no_tenant_moves_no_tenants_money() -> None:
    reach = bank.TransferMoney(source_account_id="acme:acc-1", target_account_id="acc-2", amount=5)
    transfer().when(reach).then_fails(InvalidArgumentError, reason="CROSS_TENANT_TRANSFER")


def test_a_transfer_within_its_tenant_is_requested() -> None:
    own = bank.TransferMoney(source_account_id="acme:acc-1", target_account_id="acme:acc-2", amount=5)
    Scenario(plugin, aggregate_id="acme:t-1").when(own).then(
        bank.TransferRequested(source_account_id="acme:acc-1", target_account_id="acme:acc-2", amount=5)
    )


def test_a_transfer_ends_once() -> None:
    transfer().given(REQUESTED).when(bank.CompleteTransfer()).then(bank.TransferCompleted())
    transfer().given(REQUESTED, bank.TransferCompleted()).when(bank.RecordRefund(reason="X")).then_fails(
        ValidationError, reason="TRANSFER_OVER"
    )


# -- the process manager's functions ------------------------------------------


def test_a_requested_transfer_debits_the_source_tagged_with_the_transfer() -> None:
    progress = bank.TransferProgress()
    sent = debit(REQUESTED, envelope("t-1", "Transfer"), progress)
    assert sent == Send("acc-1", bank.Withdraw(amount=30), metadata={TRANSFER: "t-1"})
    assert progress.stage == bank.TRANSFER_STAGE_DEBITING


def test_a_withdrawal_that_is_no_transfer_s_debit_is_ignored() -> None:
    assert credit(bank.MoneyWithdrawn(amount=30), envelope("acc-1"), bank.TransferProgress()) is None


def test_a_refused_credit_refunds_the_source() -> None:
    progress = bank.TransferProgress(
        transfer_id="t-1",
        source_account_id="acc-1",
        target_account_id="acc-2",
        amount=30,
        stage=bank.TRANSFER_STAGE_CREDITING,
    )
    refusal = Refusal(Send("acc-2", bank.Deposit(amount=30)), "c-1", "ACCOUNT_CLOSED", "closed")
    sent = compensate(refusal, envelope("acc-1", transfer="t-1"), progress)
    assert sent == Send("acc-1", bank.Deposit(amount=30), metadata={TRANSFER: "t-1"})
    assert progress.stage == bank.TRANSFER_STAGE_REFUNDING


# -- the whole process, run by the reaction runner ----------------------------


@pytest.fixture
def bank_run() -> Iterator[ReactionRun]:
    with ReactionRun(plugin) as run:
        run.submit("acc-1", bank.OpenAccount(owner="ann"))
        run.submit("acc-1", bank.Deposit(amount=100))
        run.submit("acc-2", bank.OpenAccount(owner="bob"))
        run.submit("closed", bank.OpenAccount(owner="cy"))
        run.submit("closed", bank.CloseAccount())
        yield run


def _transfer(run: ReactionRun, transfer_id: str, target: str, amount: int) -> bank.Transfer:
    run.submit(transfer_id, bank.TransferMoney(source_account_id="acc-1", target_account_id=target, amount=amount))
    run.settle()
    return run.state(transfer_id, bank.Transfer)


def test_a_transfer_moves_the_money(bank_run: ReactionRun) -> None:
    assert _transfer(bank_run, "t-1", "acc-2", 30).status == bank.TRANSFER_STATUS_COMPLETED
    assert bank_run.state("acc-1", bank.Account).balance == 70
    assert bank_run.state("acc-2", bank.Account).balance == 30


def test_a_transfer_beyond_the_balance_fails_and_moves_nothing(bank_run: ReactionRun) -> None:
    state = _transfer(bank_run, "t-1", "acc-2", 500)
    assert (state.status, state.reason) == (bank.TRANSFER_STATUS_FAILED, "INSUFFICIENT_FUNDS")
    assert bank_run.state("acc-1", bank.Account).balance == 100
    assert bank_run.state("acc-2", bank.Account).balance == 0


def test_a_transfer_to_a_closed_account_is_refunded_once(bank_run: ReactionRun) -> None:
    state = _transfer(bank_run, "t-1", "closed", 40)
    assert (state.status, state.reason) == (bank.TRANSFER_STATUS_REFUNDED, "ACCOUNT_CLOSED")
    assert bank_run.events("acc-1")[-2:] == [bank.MoneyWithdrawn(amount=40), bank.MoneyDeposited(amount=40)]
    assert bank_run.state("acc-1", bank.Account).balance == 100
    assert bank_run.parked("bank.transfers") == []


def test_a_refund_the_source_refuses_is_parked_for_an_operator(bank_run: ReactionRun) -> None:
    bank_run.submit("acc-3", bank.OpenAccount(owner="dee"))
    bank_run.submit("acc-3", bank.Deposit(amount=10))
    bank_run.submit("t-1", bank.TransferMoney(source_account_id="acc-3", target_account_id="closed", amount=10))
    bank_run.step()  # the request: the source is debited
    assert bank_run.events("acc-3")[-1] == bank.MoneyWithdrawn(amount=10)
    bank_run.submit("acc-3", bank.CloseAccount())  # emptied, it closes before the credit is refused
    bank_run.settle()
    (parked,) = bank_run.parked("bank.transfers")
    assert (parked.aggregate_id, parked.reason) == ("acc-3", "ACCOUNT_CLOSED")
    assert parked.command.type_url.endswith("/bank.v1.Deposit")
    assert bank_run.state("t-1", bank.Transfer).status == bank.TRANSFER_STATUS_PENDING


def test_a_clients_deposit_tagged_with_a_transfer_does_not_enter_its_process(bank_run: ReactionRun) -> None:
    # Any caller who may deposit could tag its deposit with another
    # transfer's id (metadata is the client's): routed by that tag alone, the
    # deposit joined the transfer's state, and its account became one of the
    # state's subjects, so forgetting the caller's own account deleted a
    # stranger's transfer in flight. And a deposit to the target while the
    # credit was awaited completed the transfer on the caller's money.
    bank_run.submit("acc-3", bank.OpenAccount(owner="dee"))
    bank_run.submit("acc-3", bank.Deposit(amount=10))
    bank_run.submit("t-1", bank.TransferMoney(source_account_id="acc-3", target_account_id="closed", amount=10))
    bank_run.step()  # the request: the source is debited
    bank_run.submit("acc-3", bank.CloseAccount())  # the refund is refused: the transfer waits for an operator
    bank_run.settle()
    before = bank_run.process_state("bank.transfers", "t-1")
    assert before is not None and "acc-eve" not in before.subjects
    bank_run.submit("acc-eve", bank.OpenAccount(owner="eve"))
    bank_run.submit("acc-eve", bank.Deposit(amount=1), metadata={TRANSFER: "t-1"})
    bank_run.settle()
    assert bank_run.process_state("bank.transfers", "t-1") == before

    # Nor does one that looks like the credit the transfer waits for: it
    # lands right after the debit, before the reaction's own credit.
    bank_run.submit("t-2", bank.TransferMoney(source_account_id="acc-1", target_account_id="acc-2", amount=30))
    bank_run.step()  # debited
    bank_run.submit("acc-2", bank.Deposit(amount=1), metadata={TRANSFER: "t-2"})
    bank_run.step()  # the debit seen (the credit sent), then the caller's deposit
    assert bank_run.state("t-2", bank.Transfer).status == bank.TRANSFER_STATUS_PENDING
    bank_run.settle()
    assert bank_run.state("t-2", bank.Transfer).status == bank.TRANSFER_STATUS_COMPLETED
    assert bank_run.state("acc-2", bank.Account).balance == 31
