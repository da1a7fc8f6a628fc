"""Which aggregates a reaction's process state names as its subjects (and
so which ones, forgotten, delete it), run by the real reaction runner in
process: an event's aggregate only if the event was acted on (the state
changed, or a command was sent for it), the aggregates of the commands
sent. An event routed into a process by what its sender chose (here the
metadata; the default key, the correlation id, is the client's too) and
passed by leaves nothing of itself in the state, and does not make its
aggregate a subject: else forgetting the sender's own aggregate deleted a
stranger's process."""

from __future__ import annotations

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import CommandContext, Plugin, ProjectedEvent, Send
from service.testing import ReactionRun


def _opened(command: bank.OpenAccount, state: bank.Account, context: CommandContext) -> bank.AccountOpened:
    return bank.AccountOpened(owner=command.owner)


def _deposited(command: bank.Deposit, state: bank.Account, context: CommandContext) -> bank.MoneyDeposited:
    return bank.MoneyDeposited(amount=command.amount)


def watching() -> Plugin:
    """Deposits on ``own`` count in the process; one on ``pinger`` opens
    ``target`` (the state unchanged); any other is passed by."""
    plugin = Plugin("acme")
    ledgers = plugin.aggregate("Ledger", state=bank.Account)
    ledgers.command(bank.OpenAccount, creates=True)(_opened)
    ledgers.command(bank.Deposit)(_deposited)
    ledgers.apply(bank.AccountOpened)(lambda state, event: None)
    ledgers.apply(bank.MoneyDeposited)(lambda state, event: None)
    watch = plugin.reaction(
        "watch",
        aggregate_types=["Ledger"],
        state=bank.TransferProgress,
        state_key=lambda envelope: envelope.metadata.get("process", ""),
    )

    @watch.on(bank.MoneyDeposited)
    def count(event: bank.MoneyDeposited, envelope: ProjectedEvent, progress: bank.TransferProgress) -> Send | None:
        if envelope.aggregate_id == "own":
            progress.amount += event.amount
        elif envelope.aggregate_id == "pinger":
            return Send("target", bank.OpenAccount(owner="t"))
        return None  # not this process's: passed by

    return plugin


def test_an_event_passed_by_does_not_make_its_aggregate_a_subject() -> None:
    with ReactionRun(watching()) as run:
        run.submit("own", bank.Deposit(amount=5), metadata={"process": "p"})
        run.settle()
        state = run.process_state("watch", "p")
        assert state is not None and list(state.subjects) == ["own"]

        # Routed into the process by its sender's metadata, and passed by.
        run.submit("stranger", bank.Deposit(amount=1), metadata={"process": "p"})
        run.settle()
        assert run.process_state("watch", "p") == state

        # Acted on with a command: the event's aggregate and the command's.
        run.submit("pinger", bank.Deposit(amount=1), metadata={"process": "p"})
        run.settle()
        assert run.events("target") == [bank.AccountOpened(owner="t")]
        after = run.process_state("watch", "p")
        assert after is not None and list(after.subjects) == ["own", "pinger", "target"]

        # Acted on by changing the state: the event's aggregate (again).
        run.submit("own", bank.Deposit(amount=2), metadata={"process": "p"})
        run.settle()
        last = run.process_state("watch", "p")
        assert last is not None and list(last.subjects) == ["own", "pinger", "target"]
        progress = bank.TransferProgress()
        assert last.state.Unpack(progress) and progress.amount == 7
