"""The bank account's rules, one behaviour per test."""

from __future__ import annotations

from domain_plugins.bank_account import plugin
from domain_plugins.bank_account.domain import MAX_BALANCE
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import AlreadyExistsError, InvalidArgumentError, NotFoundError, ValidationError
from service.testing import Scenario

OPENED = bank.AccountOpened(owner="ann")


def account() -> Scenario:
    return Scenario(plugin, aggregate_id="acc-1")


def test_open_account_records_the_owner() -> None:
    account().when(bank.OpenAccount(owner="ann")).then(bank.AccountOpened(owner="ann"))


def test_an_account_opens_only_once() -> None:
    account().given(OPENED).when(bank.OpenAccount(owner="bob")).then_fails(
        AlreadyExistsError, reason="ACCOUNT_ALREADY_OPEN"
    )


def test_an_account_needs_an_owner() -> None:
    account().when(bank.OpenAccount(owner="  ")).then_fails(InvalidArgumentError, reason="OWNER_REQUIRED")


def test_deposit_adds_money() -> None:
    account().given(OPENED).when(bank.Deposit(amount=5)).then(bank.MoneyDeposited(amount=5))


def test_a_deposit_beyond_the_balance_limit_is_refused() -> None:
    account().given(OPENED, bank.MoneyDeposited(amount=MAX_BALANCE - 10)).when(bank.Deposit(amount=11)).then_fails(
        ValidationError, reason="BALANCE_LIMIT"
    )


def test_a_deposit_up_to_the_balance_limit_is_accepted() -> None:
    account().given(OPENED, bank.MoneyDeposited(amount=MAX_BALANCE - 10)).when(bank.Deposit(amount=10)).then(
        bank.MoneyDeposited(amount=10)
    )


def test_deposit_must_be_positive() -> None:
    for amount in (0, -3):
        account().given(OPENED).when(bank.Deposit(amount=amount)).then_fails(
            InvalidArgumentError, reason="INVALID_AMOUNT"
        )


def test_withdraw_must_be_positive() -> None:
    account().given(OPENED).when(bank.Withdraw(amount=0)).then_fails(InvalidArgumentError, reason="INVALID_AMOUNT")


def test_withdraw_within_the_balance() -> None:
    account().given(OPENED, bank.MoneyDeposited(amount=10)).when(bank.Withdraw(amount=10)).then(
        bank.MoneyWithdrawn(amount=10)
    )


def test_withdraw_beyond_the_balance_is_refused_with_the_balance() -> None:
    error = (
        account()
        .given(OPENED, bank.MoneyDeposited(amount=10), bank.MoneyWithdrawn(amount=4))
        .when(bank.Withdraw(amount=7))
        .then_fails(ValidationError, reason="INSUFFICIENT_FUNDS")
    )
    assert error.metadata["balance"] == "6"


def test_nothing_but_open_on_a_missing_account() -> None:
    for command in (bank.Deposit(amount=1), bank.Withdraw(amount=1), bank.CloseAccount()):
        account().when(command).then_fails(NotFoundError, reason="ACCOUNT_NOT_FOUND")


def test_close_account() -> None:
    account().given(OPENED).when(bank.CloseAccount()).then(bank.AccountClosed())


def test_an_account_holding_money_cannot_be_closed_and_the_refusal_says_how_much() -> None:
    error = (
        account()
        .given(OPENED, bank.MoneyDeposited(amount=10), bank.MoneyWithdrawn(amount=4))
        .when(bank.CloseAccount())
        .then_fails(ValidationError, reason="ACCOUNT_NOT_EMPTY")
    )
    assert error.metadata == {"balance": "6"}


def test_an_account_emptied_by_withdrawals_can_be_closed() -> None:
    account().given(OPENED, bank.MoneyDeposited(amount=10), bank.MoneyWithdrawn(amount=10)).when(
        bank.CloseAccount()
    ).then(bank.AccountClosed())


def test_closing_an_account_holding_money_is_failed_precondition_over_grpc() -> None:
    (
        account()
        .on_server()
        .given(OPENED, bank.MoneyDeposited(amount=1))
        .when(bank.CloseAccount())
        .then_fails(ValidationError, reason="ACCOUNT_NOT_EMPTY")
    )


def test_nothing_on_a_closed_account() -> None:
    closed = (OPENED, bank.MoneyDeposited(amount=3), bank.AccountClosed())
    for command in (bank.Deposit(amount=1), bank.Withdraw(amount=1), bank.CloseAccount()):
        account().given(*closed).when(command).then_fails(ValidationError, reason="ACCOUNT_CLOSED")
