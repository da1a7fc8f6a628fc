"""Plugin registration, the registry's refusals, and discovery."""

from __future__ import annotations

import pytest

from domain_plugins import bank_account, box
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import ConfigurationError
from service.plugins import Plugin
from service.plugins.discovery import discover_plugins, load_module_plugin
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


def test_discovery_can_be_limited_to_named_modules() -> None:
    plugins = discover_plugins(["domain_plugins.box"], entry_point_group=None)
    assert [p.name for p in plugins] == ["box"]
