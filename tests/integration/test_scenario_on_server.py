"""``service.testing.Scenario`` for plugin authors: the same scenario on the
memory store and end to end on a real server, and failures that say why."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from domain_plugins import bank_account, box
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2
from service.client import FailedPrecondition
from service.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    ValidationError,
    WrongExpectedVersion,
)
from service.testing import Scenario, ScenarioFailed
from tests.support.processes import server_process

OPENED = bank.AccountOpened(owner="ann")

Where = Callable[[Scenario], Scenario]


@pytest.fixture(params=["memory", "server"])
def where(request: pytest.FixtureRequest) -> Where:
    """Run a scenario on the memory store, or on an in-process server."""
    if request.param == "server":
        return lambda scenario: scenario.on_server()
    return lambda scenario: scenario


def account(where: Where) -> Scenario:
    return where(Scenario(bank_account.plugin, aggregate_id="acc-1"))


def test_then_checks_the_appended_events(where: Where) -> None:
    events = account(where).given(OPENED).when(bank.Deposit(amount=5)).then(bank.MoneyDeposited(amount=5))
    assert events == [bank.MoneyDeposited(amount=5)]


def test_then_fails_checks_the_error_and_reason(where: Where) -> None:
    account(where).given(OPENED, bank.MoneyDeposited(amount=10)).when(bank.Withdraw(amount=11)).then_fails(
        ValidationError, reason="INSUFFICIENT_FUNDS"
    )


def test_given_commands_run_first(where: Where) -> None:
    account(where).given_commands(bank.OpenAccount(owner="ann"), bank.Deposit(amount=3)).when(
        bank.Withdraw(amount=3)
    ).then(bank.MoneyWithdrawn(amount=3))


def test_expected_version_is_checked(where: Where) -> None:
    account(where).given(OPENED).when(bank.Deposit(amount=1), expected_version=0).then_fails(
        WrongExpectedVersion, reason="WRONG_EXPECTED_VERSION"
    )


def test_other_events_than_expected_fail_the_scenario(where: Where) -> None:
    with pytest.raises(ScenarioFailed, match=r"expected events \[MoneyDeposited\(amount: 6\)\], got"):
        account(where).given(OPENED).when(bank.Deposit(amount=5)).then(bank.MoneyDeposited(amount=6))


def test_another_reason_than_expected_fails_the_scenario(where: Where) -> None:
    with pytest.raises(ScenarioFailed, match="expected reason ACCOUNT_CLOSED, got INSUFFICIENT_FUNDS"):
        account(where).given(OPENED).when(bank.Withdraw(amount=1)).then_fails(ValidationError, reason="ACCOUNT_CLOSED")


def test_another_kind_of_refusal_than_expected_fails_the_scenario(where: Where) -> None:
    with pytest.raises(ScenarioFailed, match="expected AlreadyExistsError"):
        account(where).given(OPENED).when(bank.Deposit(amount=-1)).then_fails(AlreadyExistsError)


def test_then_fails_is_strict_about_the_status_code_in_process_and_on_a_server_alike(where: Where) -> None:
    """An InvalidArgumentError is a ValidationError in Python, but its code
    is INVALID_ARGUMENT, not FAILED_PRECONDITION: then_fails(ValidationError)
    refuses it both ways (in process it used to accept it, by isinstance, and
    a server refused it), and then_fails(InvalidArgumentError) accepts it."""
    invalid = account(where).given(OPENED).when(bank.Deposit(amount=-1))
    with pytest.raises(ScenarioFailed, match=r"expected ValidationError \(FAILED_PRECONDITION\)"):
        invalid.then_fails(ValidationError)
    invalid.then_fails(InvalidArgumentError, reason="INVALID_AMOUNT")


@pytest.mark.parametrize("on_server", [False, True], ids=["memory", "server"])
def test_a_not_found_refusal_is_not_a_validation_error_either_way(on_server: bool) -> None:
    renamed = Scenario(box.plugin, aggregate_id="b-1").when(box_pb2.RenameBox(name="x"))  # no such box
    if on_server:
        renamed = renamed.on_server()
    with pytest.raises(ScenarioFailed, match="expected ValidationError"):
        renamed.then_fails(ValidationError)
    renamed.then_fails(NotFoundError)


def test_a_refused_given_command_fails_the_scenario(where: Where) -> None:
    with pytest.raises(ScenarioFailed, match=r"given command bank\.v1\.Deposit was refused"):
        account(where).given_commands(bank.Deposit(amount=1)).when(bank.Deposit(amount=1)).then()


def test_on_a_server_the_refusal_is_the_clients_typed_error() -> None:
    refused = (
        Scenario(bank_account.plugin, aggregate_id="acc-1")
        .on_server()
        .given(OPENED)
        .when(bank.Withdraw(amount=1))
        .then_fails(ValidationError, reason="INSUFFICIENT_FUNDS")
    )
    assert isinstance(refused, FailedPrecondition)
    assert refused.metadata == {"balance": "0", "amount": "1"}


@pytest.fixture(scope="module")
def running_address() -> Iterator[str]:
    with server_process("memory://") as server:
        yield server.address


@pytest.mark.slow
def test_a_running_server_plays_the_scenario_from_given_commands(running_address: str) -> None:
    for _ in range(2):  # a fresh aggregate each run: the second run is not refused as ACCOUNT_ALREADY_OPEN
        Scenario(bank_account.plugin, aggregate_id="acc").on_server(running_address).given_commands(
            bank.OpenAccount(owner="ann")
        ).when(bank.Deposit(amount=0)).then_fails(InvalidArgumentError, reason="INVALID_AMOUNT")
        Scenario(bank_account.plugin, aggregate_id="acc").on_server(running_address).when(
            bank.OpenAccount(owner="ann")
        ).then(OPENED)


@pytest.mark.slow
def test_a_running_server_cannot_be_given_events(running_address: str) -> None:
    with pytest.raises(ScenarioFailed, match="given events need the in-process server"):
        Scenario(bank_account.plugin).on_server(running_address).given(OPENED).when(bank.Deposit(amount=1)).then()
