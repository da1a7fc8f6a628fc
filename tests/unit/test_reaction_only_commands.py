"""``command(..., sent_by_reactions=...)``: how a plugin declares a command
only reactions send, the mistakes refused as it loads, and the rule run by
the real executor and reaction runner in process (``ReactionRun``, which
checks as the server's pipelines do): a client's is refused
PERMISSION_DENIED, COMMAND_INTERNAL, before its handler runs; a named
reaction's goes through, another reaction's fails that reaction."""

from __future__ import annotations

from typing import Any

import pytest

from domain_plugins.bank_account import plugin as bank_plugin
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import ChronicleError, ConfigurationError, PermissionDenied
from service.plugins import CommandContext, Plugin, ProjectedEvent, Send
from service.plugins.registry import Registry
from service.testing import ReactionRun


def _opened(command: bank.OpenAccount, state: bank.Account, context: CommandContext) -> bank.AccountOpened:
    return bank.AccountOpened(owner=command.owner)


def _closed(command: bank.CloseAccount, state: bank.Account, context: CommandContext) -> bank.AccountClosed:
    return bank.AccountClosed()


def ledger(sent_by_reactions: Any, *reactions: str, on_failure: Any = "stop") -> Plugin:
    """A plugin whose Ledger is opened by clients and closed only as
    ``sent_by_reactions`` says; each of ``reactions`` closes the ledger
    opened for it (its owner is the reaction's name)."""
    plugin = Plugin("acme")
    ledgers = plugin.aggregate("Ledger", state=bank.Account)
    ledgers.command(bank.OpenAccount, creates=True)(_opened)
    ledgers.command(bank.CloseAccount, requires_existing=True, sent_by_reactions=sent_by_reactions)(_closed)
    ledgers.apply(bank.AccountOpened)(lambda state, event: None)
    ledgers.apply(bank.AccountClosed)(lambda state, event: None)
    for name in reactions:
        reaction = plugin.reaction(name, aggregate_types=["Ledger"], on_failure=on_failure, max_attempts=1)

        def close(event: bank.AccountOpened, envelope: ProjectedEvent, state: None, name: str = name) -> Send | None:
            return Send(envelope.aggregate_id, bank.CloseAccount()) if event.owner == name else None

        reaction.on(bank.AccountOpened)(close)
    return plugin


def test_a_client_is_refused_before_the_handler_and_the_named_reaction_sends_it() -> None:
    with ReactionRun(ledger(["closer"], "closer")) as run:
        run.submit("l-1", bank.OpenAccount(owner="someone"))
        with pytest.raises(PermissionDenied) as raised:
            run.submit("l-1", bank.CloseAccount())
        assert raised.value.reason == "COMMAND_INTERNAL"
        assert raised.value.metadata == {"principal": "", "command_type": "bank.v1.CloseAccount"}
        assert "only reactions send it (closer)" in raised.value.message
        assert run.events("l-1") == [bank.AccountOpened(owner="someone")]
        # Refused before the handler: on a ledger that does not exist, not
        # the handler's NOT_FOUND.
        with pytest.raises(PermissionDenied):
            run.submit("nowhere", bank.CloseAccount())

        run.submit("l-2", bank.OpenAccount(owner="closer"))
        run.settle()
        assert run.events("l-2") == [bank.AccountOpened(owner="closer"), bank.AccountClosed()]


def test_a_reaction_not_named_fails_on_it_and_sent_by_reactions_true_lets_any_send() -> None:
    with ReactionRun(ledger(["closer"], "closer", "intruder")) as run:
        run.submit("l-1", bank.OpenAccount(owner="intruder"))
        with pytest.raises(ChronicleError) as raised:
            run.settle()
        assert raised.value.reason == "COMMAND_INTERNAL"
        assert "reaction:intruder may not send bank.v1.CloseAccount" in raised.value.message
        assert run.events("l-1") == [bank.AccountOpened(owner="intruder")]
    # A plugin's bug, as a handler that raises: parked where the reaction parks those.
    with ReactionRun(ledger(["closer"], "closer", "intruder", on_failure="park")) as run:
        run.submit("l-1", bank.OpenAccount(owner="intruder"))
        run.settle()
        (parked,) = run.parked("intruder")
        assert (parked.aggregate_id, parked.reason) == ("l-1", "COMMAND_INTERNAL")
        assert run.events("l-1") == [bank.AccountOpened(owner="intruder")]
    with ReactionRun(ledger(True, "closer", "intruder")) as run:
        run.submit("l-1", bank.OpenAccount(owner="intruder"))
        run.settle()
        assert run.events("l-1")[-1] == bank.AccountClosed()
        with pytest.raises(PermissionDenied):
            run.submit("l-1", bank.CloseAccount())


def test_the_banks_transfer_endings_are_the_transfers_reactions_alone() -> None:
    with ReactionRun(bank_plugin) as run:
        run.submit("acc-1", bank.OpenAccount(owner="ann"))
        run.submit("acc-1", bank.Deposit(amount=100))
        run.submit("acc-2", bank.OpenAccount(owner="bob"))
        run.submit("t-1", bank.TransferMoney(source_account_id="acc-1", target_account_id="acc-2", amount=30))
        for ending in (bank.CompleteTransfer(), bank.FailTransfer(reason="X"), bank.RecordRefund(reason="X")):
            with pytest.raises(PermissionDenied) as raised:
                run.submit("t-1", ending)
            assert raised.value.reason == "COMMAND_INTERNAL"
        assert run.state("t-1", bank.Transfer).status == bank.TRANSFER_STATUS_PENDING
        run.settle()
        assert run.state("t-1", bank.Transfer).status == bank.TRANSFER_STATUS_COMPLETED
        assert run.state("acc-2", bank.Account).balance == 30


def test_mistakes_in_declaring_one_are_refused_as_the_plugin_loads() -> None:
    with pytest.raises(ValueError, match="a list of reaction names, not a string"):
        ledger("closer")
    with pytest.raises(ValueError, match="names no reaction"):
        ledger([])
    with pytest.raises(ConfigurationError) as raised:
        Registry([ledger(["closr"], "closer")])
    assert raised.value.reason == "UNKNOWN_REACTION"
    assert raised.value.metadata == {"name": "bank.v1.CloseAccount", "plugins": "acme", "reactions": "closr"}
    assert "known: closer" in raised.value.message
