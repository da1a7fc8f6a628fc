"""Mistakes in plugins that the registry refuses when they load, rather than
at the first read or command that meets them; what `chronicle plugins`
lists and warns of; and the reasons docs/plugins.md names for plugin
authors, each one the code raises."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from domain_plugins import bank_account, box, users
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2
from service.cli import main
from service.errors import ConfigurationError
from service.plugins import (
    Cancel,
    CommandCall,
    Documents,
    Middleware,
    OldEvent,
    Plugin,
    ProjectedEvent,
    Schedule,
    Send,
)
from service.plugins.registry import Registry
from tests.support import plugins

ROOT = Path(__file__).resolve().parents[2]


def refused(*loaded: Plugin) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as raised:
        Registry(loaded)
    return raised.value


def nothing(*args: object) -> None:
    return None


def account_plugin(name: str = "acme", *, version: int = 3, upcasts_from: tuple[int, ...] = (1,)) -> Plugin:
    """A plugin whose ``MoneyDeposited`` is read at ``version``, with
    upcasters from ``upcasts_from``."""
    plugin = Plugin(name)
    account = plugin.aggregate("Ledger", state=bank.Account)
    account.apply(bank.MoneyDeposited, schema_version=version)(nothing)
    for from_version in upcasts_from:
        account.upcast(bank.MoneyDeposited, from_version=from_version)(nothing)
    return plugin


# -- upcaster chains ------------------------------------------------------------


def test_a_chain_that_stops_below_the_current_version_is_refused() -> None:
    error = refused(account_plugin(version=3, upcasts_from=(1,)))
    assert error.reason == "BAD_UPCASTER"
    assert "'acme'" in error.message and "bank.v1.MoneyDeposited" in error.message
    assert "no upcaster reads v2" in error.message and "from_version=2" in error.message
    assert error.metadata == {"event_type": "bank.v1.MoneyDeposited", "missing": "2", "plugins": "acme"}


def test_a_hole_in_the_middle_of_a_chain_is_refused() -> None:
    error = refused(account_plugin(version=5, upcasts_from=(1, 2, 4)))
    assert (error.reason, error.metadata["missing"]) == ("BAD_UPCASTER", "3")


def test_a_hole_between_the_upcasters_of_a_retired_type_is_refused() -> None:
    plugin = Plugin("acme")
    ledger = plugin.aggregate("Ledger", state=bank.Account)
    ledger.apply(bank.MoneyDeposited)(nothing)
    ledger.upcast("legacy.v1.Gone", from_version=1)(nothing)
    ledger.upcast("legacy.v1.Gone", from_version=3)(nothing)
    error = refused(plugin)
    assert (error.reason, error.metadata["event_type"], error.metadata["missing"]) == (
        "BAD_UPCASTER",
        "legacy.v1.Gone",
        "2",
    )
    assert "which no plugin applies" in error.message


def test_a_chain_split_between_two_plugins_names_both() -> None:
    reader = account_plugin("reader", version=3, upcasts_from=())
    upcaster = Plugin("upcaster")
    upcaster.aggregate("Other", state=bank.Account).upcast(bank.MoneyDeposited, from_version=1)(nothing)
    error = refused(reader, upcaster)
    assert error.reason == "BAD_UPCASTER"
    assert "'upcaster'" in error.message and "'reader'" in error.message
    assert error.metadata["plugins"] == "reader,upcaster"


@pytest.mark.parametrize(
    "upcasts_from",
    [(1, 2), (2,), ()],
    ids=["every step", "from v2 only: no v1 was ever stored", "no upcaster: no older version was stored"],
)
def test_a_chain_that_reaches_the_current_version_loads(upcasts_from: tuple[int, ...]) -> None:
    Registry([account_plugin(version=3, upcasts_from=upcasts_from)])


def test_the_bundled_and_test_plugins_still_load() -> None:
    Registry([bank_account.plugin, box.plugin, users.plugin])
    Registry([plugins.ledger])  # AccountClosed at v2 with no upcaster: allowed, warned of


def test_a_current_version_without_any_upcaster_is_only_warned_of() -> None:
    registry = Registry([account_plugin(version=3, upcasts_from=())])
    (warning,) = registry.warnings
    assert "'acme'" in warning and "bank.v1.MoneyDeposited" in warning and "schema version 3" in warning
    assert Registry([account_plugin(version=3, upcasts_from=(2,))]).warnings == []
    assert Registry([bank_account.plugin, box.plugin, users.plugin]).warnings == []


# -- what projections and reactions follow ---------------------------------------


def test_a_projection_of_an_aggregate_type_no_plugin_declares_is_refused() -> None:
    views = Plugin("views")
    views.projection("views.balances", aggregate_types=["Account", "Acount"])
    error = refused(bank_account.plugin, views)
    assert error.reason == "UNKNOWN_AGGREGATE_TYPE"
    assert "'views.balances'" in error.message and "'views'" in error.message and "Acount" in error.message
    assert "known: Account, Transfer" in error.message
    assert error.metadata["aggregate_types"] == "Acount"


def test_a_reaction_of_an_aggregate_type_no_plugin_declares_is_refused() -> None:
    relay = Plugin("relay")
    relay.reaction("relay.boxes", aggregate_types=["Box"])
    error = refused(bank_account.plugin, relay)
    assert error.reason == "UNKNOWN_AGGREGATE_TYPE"
    assert "reaction 'relay.boxes'" in error.message and "Box" in error.message


def test_projections_and_reactions_of_declared_types_or_of_every_type_load() -> None:
    views = Plugin("views")
    views.projection("views.everything")
    views.projection("views.boxes", aggregate_types=["Box"])
    views.reaction("views.relay", aggregate_types=["Account"])
    Registry([bank_account.plugin, box.plugin, views])


def test_a_projection_handler_for_a_command_type_is_refused() -> None:
    views = Plugin("views")
    deposits = views.projection("views.deposits", aggregate_types=["Account"])
    deposits.on(bank.Deposit)(nothing)
    error = refused(bank_account.plugin, views)
    assert error.reason == "NOT_AN_EVENT"
    assert "'views.deposits'" in error.message and "bank.v1.Deposit" in error.message
    assert "'bank_account'" in error.message
    assert error.metadata["plugins"] == "views,bank_account"


def test_a_reaction_handler_for_a_command_type_is_refused() -> None:
    relay = Plugin("relay")
    relaying = relay.reaction("relay.renames", aggregate_types=["Box"])

    @relaying.on(box_pb2.RenameBox)
    def rename(event: box_pb2.RenameBox, envelope: ProjectedEvent, state: None) -> Send:
        return Send("other", box_pb2.RenameBox(name=event.name))

    error = refused(box.plugin, relay)
    assert error.reason == "NOT_AN_EVENT"
    assert "reaction 'relay.renames'" in error.message and "box.v1.RenameBox" in error.message


def test_a_handler_for_an_event_of_an_aggregate_type_not_followed_is_refused() -> None:
    views = Plugin("views")
    boxes = views.projection("views.boxes", aggregate_types=["Box"])
    boxes.on(bank.MoneyDeposited)(nothing)  # an Account's event: never delivered to this projection
    error = refused(bank_account.plugin, box.plugin, views)
    assert error.reason == "NOT_FOLLOWED"
    assert "'views.boxes'" in error.message and "bank.v1.MoneyDeposited" in error.message
    assert "add Account to its aggregate_types" in error.message
    assert error.metadata["aggregate_type"] == "Account"


def test_a_handler_for_any_event_loads_where_every_aggregate_type_is_followed() -> None:
    views = Plugin("views")
    everything = views.projection("views.everything")
    everything.on(bank.MoneyDeposited)(nothing)
    relay = views.reaction("views.relay", aggregate_types=["Account"])
    relay.on(bank.MoneyDeposited)(nothing)
    Registry([bank_account.plugin, box.plugin, views])


def test_a_handler_of_the_deletion_tombstone_is_still_allowed() -> None:
    # The bank's read model handles chronicle.v1.AggregateDeleted, which no
    # plugin registers: only command types are refused.
    assert "chronicle.v1.AggregateDeleted" in bank_account.plugin.projections[0].handlers
    Registry([bank_account.plugin])


# -- commands and events are told apart by type -----------------------------------


def test_one_type_as_command_and_event_of_one_plugin_is_refused() -> None:
    echo = Plugin("echo")
    thing = echo.aggregate("Thing", state=bank.Account)
    thing.command(bank.Deposit)(nothing)
    thing.apply(bank.Deposit)(nothing)
    error = refused(echo)
    assert error.reason == "DUPLICATE_REGISTRATION"
    assert "bank.v1.Deposit is registered as a command" in error.message and "as an event" in error.message
    assert error.metadata == {"name": "bank.v1.Deposit", "plugins": "echo,echo"}


def test_one_type_as_command_of_one_plugin_and_event_of_another_is_refused_naming_both() -> None:
    echo = Plugin("echo")
    echo.aggregate("Echo", state=bank.Account).apply(box_pb2.RenameBox)(nothing)
    error = refused(box.plugin, echo)
    assert error.reason == "DUPLICATE_REGISTRATION"
    assert "'box'" in error.message and "'echo'" in error.message and "box.v1.RenameBox" in error.message


# -- chronicle plugins ----------------------------------------------------------------

listed = Plugin("listed")
listed_items = listed.aggregate("Item", state=box_pb2.Box)
listed_items.command(box_pb2.CreateBox)(nothing)


@listed_items.apply(box_pb2.BoxCreated)
def _item_created(state: box_pb2.Box, event: box_pb2.BoxCreated) -> None:
    state.name = event.name


listed_names = listed.projection("listed.names", aggregate_types=["Item"])


@listed_names.on(box_pb2.BoxCreated)
def _name(event: box_pb2.BoxCreated, envelope: ProjectedEvent, documents: Documents) -> None:
    documents.put(event.name, event)


listed_relay = listed.reaction("listed.relay", aggregate_types=["Item"], state=box_pb2.Box)


@listed_relay.on(box_pb2.BoxCreated)
def _relay(event: box_pb2.BoxCreated, envelope: ProjectedEvent, state: box_pb2.Box) -> None:
    return None


class Stamp(Middleware):
    name = "stamp"

    async def before(self, call: CommandCall) -> None:
        return None


listed.add_middleware(Stamp())

gapped = Plugin("gapped")
gapped_ledger = gapped.aggregate("Ledger", state=bank.Account)
gapped_ledger.apply(bank.MoneyDeposited, schema_version=3)(nothing)


@gapped_ledger.upcast(bank.MoneyDeposited, from_version=1)
def _whole_units(old: OldEvent) -> bank.MoneyDeposited:
    return old.parse(bank.MoneyDeposited)


def chronicle_plugins(path: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["plugins", "--plugin", f"{__name__}:{path}", "--no-discover-plugins"])
    out, err = capsys.readouterr()
    return code, out, err


def test_chronicle_plugins_lists_projections_reactions_and_middleware(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    code, out, _ = chronicle_plugins("listed", capsys)
    (plugin,) = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert plugin["projections"] == [
        {
            "projection": "listed.names",
            "aggregate_types": ["Item"],
            "handlers": {"box.v1.BoxCreated": "_name"},
            "on_failure": "stop",
        }
    ]
    assert plugin["reactions"] == [
        {
            "reaction": "listed.relay",
            "aggregate_types": ["Item"],
            "handlers": {"box.v1.BoxCreated": "_relay"},
            "on_refused": None,
            "deadlines": {},
            "state": "box.v1.Box",
        }
    ]
    assert plugin["middleware"] == [{"name": "stamp", "class": "Stamp"}]


def test_chronicle_plugins_says_why_a_plugin_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = chronicle_plugins("gapped", capsys)
    assert (code, out) == (2, "")
    assert err.startswith(
        "error: BAD_UPCASTER: plugin 'gapped' reads bank.v1.MoneyDeposited at schema version 3 and upcasts it from v1,"
        " but no upcaster reads v2"
    )


def test_chronicle_plugins_warns_of_a_type_past_v1_without_upcasters(capsys: pytest.CaptureFixture[str]) -> None:
    main(["plugins", "--plugin", "tests.support.plugins:ledger", "--no-discover-plugins"])
    err = capsys.readouterr().err
    assert err.startswith("warning: plugin 'ledger' applies bank.v1.AccountClosed at schema version 2")


# -- deadline names ------------------------------------------------------------------

PAYMENT = "payment"  # a module-level name a Schedule may use


def saga(
    on_created: Callable[..., Any], *, deadlines: tuple[str, ...] = ("payment",), on_refused: Any = None
) -> Plugin:
    """A reaction "saga.orders" (plugin "orders") whose BoxCreated function
    is ``on_created``, with an ``@on_deadline`` function for each of
    ``deadlines``."""
    plugin = Plugin("orders")
    order = plugin.aggregate("Order", state=box_pb2.Box)
    order.command(box_pb2.CreateBox)(nothing)
    order.apply(box_pb2.BoxCreated)(nothing)
    reaction = plugin.reaction("saga.orders", aggregate_types=["Order"], state=box_pb2.Box)
    reaction.on(box_pb2.BoxCreated)(on_created)
    if on_refused is not None:
        reaction.on_refused(on_refused)
    for name in deadlines:
        reaction.on_deadline(name)(nothing)
    return plugin


def mistyped(event: object, envelope: ProjectedEvent, progress: object) -> Schedule:
    return Schedule("paymnet", after=timedelta(minutes=10))


def test_a_schedule_of_a_name_no_on_deadline_handles_is_refused_at_load_naming_reaction_function_and_name() -> None:
    error = refused(saga(mistyped))
    assert error.reason == "UNKNOWN_DEADLINE"
    assert error.message == (
        "reaction 'saga.orders' of plugin 'orders': mistyped returns Schedule('paymnet'), but no"
        " @on_deadline('paymnet') function is declared (declared: 'payment'): did you mean 'payment'? correct the"
        " name, or declare its function"
    )
    assert error.metadata == {
        "name": "saga.orders",
        "plugins": "orders",
        "function": "mistyped",
        "deadline": "paymnet",
    }


def test_a_cancel_by_keyword_or_by_a_module_constant_in_on_refused_or_a_deadline_function_is_checked_too() -> None:
    def cancels(refusal: object, envelope: ProjectedEvent, progress: object) -> Cancel:
        return Cancel(name="reminder")  # declared nowhere

    error = refused(saga(nothing, on_refused=cancels))
    assert (error.reason, error.metadata["function"], error.metadata["deadline"]) == (
        "UNKNOWN_DEADLINE",
        "test_a_cancel_by_keyword_or_by_a_module_constant_in_on_refused_or_a_deadline_function_is_checked_too"
        ".<locals>.cancels",
        "reminder",
    )
    assert "Cancel('reminder')" in error.message and "(declared: 'payment')" in error.message

    def by_constant(event: object, envelope: ProjectedEvent, progress: object) -> Schedule:
        return Schedule(PAYMENT, after=timedelta(minutes=1))

    assert refused(saga(by_constant, deadlines=("pay",))).metadata["deadline"] == "payment"
    Registry([saga(by_constant)])  # declared: loads


def test_names_that_cannot_be_known_without_running_the_function_load() -> None:
    def computed(event: object, envelope: ProjectedEvent, progress: object) -> Schedule:
        return Schedule("pay" + "mnet", after=timedelta(minutes=1))  # found when it runs (UNKNOWN_DEADLINE)

    def well_named(event: object, envelope: ProjectedEvent, progress: object) -> list[Schedule | Cancel]:
        return [Schedule("payment", after=timedelta(minutes=1)), Cancel("payment")]

    Registry([saga(computed)])
    Registry([saga(well_named)])
    Registry([saga(lambda *_: Schedule("paymnet", after=timedelta(0)))])  # a lambda is not read


orders_mistyped = saga(mistyped)


def test_chronicle_plugins_stops_on_a_mistyped_deadline_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = chronicle_plugins("orders_mistyped", capsys)
    assert (code, out) == (2, "")
    assert err.startswith("error: UNKNOWN_DEADLINE: reaction 'saga.orders' of plugin 'orders': mistyped returns")


# -- the reasons docs/plugins.md names ----------------------------------------------

SECTION = "## What the server says: reasons a plugin author meets"


def documented_reasons() -> set[str]:
    """The reasons in the first column of the section's tables (placeholders
    such as `<AGGREGATE>_NOT_FOUND` left out)."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    assert SECTION in text
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    reasons = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            reasons.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", first))
    return reasons


def literals_in_service() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "service").rglob("*.py"):
        found.update(re.findall(r"""["']([A-Z][A-Z0-9_]+)["']""", path.read_text()))
    return found


def test_every_reason_the_docs_name_is_raised_somewhere_in_the_service() -> None:
    documented = documented_reasons()
    assert {"HANDLER_FAILED", "UNSUPPORTED_SCHEMA_VERSION", "BAD_UPCASTER", "NOT_AN_EVENT"} <= documented
    assert sorted(documented - literals_in_service()) == []


def test_every_reason_the_plugin_loader_raises_is_documented() -> None:
    raised = set()
    for name in ("registry.py", "discovery.py"):
        source = (ROOT / "service" / "plugins" / name).read_text()
        raised.update(re.findall(r'reason="([A-Z][A-Z0-9_]+)"', source))
    assert raised >= {"DUPLICATE_PLUGIN", "DUPLICATE_REGISTRATION", "BAD_UPCASTER", "NOT_A_PLUGIN"}
    assert sorted(raised - documented_reasons()) == []
