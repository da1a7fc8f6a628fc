"""Plugin registration, the registry's refusals, and discovery."""

from __future__ import annotations

import math

import pytest

from domain_plugins import bank_account, box
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import ConfigurationError
from service.plugins import Plugin
from service.plugins.discovery import discover_plugins, is_example, load_module_plugin
from service.plugins.registry import Registry


def test_registry_indexes_commands_events_and_aggregates() -> None:
    registry = Registry([bank_account.plugin, box.plugin])
    deposit = registry.command("bank.v1.Deposit")
    assert deposit is not None and deposit.aggregate.name == "Account"
    event = registry.event("box.v1.BoxArchived")
    assert event is not None and event.aggregate.name == "Box"
    assert registry.aggregate("Account") is bank_account.account
    assert registry.command("bank.v1.Nope") is None


def test_two_plugins_claiming_one_command_type_are_refused_naming_both() -> None:
    copycat = Plugin("copycat")
    copy = copycat.aggregate("Copy", state=bank.Account)
    copy.command(bank.Deposit)(lambda c, s, ctx: None)
    with pytest.raises(ConfigurationError) as raised:
        Registry([bank_account.plugin, copycat])
    assert "bank_account" in raised.value.message and "copycat" in raised.value.message
    assert raised.value.reason == "DUPLICATE_REGISTRATION"


def test_two_plugins_claiming_one_aggregate_type_are_refused() -> None:
    other = Plugin("other")
    other.aggregate("Account", state=bank.Account)
    with pytest.raises(ConfigurationError, match="'bank_account' and plugin 'other'"):
        Registry([bank_account.plugin, other])


def test_one_aggregate_cannot_register_a_command_twice() -> None:
    plugin = Plugin("p")
    aggregate = plugin.aggregate("A", state=bank.Account)
    aggregate.command(bank.Deposit)(lambda c, s, ctx: None)
    with pytest.raises(ValueError, match="two handlers"):
        aggregate.command(bank.Deposit)(lambda c, s, ctx: None)


def test_one_aggregate_cannot_declare_its_claims_twice() -> None:
    """Two declarations would leave an import to guess which one holds."""
    aggregate = Plugin("p").aggregate("A", state=bank.Account)
    aggregate.claims(lambda state: [("a.owner", state.owner)])
    with pytest.raises(ValueError, match="declares its claims twice"):
        aggregate.claims(lambda state: [])


def test_entry_points_find_the_example_plugins() -> None:
    names = {p.name for p in discover_plugins()}
    assert {"bank_account", "box"} <= names


def test_a_plugin_named_by_module_and_by_entry_point_loads_once() -> None:
    plugins = discover_plugins(["domain_plugins.bank_account"])
    assert sum(p is bank_account.plugin for p in plugins) == 1


def test_module_paths_may_name_an_attribute() -> None:
    assert load_module_plugin("domain_plugins.box:plugin") is box.plugin


def test_a_module_without_a_plugin_is_refused() -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_module_plugin("json")
    assert raised.value.reason == "NOT_A_PLUGIN"


def test_a_missing_module_is_refused() -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_module_plugin("no_such_module_anywhere")
    assert raised.value.reason == "PLUGIN_IMPORT_FAILED"


def test_discovery_can_leave_the_examples_out_but_a_named_one_loads() -> None:
    """The Docker image's CHRONICLE_EXAMPLE_PLUGINS=false: the entry points
    Chronicle registers for its examples are skipped, other entry points
    and modules named by path are not."""
    assert not {"bank_account", "box", "users"} & {p.name for p in discover_plugins(examples=False)}
    assert [p.name for p in discover_plugins(["domain_plugins.box"], examples=False)] == ["box"]
    assert is_example("domain_plugins.users:plugin") and not is_example("domain_plugins_of_mine.shop:plugin")


def test_discovery_can_be_limited_to_named_modules() -> None:
    plugins = discover_plugins(["domain_plugins.box"], entry_point_group=None)
    assert [p.name for p in plugins] == ["box"]


def test_existence_is_declared_and_refused_before_the_handler_runs() -> None:
    from service.errors import AlreadyExistsError, NotFoundError
    from service.testing import Scenario

    calls: list[str] = []
    plugin = Plugin("ledgers")
    ledger = plugin.aggregate("BankAccount", state=bank.Account)

    @ledger.command(bank.OpenAccount, creates=True)
    def open_account(command: bank.OpenAccount, state: bank.Account, context: object) -> bank.AccountOpened:
        calls.append("open")
        return bank.AccountOpened(owner=command.owner)

    @ledger.command(bank.Deposit, requires_existing=True)
    def deposit(command: bank.Deposit, state: bank.Account, context: object) -> bank.MoneyDeposited:
        calls.append("deposit")
        return bank.MoneyDeposited(amount=command.amount)

    ledger.apply(bank.AccountOpened)(lambda state, event: None)
    ledger.apply(bank.MoneyDeposited)(lambda state, event: None)

    # the default reasons are the aggregate's name in capitals, words apart
    Scenario(plugin, aggregate_id="a").when(bank.Deposit(amount=5)).then_fails(
        NotFoundError, reason="BANK_ACCOUNT_NOT_FOUND"
    )
    Scenario(plugin, aggregate_id="a").given(bank.AccountOpened(owner="x")).when(
        bank.OpenAccount(owner="y")
    ).then_fails(AlreadyExistsError, reason="BANK_ACCOUNT_ALREADY_EXISTS")
    assert calls == []
    Scenario(plugin, aggregate_id="a").when(bank.OpenAccount(owner="y")).then(bank.AccountOpened(owner="y"))
    Scenario(plugin, aggregate_id="a").given(bank.AccountOpened(owner="x")).when(bank.Deposit(amount=5)).then(
        bank.MoneyDeposited(amount=5)
    )
    assert calls == ["open", "deposit"]


def test_reasons_can_be_named_and_a_command_cannot_both_create_and_require() -> None:
    from service.errors import NotFoundError
    from service.testing import Scenario

    plugin = Plugin("named")
    account = plugin.aggregate("Account", state=bank.Account, not_found="NO_SUCH_ACCOUNT")
    account.command(bank.Deposit, requires_existing=True)(lambda c, s, ctx: None)
    Scenario(plugin, aggregate_id="a").when(bank.Deposit(amount=1)).then_fails(NotFoundError, reason="NO_SUCH_ACCOUNT")
    with pytest.raises(ValueError, match="cannot both"):
        account.command(bank.Withdraw, creates=True, requires_existing=True)


@pytest.mark.parametrize("retry_seconds", [0.0, -1.0, math.nan])
def test_a_reaction_that_would_never_wait_to_retry_is_refused(retry_seconds: float) -> None:
    with pytest.raises(ValueError, match=r"reaction demo\.retries: retry_seconds must be positive"):
        Plugin("demo").reaction("demo.retries", retry_seconds=retry_seconds)


def test_a_reaction_retries_every_5_seconds_unless_it_says() -> None:
    plugin = Plugin("demo")
    assert plugin.reaction("demo.default").retry_seconds == 5.0
    assert plugin.reaction("demo.quick", retry_seconds=0.5).retry_seconds == 0.5


def test_a_projection_or_reaction_name_the_api_could_not_take_is_refused_at_declaration() -> None:
    named = Plugin("named")
    named.projection("p" * 200)  # the API's most: fine
    named.reaction("r" * 200)
    for declare, kind in ((named.projection, "projection"), (named.reaction, "reaction")):
        with pytest.raises(ValueError, match=rf"{kind} name .* is 201 characters: at most 200"):
            declare("x" * 201)
